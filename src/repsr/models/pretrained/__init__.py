"""Models that ship inside the package, loadable by name wherever a model file is accepted.

Each shipped model has three files in this folder:
- `NAME.safetensors`: the deployed plain network (what `repsr upscale` runs);
- `NAME.train.safetensors`: the training form after the BN switch (population statistics frozen), no
  optimizer state: the starting point for fine-tuning (`repsr train CONFIG --init NAME`);
- `NAME.md`: the model card (data, recipe, iterations, wall time and machine, held-out scores).
`scores.json` holds the held-out scores that `repsr models` lists.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from repsr.util.errors import ModelFileError

FOLDER = Path(__file__).resolve().parent
DEFAULT_MODEL = "repsr-general-m4c16-x4"  # real inputs are JPEGs and noisy photographs
# `repsr upscale` without -m: a video's frames need a model fast enough for video; a photo is upscaled once
DEFAULT_VIDEO_MODEL = "repsr-general-m4c16-x4"
# `repsr upscale --style`: faithful restoration (PSNR-trained, what measurements want) or a crisp look
# (GAN-tuned: sharper edges, cleaner flats, lower PSNR)
STYLES = {"faithful": DEFAULT_MODEL, "sharp": "repsr-sharp-m4c16-x4"}


@dataclass(frozen=True)
class PretrainedModel:
    """A shipped model: its name and where its files lie."""

    name: str
    scale: int
    summary: str
    # general models: the clean model of the same size they were fine-tuned from (denoise strength 0)
    # and the strength `repsr upscale` uses when none is given
    denoise_partner: str | None = None
    denoise_default: float = 1.0
    style: str = "faithful"  # "sharp": GAN-tuned, shipped through the GAN gate (`quality.gan_gate`)

    @property
    def deployed(self) -> Path:
        return FOLDER / f"{self.name}.safetensors"

    @property
    def training_form(self) -> Path:
        return FOLDER / f"{self.name}.train.safetensors"

    @property
    def card(self) -> Path:
        return FOLDER / f"{self.name}.md"

    def scores(self) -> dict[str, Any]:
        """Held-out scores of the model and of bicubic, as measured when it was shipped ({} if none)."""
        path = FOLDER / "scores.json"
        if not path.is_file():
            return {}
        return json.loads(path.read_text()).get(self.name, {})


PRETRAINED: dict[str, PretrainedModel] = {
    model.name: model
    for model in (
        PretrainedModel("repsr-m4c16-x2", 2, "RGB RepSR M4C16 x2 (11.5k parameters deployed)"),
        PretrainedModel("repsr-m4c16-x3", 3, "RGB RepSR M4C16 x3 (13.7k parameters deployed)"),
        PretrainedModel("repsr-m4c16-x4", 4, "RGB RepSR M4C16 x4 (16.8k parameters deployed)"),
        PretrainedModel("repsr-m10c32-x2", 2, "RGB RepSR M10C32 x2 (97.2k parameters deployed)"),
        PretrainedModel("repsr-m10c32-x4", 4, "RGB RepSR M10C32 x4 (108k parameters deployed)"),
        PretrainedModel(
            "repsr-general-m4c16-x2",
            2,
            "RGB RepSR M4C16 x2 for real photographs: JPEG, noise (--denoise 0..1)",
            denoise_partner="repsr-m4c16-x2",
        ),
        PretrainedModel(
            "repsr-general-m10c32-x2",
            2,
            "RGB RepSR M10C32 x2 for real photographs: JPEG, noise (--denoise 0..1)",
            denoise_partner="repsr-m10c32-x2",
        ),
        PretrainedModel(
            "repsr-general-m4c16-x3",
            3,
            "RGB RepSR M4C16 x3 for real photographs: JPEG, noise (no --denoise partner: see its card)",
        ),
        PretrainedModel(
            "repsr-general-m4c16-x4",
            4,
            "RGB RepSR M4C16 x4 for real photographs: JPEG, noise (--denoise 0..1)",
            denoise_partner="repsr-m4c16-x4",
        ),
        PretrainedModel(
            "repsr-sharp-m4c16-x2",
            2,
            "RGB RepSR M4C16 x2, GAN-tuned for a crisp look on real photographs",
            style="sharp",
        ),
        PretrainedModel(
            "repsr-sharp-m4c16-x4",
            4,
            "RGB RepSR M4C16 x4, GAN-tuned for a crisp look on real photographs (--style sharp)",
            style="sharp",
        ),
    )
}


def shipped() -> list[PretrainedModel]:
    """The registered models whose files are present in this installation."""
    return [model for model in PRETRAINED.values() if model.deployed.is_file()]


def resolve_model(reference: str | Path, *, training_form: bool = False) -> Path:
    """A model file path for `reference`: an existing file as it is, else a shipped model's file by name.

    `training_form` picks the fine-tuning checkpoint of a shipped model instead of its deployed network.
    A name that is neither a file nor a shipped model raises `ModelFileError` listing the names.
    """
    path = Path(reference)
    if path.is_file():
        return path
    model = PRETRAINED.get(str(reference).lower())
    if model is None:
        if path.suffix or path.parent != Path("."):
            return path  # a file path that does not exist: the loader says so
        names = ", ".join(PRETRAINED)
        raise ModelFileError(f"{reference}: no such file, and not a shipped model (shipped: {names})")
    file = model.training_form if training_form else model.deployed
    if not file.is_file():
        raise ModelFileError(
            f"{model.name}: the shipped model file {file.name} is missing from this installation"
        )
    return file
