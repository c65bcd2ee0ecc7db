"""The recipes the toolkit ships, as data: the demo's training settings and the studies' definitions.

`repsr demo` trains `DEMO_SETTINGS` for a time budget; every `repsr study` starts from the same model and
recipe (`STUDY_SETTINGS`: x4 RGB RepSR M4C16, CPU-sized batches, validating only at the end) and
varies it as its `Study` entry in `STUDIES` says. The code that runs them is in `repsr.apps.demo` and
`repsr.apps.studies`.
"""

from __future__ import annotations

from dataclasses import dataclass

DEMO_SETTINGS = (
    "name=demo",
    "model.block=repsr",
    "model.scale=4",
    "model.num_blocks=4",
    "model.channels=16",
    "model.in_channels=3",
    "data.patch_size=32",
    "data.workers=0",
    "train.batch_size=16",
    "train.lr=2e-3",
    "train.scheduler=cosine",
    "bn.mode=switch",
    "bn.switch_at=0.8",
    "bn.precise_batches=20",
    "checkpoint.keep=1",
)

# Extra measurements a study can ask for (`Study.measures`).
BN_GAP = "bn_gap"
THROUGHPUT = "throughput"

# Every study starts from the demo's model and recipe (x4 RGB RepSR M4C16, CPU-sized batches), and
# validates only at the end: each variant is evaluated after training.
STUDY_SETTINGS = (*DEMO_SETTINGS, "val.every=0", "log.every=50", "log.tensorboard=false", "device=cpu")


@dataclass(frozen=True)
class Variant:
    """One arm of a study: a label and the config overrides that make it."""

    label: str
    overrides: tuple[str, ...] = ()


@dataclass(frozen=True)
class Study:
    name: str
    question: str
    variants: tuple[Variant, ...]
    iterations: int  # default per variant: keeps the study under ~30 min on a 2-core CPU
    seeds: int = 2
    extra: tuple[str, ...] = ()  # overrides for every variant of this study
    # What is measured besides PSNR/SSIM: `BN_GAP` (population vs own-image statistics, with crops of
    # the worst difference; variants with BN only) and `THROUGHPUT` (CPU frames/s of the deployed
    # network, which the plot then shows PSNR against).
    measures: tuple[str, ...] = ()


STUDIES: dict[str, Study] = {
    "blocks": Study(
        "blocks",
        "Which re-parameterizable block gives the best deployed network at equal inference cost?",
        tuple(
            Variant(block, (f"model.block={block}", f"bn.mode={mode}"))
            for block, mode in [
                ("plain", "none"),
                ("repvgg", "batch"),
                ("acb", "batch"),
                ("dbb", "batch"),
                ("ecb", "none"),
                ("repsr", "switch"),
            ]
        ),
        iterations=600,
    ),
    "bn": Study(
        "bn",
        "Does BN help, and does switching to population statistics remove the BN artifacts?",
        (
            Variant("none", ("bn.mode=none",)),
            Variant("batch", ("bn.mode=batch",)),
            Variant("switch", ("bn.mode=switch",)),
        ),
        iterations=800,
        measures=(BN_GAP,),
    ),
    "switch": Study(
        "switch",
        "Where to switch, and does recomputing the population statistics precisely matter?",
        tuple(
            Variant(
                f"at {at}, {'precise' if precise else 'running avg'}",
                (f"bn.switch_at={at}", f"bn.precise_batches={precise}"),
            )
            for at in (0.5, 0.75, 0.9)
            for precise in (0, 20)
        ),
        iterations=600,
    ),
    "design": Study(
        "design",
        "Which parts of the RepSR block matter: expand ratio, number of paths, identity, squeeze BN?",
        (
            Variant("default (e2, 2 paths, identity)", ()),
            Variant("expand 1", ("model.expand=1",)),
            Variant("expand 4", ("model.expand=4",)),
            Variant("1 path", ("model.paths=1",)),
            Variant("no identity", ("model.identity=false",)),
            Variant("BN after squeeze", ("model.squeeze_bn=true",)),
        ),
        iterations=600,
    ),
    "speed": Study(
        "speed",
        "Quality against measured throughput of the deployed RepSR sizes (the paper's trade-off plot).",
        tuple(
            Variant(f"M{m}C{c}", (f"model.num_blocks={m}", f"model.channels={c}"))
            for m, c in ((4, 16), (10, 32), (16, 64))
        ),
        iterations=300,
        seeds=1,
        extra=("train.batch_size=8",),
        measures=(THROUGHPUT,),
    ),
}
