"""The photographs repsr ships or finds: scikit-image's sample photographs (the quickstart's training and
validation split, verification crops of every export, int8 calibration), standard benchmark folders, and
seeded random crops of photographs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from repsr.util.errors import DataError, RepsrError

CALIBRATION_CROP = 96  # side of the LR crops int8 calibrates on (ONNX and the fused kernel)
CALIBRATION_CROPS_PER_IMAGE = 4
VERIFY_SIZE = (128, 128)  # (height, width) of the photograph crop exports are checked on

# scikit-image's shipped colour photographs. Validation: two different kinds of content (fur, outdoor scene).
SAMPLE_TRAIN: tuple[str, ...] = (
    "astronaut.png",
    "coffee.png",
    "motorcycle_left.png",
    "motorcycle_right.png",
    "hubble_deep_field.jpg",
    "ihc.png",
    "retina.jpg",
)
SAMPLE_VAL: tuple[str, ...] = ("chelsea.png", "rocket.jpg")

# Folder names (and common aliases) looked for by standard_sets().
STANDARD_SETS: dict[str, tuple[str, ...]] = {
    "Set5": ("Set5",),
    "Set14": ("Set14",),
    "B100": ("B100", "BSD100", "BSDS100"),
    "Urban100": ("Urban100",),
    "Manga109": ("Manga109",),
    "DIV2K_valid": ("DIV2K_valid", "DIV2K_valid_HR", "DIV2K"),
}


def sample_images() -> dict[str, list[Path]]:
    """Paths of scikit-image's shipped photographs: ``{"train": [...], "val": [...]}`` (fixed split).

    Real colour photographs only (astronaut, coffee, motorcycles, Hubble, IHC, retina / chelsea, rocket);
    nothing is downloaded. Raises DataError when scikit-image or its data files are missing.
    """
    try:
        import skimage.data
    except ImportError as exc:
        raise DataError("sample images: scikit-image is not installed (pip install scikit-image)") from exc
    folder = Path(skimage.data.__file__).parent
    split = {
        "train": [folder / n for n in SAMPLE_TRAIN if (folder / n).is_file()],
        "val": [folder / n for n in SAMPLE_VAL if (folder / n).is_file()],
    }
    if not split["train"] or not split["val"]:
        raise DataError(f"{folder}: scikit-image's sample photographs are missing from this installation")
    return split


def standard_sets(root: str | Path) -> dict[str, Path]:
    """Standard benchmark folders found directly under ``root`` (e.g. ``root/Set5``), by canonical name."""
    root = Path(root)
    found: dict[str, Path] = {}
    for name, aliases in STANDARD_SETS.items():
        for alias in aliases:
            if (root / alias).is_dir():
                found[name] = root / alias
                break
    return found


def sample_photo(index: int = 0) -> Tensor:
    """The `index`-th built-in validation photograph (then training ones) as (3, H, W) in [0, 1]."""
    from repsr.image.io import read_image

    images = sample_images()
    pool = [*images["val"], *images["train"]]
    return read_image(pool[index % len(pool)]).rgb


def photo_crops(
    paths: list[Path], in_channels: int, side: int, per_image: int, seed: int
) -> list[np.ndarray]:
    """Random (1, C, side, side) float32 crops of photographs (a Y-channel model gets Y)."""
    from repsr.image.io import read_image

    generator = torch.Generator().manual_seed(seed)
    crops = []
    for path in paths:
        try:
            rgb = read_image(path).rgb
        except RepsrError:
            continue
        if in_channels == 1:
            from repsr.image.color import rgb_to_y

            rgb = rgb_to_y(rgb)
        height, width = rgb.shape[-2:]
        size = min(side, height, width)
        for _ in range(per_image):
            top = int(torch.randint(0, height - size + 1, (1,), generator=generator))
            left = int(torch.randint(0, width - size + 1, (1,), generator=generator))
            crops.append(rgb[None, :, top : top + size, left : left + size].contiguous().numpy())
    return crops


def calibration_images(calibration: str | Path | None) -> list[Path]:
    """The photographs to calibrate on: a folder's images, or the built-in training sample photographs
    that int8's checks do not use (`HARSH_PHOTOS` left out: a check on photographs the ranges were
    calibrated on would pass what fails on a user's; ONNX Runtime's worst pixel at x4 measured 15 levels
    that way and 29 out of sample)."""
    if calibration is None:
        return [path for path in sample_images()["train"] if path.name not in HARSH_PHOTOS]
    from repsr.image.io import list_images

    folder = Path(calibration)
    if not folder.exists():
        raise DataError(f"{folder}: calibration folder does not exist")
    images = list_images(folder, recursive=True)
    if not images:
        raise DataError(f"{folder}: no images to calibrate on")
    return images


def verification_image(
    in_channels: int, size: tuple[int, int] = VERIFY_SIZE, *, batch: int = 1, index: int = 0
) -> Tensor:
    """(batch, in_channels, H, W) centre crop(s) of sample photographs; Y channel for a 1-channel model."""
    crops = []
    for offset in range(batch):
        photo = sample_photo(index + offset)
        height, width = size
        if photo.shape[-2] < height or photo.shape[-1] < width:
            from repsr.image.resize import imresize

            factor = max(height / photo.shape[-2], width / photo.shape[-1])
            photo = imresize(photo, factor).clamp(0, 1)
        top, left = (photo.shape[-2] - height) // 2, (photo.shape[-1] - width) // 2
        crops.append(photo[:, top : top + height, left : left + width])
    rgb = torch.stack(crops)
    if in_channels == 1:
        from repsr.image.color import rgb_to_y

        return rgb_to_y(rgb).contiguous()
    return rgb.contiguous()


def calibration_crops(in_channels: int, seed: int = 0, folder: str | Path | None = None) -> list[Tensor]:
    """Seeded LR crops (1, C, side, side) of the photographs int8 calibrates on (`calibration_images`)."""
    crops = photo_crops(
        calibration_images(folder), in_channels, CALIBRATION_CROP, CALIBRATION_CROPS_PER_IMAGE, seed
    )
    return [torch.from_numpy(crop) for crop in crops]


# Photographs of the gate (fur, faces, saturated colours, fine texture, a night sky).
HARSH_PHOTOS: tuple[str, ...] = (
    "coffee.png",
    "astronaut.png",
    "chelsea.png",
    "motorcycle_left.png",
    "rocket.jpg",
)


def _channels(images: dict[str, Tensor], in_channels: int) -> dict[str, Tensor]:
    from repsr.image.color import rgb_to_y

    if in_channels == 1:
        return {name: rgb_to_y(image)[None].contiguous() for name, image in images.items()}
    return {name: image[None].contiguous() for name, image in images.items()}


def more_saturated(rgb: Tensor, factor: float = 1.5) -> Tensor:
    """`rgb` (3, H, W) in [0, 1] with its chroma (Cb, Cr about their middle) times `factor`, clamped to
    8-bit levels: the colours of a vivid photograph, where reduced precision clips first."""
    from repsr.image.color import rgb_to_ycbcr, ycbcr_to_rgb
    from repsr.image.pixels import quantize

    ycc = rgb_to_ycbcr(rgb)
    ycc[1:] = (ycc[1:] - 0.5) * factor + 0.5
    return quantize(ycbcr_to_rgb(ycc))


def harsh_photos(in_channels: int = 3, side: int = 128) -> dict[str, Tensor]:
    """Photographs (1, C, side, side) in [0, 1], as 8-bit files, where reduced precision shows first:
    centre crops of `HARSH_PHOTOS`, each also as a dark scene (x 0.15) and with more saturated colours
    (chroma x 1.5, clamped). Y for a 1-channel model."""
    from repsr.image.io import read_image
    from repsr.image.pixels import quantize

    folder = sample_images()["val"][0].parent  # scikit-image's data folder: all its photographs
    images: dict[str, Tensor] = {}
    for name in HARSH_PHOTOS:
        rgb = read_image(folder / name).rgb
        top, left = (rgb.shape[-2] - side) // 2, (rgb.shape[-1] - side) // 2
        crop = rgb[:, top : top + side, left : left + side]
        stem = Path(name).stem
        images[stem] = crop
        images[f"{stem} dark"] = quantize(crop * 0.15)
        images[f"{stem} saturated"] = more_saturated(crop)
    return _channels(images, in_channels)


def synthetic_patterns(in_channels: int = 3, side: int = 128) -> dict[str, Tensor]:
    """Graphics no photograph holds: full-saturation colour bars and a black-and-white checkerboard of
    6-pixel squares (1, C, side, side). Static int8 ranges calibrated on photographs clip on them."""
    bars = torch.tensor(
        [[1, 1, 1], [1, 1, 0], [0, 1, 1], [0, 1, 0], [1, 0, 1], [1, 0, 0], [0, 0, 1], [0, 0, 0]]
    )
    columns = torch.arange(side) * len(bars) // side
    yy, xx = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    images = {
        "colour bars": bars[columns].T.float()[:, None, :].expand(3, side, side).contiguous(),
        "checkerboard": (((yy // 6) + (xx // 6)) % 2).float().expand(3, side, side).contiguous(),
    }
    return _channels(images, in_channels)
