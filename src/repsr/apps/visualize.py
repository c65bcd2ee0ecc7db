"""Pictures that say more than numbers: training curves and labelled side-by-side crops."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

LABEL_HEIGHT = 18


def _to_pil(image: torch.Tensor) -> Image.Image:
    array = image.detach().float().clamp(0, 1).mul(255).round().byte().cpu()
    if array.shape[0] == 1:
        array = array.expand(3, -1, -1)
    return Image.fromarray(array.permute(1, 2, 0).numpy())


def side_by_side(panels: Mapping[str, torch.Tensor], path: str | Path, *, gap: int = 4) -> Path:
    """Write labelled (C,H,W) images in a row to a PNG; all panels must share one size."""
    images = [_to_pil(tensor) for tensor in panels.values()]
    sizes = {image.size for image in images}
    if len(sizes) != 1:
        raise ValueError(f"panels differ in size: {sorted(sizes)}")
    width, height = images[0].size
    canvas = Image.new("RGB", (len(images) * (width + gap) - gap, height + LABEL_HEIGHT), "white")
    draw = ImageDraw.Draw(canvas)
    for index, (label, image) in enumerate(zip(panels, images, strict=True)):
        x = index * (width + gap)
        canvas.paste(image, (x, LABEL_HEIGHT))
        draw.text((x + 3, 3), label, fill="black")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path


def plot_history(
    history: Sequence[Mapping[str, float]],
    path: str | Path,
    *,
    switch_iteration: int | None = None,
    baselines: Mapping[str, float] | None = None,
) -> Path:
    """Plot the training loss and every validation metric found in `history` against iterations.

    `baselines` draws horizontal reference lines (e.g. bicubic PSNR) on the metric panel; the BN switch
    is marked with a vertical line, since that is where curves of the RepSR recipe change.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    iterations = np.array([row["iteration"] for row in history if "loss" in row])
    losses = np.array([row["loss"] for row in history if "loss" in row])
    metric_keys = sorted({k for row in history for k in row if k.endswith("psnr")})
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    axes[0].plot(iterations, losses, lw=0.8, label="L1 loss")
    axes[0].set_yscale("log")
    axes[0].set_xlabel("iteration")
    axes[0].set_title("training loss")
    for key in metric_keys:
        rows = [row for row in history if key in row]
        axes[1].plot([r["iteration"] for r in rows], [r[key] for r in rows], marker="o", ms=3, label=key)
    for name, value in (baselines or {}).items():
        axes[1].axhline(value, ls="--", lw=0.8, color="gray", label=name)
    axes[1].set_xlabel("iteration")
    axes[1].set_ylabel("PSNR (dB)")
    axes[1].set_title("validation (deployed form)")
    for axis in axes:
        if switch_iteration is not None:
            axis.axvline(switch_iteration, color="red", lw=0.8, ls=":", label="BN switch")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
