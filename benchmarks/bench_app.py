"""`repsr app` figures: start-up, the live preview's latency, and a batch run from the page's API.

Run: ``python benchmarks/bench_app.py [--batch]`` (``--batch`` needs ``pip install 'repsr[video]'``).

- start-up: `repsr app --no-browser` as a new process, to the printed URL and to the first answer;
- preview: a 256x256 crop of a 512x512 photograph upscaled x4 (1024x1024 out) by the default model
  (`repsr-general-m4c16-x4`, precision auto as `repsr app` runs it), as the page asks for it when the
  denoise slider moves to a new strength (blend + crop + PNG), again at a strength seen before, and the
  bicubic side of the comparison; the same at x2;
- batch (`--batch`): 20 photographs (JPEG, 480x320) and a 10-second clip (320x180, 24 frames/s) run
  as one job through the server's API (as the page submits it), timed, then compared with
  `repsr upscale` of the same inputs: images byte for byte, the video frame by frame after decoding.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from repsr.util.runtime import use_passive_omp_wait  # noqa: E402

use_passive_omp_wait()  # as the `repsr` CLI does; must precede torch

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from repsr.util.hardware import cpu_capabilities  # noqa: E402


def startup(runs: int = 3) -> None:
    """Seconds from starting `repsr app` to its printed URL, and to the first answer of /api/state."""
    import urllib.request

    printed, answered = [], []
    with tempfile.TemporaryDirectory() as folder:
        for _ in range(runs):
            start = time.perf_counter()
            process = subprocess.Popen(
                [sys.executable, "-m", "repsr", "app", "--no-browser", "--allow", folder],
                stdout=subprocess.PIPE,
                text=True,
            )
            url = process.stdout.readline().split()[2]
            printed.append(time.perf_counter() - start)
            urllib.request.urlopen(url + "api/state", timeout=30).read()
            answered.append(time.perf_counter() - start)
            process.terminate()
            process.wait(10)
    print(
        f"start-up: URL printed after {statistics.median(printed):.2f} s, first answer after "
        f"{statistics.median(answered):.2f} s (median of {runs})"
    )


def photo(size: tuple[int, int], seed: int = 0) -> np.ndarray:
    """A crop of one of scikit-image's photographs, resized to `size` (width, height)."""
    from skimage import data

    pictures = [data.astronaut(), data.chelsea(), data.coffee(), data.rocket()]
    image = Image.fromarray(pictures[seed % len(pictures)])
    return np.asarray(image.resize(size, Image.Resampling.LANCZOS))


def preview() -> None:
    from repsr.apps.app.preview import BICUBIC, Previewer
    from repsr.image.io import Pixels

    pixels = Pixels(photo((512, 512)), 8)
    for model in ("repsr-general-m4c16-x4", "repsr-general-m4c16-x2"):
        previewer = Previewer(precision="auto")
        previewer.preview(pixels, model, None, size=256)  # the app warms this up when it starts
        new, seen = [], []
        for strength in np.linspace(0.0, 1.0, 11):
            start = time.perf_counter()
            previewer.preview(pixels, model, float(strength), size=256)
            new.append(time.perf_counter() - start)
            start = time.perf_counter()
            previewer.preview(pixels, model, float(strength), size=256)
            seen.append(time.perf_counter() - start)
        scale = int(model[-1])
        bicubic = []
        for _ in range(5):
            start = time.perf_counter()
            previewer.preview(pixels, BICUBIC, None, size=256, scale=scale)
            bicubic.append(time.perf_counter() - start)
        upscaler = previewer.upscaler(model, 0.5)
        print(
            f"preview {model}, 256x256 -> {256 * scale}x{256 * scale} ({upscaler.precision}, "
            f"{upscaler.backend}): new strength median {statistics.median(new) * 1000:.0f} ms "
            f"(max {max(new) * 1000:.0f}), seen strength {statistics.median(seen) * 1000:.0f} ms, "
            f"bicubic side {statistics.median(bicubic) * 1000:.0f} ms"
        )


def batch() -> None:
    from repsr.cli import main as cli
    from repsr.inference.video import require_av
    from tests.helpers.app_server import request_json, running_app, upload, wait_job
    from tests.helpers.video import decoded_frames

    av = require_av()
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        (root / "photos").mkdir()
        for index in range(20):
            Image.fromarray(photo((480, 320), index)).save(root / "photos" / f"p{index:02d}.jpg", quality=85)
        clip = root / "clip.mp4"
        container = av.open(str(clip), "w")
        stream = container.add_stream("libx264", rate=24)
        stream.width, stream.height, stream.pix_fmt = 320, 180, "yuv420p"
        base = photo((640, 360), 1)
        for index in range(240):  # 10 s: a slow pan
            frame = av.VideoFrame.from_ndarray(
                np.ascontiguousarray(base[90:270, index : index + 320]), "rgb24"
            )
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
        container.close()
        model = "repsr-general-m4c16-x4"
        with running_app(root, precision="fp32") as (url, _):
            _, added = request_json(f"{url}/api/folder", {"path": str(root / "photos")})
            _, video = upload(url, clip)
            start = time.perf_counter()
            _, job = request_json(
                f"{url}/api/jobs",
                {
                    "folders": [added["folder"]["id"]],
                    "sources": [video["id"]],
                    "model": model,
                    "output": str(root / "app"),
                },
            )
            polls = 0
            while True:
                _, jobs = request_json(f"{url}/api/jobs")
                state = next(j for j in jobs if j["id"] == job["id"])
                polls += 1
                if state["status"] not in ("queued", "running"):
                    break
                time.sleep(0.4)
            seconds = time.perf_counter() - start
            job = wait_job(url, job["id"])
        written = sum(f["status"] == "written" for f in job["files"])
        files = len(job["files"])
        print(
            f"batch from the page's API: {job['status']}, {written}/{files} files in {seconds:.1f} s "
            f"({polls} progress polls)"
        )
        cli_args = ["upscale", str(root / "photos"), str(clip), "-o", str(root / "cli"), "-m", model]
        assert cli([*cli_args, "--precision", "fp32", "--no-progress"]) == 0
        same = all(
            (root / "app" / p.name).read_bytes() == p.read_bytes()
            for p in sorted((root / "cli").glob("*.jpg"))
        )
        frames_app, _ = decoded_frames(root / "app" / "clip.mp4")
        frames_cli, _ = decoded_frames(root / "cli" / "clip.mp4")
        video_same = len(frames_app) == len(frames_cli) == 240 and all(
            np.array_equal(a, b) for a, b in zip(frames_app, frames_cli, strict=True)
        )
        print(
            f"identical to repsr upscale: 20 photographs byte-equal {same}, "
            f"240 video frames pixel-equal {video_same}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", action="store_true", help="also run 20 photographs and a 10-second clip")
    args = parser.parse_args()
    print(f"# {cpu_capabilities().describe()}")
    startup()
    preview()
    if args.batch:
        batch()


if __name__ == "__main__":
    main()
