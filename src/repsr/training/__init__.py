"""Training: the RepSR recipe (multi-branch blocks with BN, the BN switch, a plain network at the end).

    from repsr.training import load_config, train
    config = load_config("configs/quick.yaml", ["train.iterations=500"])
    result = train(config)                 # built-in sample images, runs/quick
    result.plain                           # the deployed plain network (also result.model_path)

Modules: `config` (typed config), `builders` (what a config builds: network, data, loss, optimizer),
`losses` / `optim` (the tables `train.loss` and `train.optimizer` name), `state` (`TrainState`: what a
checkpoint holds), `step` (`TrainStep`: a step, the BN switch, validation), `trainer` (the runner:
cadence, signals, run folder), `schedule` (phases, the switch, LR factor), `loop` (steps, loss meter),
`artifacts` (the checkpoint format, final model, verification), `sampling` (patch keys), `bn_switch`
(precise statistics, freezing), `ema`, `checkpoint` (atomic, resumable), `resume`, `signals`,
`distributed` (torchrun/DDP, SyncBN), `validation`, `run_log`.
"""

from repsr.training.config import TrainConfig, load_config
from repsr.training.trainer import Trainer, TrainingError, TrainingInterrupted, TrainResult, train

__all__ = [
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "TrainingError",
    "TrainingInterrupted",
    "load_config",
    "train",
]
