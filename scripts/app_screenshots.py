"""Screenshots of `repsr app` for the README, taken by headless Chromium (Playwright, Debian's chromium).

Run: ``python scripts/app_screenshots.py [--out docs]``. Writes `app-compare.png` (a photograph added,
denoise slider moved, the before/after slider on bicubic vs the general x4 model) and `app-progress.png`
(a batch of photographs and a video running: total, per file and per frame progress, outcomes).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from tests.helpers.app_server import running_app  # noqa: E402


def write_inputs(root: Path) -> tuple[Path, Path, Path]:
    """A JPEG photograph, a folder of six photographs and a 6-second clip, made from scikit-image's."""
    import av
    from skimage import data

    photo = root / "chelsea.jpg"
    Image.fromarray(data.chelsea()).save(photo, quality=60)
    folder = root / "holiday"
    folder.mkdir()
    for index, picture in enumerate([data.astronaut(), data.coffee(), data.rocket()] * 2):
        Image.fromarray(picture).resize((320, 240)).save(folder / f"photo-{index}.jpg", quality=80)
    clip = root / "street.mp4"
    container = av.open(str(clip), "w")
    stream = container.add_stream("libx264", rate=24)
    stream.width, stream.height, stream.pix_fmt = 320, 180, "yuv420p"
    base = np.asarray(Image.fromarray(data.coffee()).resize((480, 360)))
    for index in range(144):
        window = np.ascontiguousarray(base[90:270, index : index + 320])
        container.mux(stream.encode(av.VideoFrame.from_ndarray(window, "rgb24")))
    container.mux(stream.encode(None))
    container.close()
    return photo, folder, clip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as folder, sync_playwright() as playwright:
        root = Path(folder)
        photo, holiday, clip = write_inputs(root)
        browser = playwright.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1100, "height": 860})
        with running_app(root, precision="auto") as (base, _):
            page.goto(f"{base}/")
            page.wait_for_selector("body[data-ready='1']")
            page.set_input_files("#file-input", str(photo))
            page.wait_for_selector("#after[data-denoise='auto']")
            page.click("#picker", position={"x": 150, "y": 60})
            page.uncheck("#denoise-auto")
            page.locator("#denoise").fill("0.6")
            page.wait_for_selector("#after[data-denoise='0.6']")
            page.locator("#split").fill("50")
            time.sleep(0.3)
            page.locator("#compare-section").screenshot(path=str(args.out / "app-compare.png"))

            page.fill("#folder-path", str(holiday))
            page.click("#add-folder")
            page.wait_for_selector("#message >> text=file(s) added")
            page.set_input_files("#file-input", str(clip))
            page.wait_for_selector("#sources li >> text=street.mp4")
            page.fill("#output", str(root / "upscaled"))
            page.click("#run")
            frames_shown = "() => /frame [1-9]/.test(document.querySelector('#progress-text').textContent)"
            page.wait_for_function(frames_shown, timeout=120_000)
            time.sleep(1.0)
            page.locator("#run-section").screenshot(path=str(args.out / "app-progress.png"))
            page.wait_for_selector("#progress-box[data-status='done']", timeout=300_000)
        browser.close()
    for name in ("app-compare.png", "app-progress.png"):
        path = args.out / name
        with Image.open(path) as shot:  # 256 colours: a small file for the README, the page still legible
            rgb = shot.convert("RGB")
            small = rgb.quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
        small.save(path, optimize=True)
        print(f"{path}: {path.stat().st_size / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
