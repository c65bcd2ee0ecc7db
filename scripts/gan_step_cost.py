"""Time one training step of the sharp recipe per discriminator (docs/results/gan-losses.md).

    python scripts/gan_step_cost.py            # one thread, fp32 and bf16 autocast, median of 5 steps

Times are the process's CPU time per step (one thread), which a shared machine's other load does not
inflate the way it does wall time.
The generator is M4C16 x4 in its merged phase (as the sharp recipe trains almost throughout), batch 16,
LR patch 32 (HR 128); the data are fixed random patches, so only the step is timed (no degradations).
Rows: the pixel step (no discriminator), then the GAN step (L1 + LDL + adversarial) with each
discriminator; the discriminator's parameter count.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import Dataset

from repsr.training import Trainer, load_config

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "sharp-M4C16-x4.yaml"
DISCRIMINATORS = (("none", 32), ("patch", 16), ("patch", 32), ("patch", 64), ("unet", 16), ("unet", 32))


class Fixed(Dataset):
    def __len__(self) -> int:
        return 16

    def __getitem__(self, key: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(key % 16)
        return torch.rand(3, 32, 32, generator=g), torch.rand(3, 128, 128, generator=g)


def step_ms(kind: str, channels: int, amp: bool, steps: int = 5) -> tuple[float, int]:
    overrides = [
        f"train.amp={str(amp).lower()}", "train.init=null", "bn.switch_at=0.01", "bn.precise_batches=0",
        "data.workers=0", "val.sample=false", f"discriminator.type={kind}",
        f"discriminator.channels={channels}",
    ]  # fmt: skip
    if kind == "none":
        overrides.append("train.losses=[{type: l1}, {type: ldl}]")
    config = load_config(CONFIG, overrides)
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(config, data=Fixed(), val={}, out=Path(out) / "run", progress=False)
        trainer.start()
        trainer.switch_bn()  # the merged phase the recipe trains in
        trainer.model.train()
        for network in trainer.state.networks.values():
            network.module.train()
        batch = [torch.stack(t) for t in zip(*(Fixed()[k] for k in range(16)), strict=True)]
        lr, hr = (trainer.step.to_device(t) for t in batch)
        times = []
        for _ in range(steps + 1):
            start = time.process_time()  # CPU time of this (one-thread) process: robust to other load
            trainer.train_step(lr, hr)
            times.append(time.process_time() - start)
        d = trainer.state.networks.get("discriminator")
        params = sum(p.numel() for p in d.module.parameters()) if d is not None else 0
        trainer.close()
    return 1000 * statistics.median(times[1:]), params


def main() -> None:
    torch.set_num_threads(1)
    print("| discriminator | parameters | step fp32 (CPU ms) | step bf16 autocast (CPU ms) |")
    print("|---|---|---|---|")
    for kind, channels in DISCRIMINATORS:
        fp32, params = step_ms(kind, channels, False)
        bf16, _ = step_ms(kind, channels, True)
        name = "none (pixel step, L1 + LDL)" if kind == "none" else f"{kind} {channels}"
        print(f"| {name} | {params:,} | {fp32:.0f} | {bf16:.0f} |", flush=True)


if __name__ == "__main__":
    main()
