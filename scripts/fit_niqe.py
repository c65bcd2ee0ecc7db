"""Fit NIQE's pristine statistics on the corpus's training photographs (never the held-out ones) and write
them beside `repsr.quality.niqe` (`niqe_pristine.json`), the file repsr ships.

    repsr corpus corpus/
    python scripts/fit_niqe.py corpus/train
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from repsr.image import io as rio
from repsr.quality import niqe as niqe_mod


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "train", type=Path, help="the corpus's training photographs (repsr corpus DIR: DIR/train)"
    )
    parser.add_argument("--out", type=Path, default=niqe_mod._PRISTINE_FILE, help="where to write the model")
    args = parser.parse_args(argv)
    files = rio.list_images(args.train)
    if not files:
        print(f"{args.train}: no images", file=sys.stderr)
        return 2
    start = time.perf_counter()
    lumas = (niqe_mod.luminance(rio.read_image(path).rgb) for path in files)
    model = niqe_mod.fit_pristine(lumas)
    args.out.write_text(model.to_json() + "\n")
    seconds = time.perf_counter() - start
    print(f"{args.out}: {model.patches} pristine patches from {len(files)} photographs, {seconds:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
