"""Training: the RepSR recipe (multi-branch blocks with BN, the BN switch, a plain network at the end).

    from repsr.training import load_config, train
    config = load_config("configs/quick.yaml", ["train.iterations=500"])
    result = train(config)                 # built-in sample images, runs/quick
    result.plain                           # the deployed plain network (also result.model_path)

Modules: `config` (typed config), `schedule` (BN phases, the switch, LR factor), `loop` (steps, losses),
`artifacts` (the checkpoint format, final model, verification), `sampling` (patch keys), `trainer`
(wires them), `bn_switch` (precise statistics, freezing), `ema`, `checkpoint` (atomic, resumable),
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
