"""The project's own training corpus: freely licensed photographs from Debian wallpaper packages.

DIV2K cannot be downloaded here (nor by every user), so the shipped models are trained on about 27
high-resolution photographs that three Debian packages carry (the drawings and gradients in those
packages are left out). `build_corpus(out)` fetches the packages with `apt-get download`, unpacks them
with `dpkg-deb`, and writes the chosen photographs as PNG into `out/train` and `out/holdout`:

- Most sources are JPEGs whose 8x8 block grid shows (blockiness above `BLOCKY`: the mean gradient across
  block borders over the mean gradient elsewhere). Those are downscaled by 2 with the MATLAB-compatible
  bicubic, the usual way to clean JPEG-sourced HR images; the measured value is printed and kept in
  `out/corpus.tsv`.
- Four photographs of different content, plus scikit-image's `chelsea` and `rocket`, are held out for
  evaluation (`out/holdout`); nothing is ever trained on them.

Any folder of HR photographs works for training instead; this corpus only makes the shipped models
reproducible from public packages.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from repsr.image.assess import blockiness
from repsr.util.errors import DataError, DependencyError

PACKAGES = ("lomiri-wallpapers-16.04", "lomiri-wallpapers-20.04", "plasma-workspace-wallpapers")
BLOCKY = 1.1  # blockiness above which a JPEG is downscaled by 2
_LOMIRI = "usr/share/backgrounds"
_PLASMA = "usr/share/wallpapers/{}/contents/images/{}"


@dataclass(frozen=True)
class Photo:
    """One corpus photograph: where it lies in the unpacked packages and whether it is held out."""

    name: str
    source: str
    holdout: bool = False


def _plasma(name: str, size: str = "2560x1600", holdout: bool = False) -> Photo:
    return Photo(name, _PLASMA.format(name, f"{size}.jpg"), holdout)


def _lomiri(stem: str, holdout: bool = False) -> Photo:
    return Photo(stem.split("_by_")[0], f"{_LOMIRI}/{stem}.jpg", holdout)


PHOTOS: tuple[Photo, ...] = (
    _lomiri("Bridge_by_Sander_Klootwijk"),
    _lomiri("Dragonfly_by_Bolly"),
    _lomiri("Infinite-Sea_by_Aury88"),
    _lomiri("Kleiber_by_Lukas_Baubkus", holdout=True),  # bird on bark, bokeh
    _lomiri("Picture_0B_by_freespace"),
    _lomiri("Wine_by_Jakkub_Mede"),
    _lomiri("aitzgorri_by_Aitzol_Berasategi"),
    _lomiri("analogpattern_by_Peter_Nerlich"),
    _lomiri("free_by_Peter_Nerlich"),
    _lomiri("friends_by_Aitzol_Berasategi"),
    _lomiri("greentock_by_Peter_Nerlich"),
    _lomiri("life_by_Aitzol_Berasategi"),
    _lomiri("picosdeeuropa_by_Aitzol_Berasategi", holdout=True),  # mountain landscape
    _lomiri("seeding_by_Clements_Engelhardt"),
    _lomiri("sunset_by_Aitzol_Berasategi"),
    _plasma("BytheWater"),
    _plasma("ColdRipple"),
    _plasma("ColorfulCups", holdout=True),  # man-made objects, hard edges
    _plasma("DarkestHour"),
    _plasma("EveningGlow", holdout=True),  # boats, fine detail, low light
    _plasma("FallenLeaf"),
    _plasma("Grey"),
    _plasma("Kite"),
    _plasma("OneStandsOut"),
    _plasma("Path"),
    _plasma("Volna", size="5120x2880"),
    _plasma("summer_1am"),
)
SKIMAGE_HOLDOUT = ("chelsea", "rocket")


def _require(tool: str) -> None:
    if shutil.which(tool) is None:
        raise DependencyError(
            f"building the corpus needs '{tool}' (Debian/Ubuntu); elsewhere train on any folder of HR "
            "photographs: repsr train CONFIG --data DIR"
        )


def fetch_packages(workdir: Path) -> Path:
    """`apt-get download` the wallpaper packages into `workdir` and unpack them; returns the root."""
    for tool in ("apt-get", "dpkg-deb"):
        _require(tool)
    root = workdir / "root"
    root.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["apt-get", "download", *PACKAGES], cwd=workdir, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise DataError(f"apt-get download {' '.join(PACKAGES)} failed: {last} (try 'apt-get update' first)")
    for deb in sorted(workdir.glob("*.deb")):
        subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    return root


def _prepare(path: Path) -> tuple[torch.Tensor, float, bool]:
    """Read one source photograph as float RGB; downscale by 2 where its JPEG blocks show."""
    from repsr.image.resize import imresize

    with Image.open(path) as im:
        rgb = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    score = blockiness([rgb.mean(axis=2)])
    img = torch.from_numpy(rgb).permute(2, 0, 1)
    downscaled = score > BLOCKY
    if downscaled:
        img = imresize(img, 0.5)
    return img, score, downscaled


def build_corpus(out: str | Path, *, log: Callable[[str], None] = print) -> dict[str, list[Path]]:
    """Write the corpus into `out/train` and `out/holdout` (PNG) and `out/corpus.tsv`; returns the lists."""
    from repsr.data.samples import sample_images
    from repsr.image.io import read_image, write_image

    out = Path(out)
    written: dict[str, list[Path]] = {"train": [], "holdout": []}
    rows = ["name\tsource\tsplit\twidth\theight\tblockiness\tdownscaled"]
    with tempfile.TemporaryDirectory(prefix="repsr-corpus-") as tmp:
        root = fetch_packages(Path(tmp))
        for photo in PHOTOS:
            source = root / photo.source
            if not source.is_file():
                raise DataError(f"{photo.source}: not in the downloaded packages (a newer package version?)")
            img, score, downscaled = _prepare(source)
            split = "holdout" if photo.holdout else "train"
            target = out / split / f"{photo.name}.png"
            write_image(target, img)
            written[split].append(target)
            height, width = img.shape[-2:]
            rows.append(
                f"{photo.name}\t{photo.source}\t{split}\t{width}\t{height}\t{score:.3f}\t{downscaled}"
            )
            log(
                f"{split:8s} {photo.name:16s} {width}x{height}  blockiness {score:.2f}"
                + ("  (downscaled x1/2)" if downscaled else "")
            )
    samples = {p.stem: p for p in sample_images()["val"]}
    for name in SKIMAGE_HOLDOUT:
        target = out / "holdout" / f"{name}.png"
        write_image(target, read_image(samples[name]).rgb)
        written["holdout"].append(target)
        rows.append(f"{name}\tscikit-image\tholdout\t\t\t\t")
    (out / "corpus.tsv").write_text("\n".join(rows) + "\n")
    return written
