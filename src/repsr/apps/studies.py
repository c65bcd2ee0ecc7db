"""The paper's experiments at laptop scale: `repsr study NAME`.

A study trains several variants of the recipe with the same budget, over several seeds, evaluates
each deployed (plain) network on the sample validation photographs and any `--data` sets, and writes
to `runs/study-NAME/`: `results.md` (mean and spread over seeds), `results.json` (every run, every
image) and `results.png`. The same variants scale to GPU-length runs with `--iterations` and `--set`.

The studies are defined as data in `repsr.apps.recipes.STUDIES`:
- `blocks`: plain, repvgg, acb, dbb, ecb, repsr at M4C16; all deploy to the same plain network, so
  the table compares quality at equal inference cost, with each variant's training time.
- `bn`: the RepSR block with BN `none`, `batch` (deployed with population statistics, as BN usually
  is) and `switch` (the paper's); per-image PSNR, the worst image, and the gap between normalizing
  with each test image's own (batch) statistics and with population statistics, where BN artifacts
  show. Crops of the worst artifacts are saved as PNG.
- `switch`: where to switch (0.5, 0.75, 0.9 of the run) and whether precise recomputation of the
  population statistics matters (`bn.precise_batches` 0 keeps the running averages).
- `design`: expand ratio (1, 2, 4), one or two expand-and-squeeze paths, with and without the
  identity path, BN after the squeeze.
- `speed`: PSNR against measured throughput of the deployed RepSR sizes M4C16, M10C32, M16C64.
"""

from __future__ import annotations

import copy
import json
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from repsr.apps.recipes import BN_GAP, STUDIES, STUDY_SETTINGS, THROUGHPUT, Study
from repsr.arch.phase import Phase, set_phase
from repsr.util.errors import ConfigError


@dataclass
class RunRecord:
    """One trained variant/seed: its scores and costs."""

    variant: str
    seed: int
    train_seconds: float
    psnr: dict[str, float]  # dataset -> mean PSNR of the deployed network
    ssim: dict[str, float]
    images: dict[str, dict[str, float]]  # "dataset/image" -> PSNR
    extra: dict[str, Any] = field(default_factory=dict)


def _validation_sets(scale: int, data: Sequence[str]) -> dict[str, Any]:
    from repsr.quality.evaluation import open_datasets, sample_dataset

    sets = {"sample": sample_dataset(scale)}
    sets.update(open_datasets(data, scale) if data else {})
    return {name: list(pairs) for name, pairs in sets.items()}


@torch.no_grad()
def batch_statistics_output(model: nn.Module, lr: Tensor) -> Tensor:
    """The network's output when every BN normalizes with this image's own statistics.

    This is what training-time BN computes; comparing it with population statistics shows the
    train/test inconsistency that the paper blames for BN artifacts.
    """
    probe = set_phase(copy.deepcopy(model), Phase.BATCH_STATS, track_statistics=False)
    return probe.train()(lr[None])[0]


def _bn_gap(model: nn.Module, sets: Mapping[str, list[Any]], out_dir: Path, label: str) -> dict[str, Any]:
    """Per-image PSNR with population vs own-image statistics; crops of the worst difference."""
    from repsr.apps.visualize import side_by_side
    from repsr.image.metrics import psnr

    scale = model.spec.scale
    rows, worst = [], None
    with torch.no_grad():
        for name, pairs in sets.items():
            for pair in pairs:
                population = model.eval()(pair.lr[None])[0].clamp(0, 1)
                own = batch_statistics_output(model, pair.lr).clamp(0, 1)
                row = {
                    "image": f"{name}/{pair.name}",
                    "population": psnr(population, pair.hr, scale),
                    "own_statistics": psnr(own, pair.hr, scale),
                }
                rows.append(row)
                if worst is None or row["population"] - row["own_statistics"] < worst[0]:
                    worst = (row["population"] - row["own_statistics"], pair, population, own)
    crop_path = None
    if worst is not None:
        _, pair, population, own = worst
        difference = (population - own).abs().mean(0, keepdim=True)
        size = min(96, *difference.shape[-2:])
        pooled = nn.functional.avg_pool2d(difference[None], size, stride=4)
        top, left = divmod(int(pooled.flatten().argmax()), pooled.shape[-1])
        window = (slice(None), slice(top * 4, top * 4 + size), slice(left * 4, left * 4 + size))
        gain = 1 / max(float(difference.max()), 1e-6)
        crop_path = side_by_side(
            {
                "HR": pair.hr[window],
                "population stats": population[window],
                "own-image stats": own[window],
                "|difference| (scaled)": (difference[window] * gain).expand(3, -1, -1),
            },
            out_dir / f"bn-gap-{_slug(label)}.png",
        )
    return {"per_image": rows, "crop": str(crop_path) if crop_path else None}


def _throughput(plain: nn.Module, size: tuple[int, int] = (180, 320)) -> float:
    """Frames per second of the deployed network on one CPU LR frame, as `repsr upscale` runs it."""
    from repsr.apps.benchmark import median_latency

    return 1.0 / median_latency(plain, *size, backend="channels-last")


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text).strip("-").lower()


def run_study(
    name: str,
    *,
    iterations: int | None = None,
    seeds: int | None = None,
    data: Sequence[str] = (),
    train_data: Path | None = None,
    overrides: Sequence[str] = (),
    only: Sequence[str] = (),
    out: Path | None = None,
    progress: bool = True,
) -> Path:
    """Run study `name` (see the module docstring); returns the path of its `results.md`.

    `only` restricts the study to the variants with these labels (e.g. a longer rerun of two of them).
    """
    from repsr.quality.evaluation import evaluate
    from repsr.training import TrainConfig, train

    if name not in STUDIES:
        raise ConfigError(f"unknown study {name!r}; choose one of {', '.join(STUDIES)}")
    study = STUDIES[name]
    labels = [variant.label for variant in study.variants]
    unknown = [label for label in only if label not in labels]
    if unknown:
        raise ConfigError(f"study {name} has no variant {unknown[0]!r}; its variants: {', '.join(labels)}")
    variants = [variant for variant in study.variants if not only or variant.label in only]
    iterations = iterations or study.iterations
    seeds = seeds or study.seeds
    out = Path(out or Path("runs") / f"study-{name}")
    out.mkdir(parents=True, exist_ok=True)
    base = TrainConfig().with_overrides([*STUDY_SETTINGS, *study.extra, f"train.iterations={iterations}"])
    sets = _validation_sets(base.model.scale, data)
    records: list[RunRecord] = []
    started = time.perf_counter()
    runs = [(variant, seed) for variant in variants for seed in range(seeds)]
    for index, (variant, seed) in enumerate(runs, 1):
        print(f"[{index}/{len(runs)}] {name}: {variant.label}, seed {seed}", flush=True)
        config = base.with_overrides(
            [
                *variant.overrides,
                *overrides,
                f"name={_slug(variant.label)}-s{seed}",
                f"seed={seed}",
                f"checkpoint.every={iterations}",
            ]
        )
        result = train(config, data=train_data, val={}, out=out / "runs" / config.name, progress=progress)
        scores = evaluate(result.plain, sets, device="cpu", tile=None)
        record = RunRecord(
            variant=variant.label,
            seed=seed,
            train_seconds=result.train_seconds,
            psnr={d.name: d.mean("psnr") for d in scores.datasets},
            ssim={d.name: d.mean("ssim") for d in scores.datasets},
            images={f"{d.name}/{i.name}": i.psnr for d in scores.datasets for i in d.images},
        )
        record.extra["bicubic_psnr"] = {d.name: d.mean("bicubic_psnr") for d in scores.datasets}
        if BN_GAP in study.measures and config.bn.mode != "none":
            record.extra["bn_gap"] = _bn_gap(result.model, sets, out, f"{variant.label}-s{seed}")
        if THROUGHPUT in study.measures:
            record.extra["fps"] = _throughput(result.plain)
            record.extra["params"] = sum(p.numel() for p in result.plain.parameters())
        records.append(record)
    elapsed = time.perf_counter() - started
    (out / "results.json").write_text(json.dumps([asdict(r) for r in records], indent=2))
    plot = _plot(study, records, out / "results.png")
    report = out / "results.md"
    report.write_text(_markdown(study, records, iterations, seeds, elapsed, plot))
    return report


def _summary(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def _by_variant(records: list[RunRecord]) -> dict[str, list[RunRecord]]:
    grouped: dict[str, list[RunRecord]] = {}
    for record in records:
        grouped.setdefault(record.variant, []).append(record)
    return grouped


def _markdown(
    study: Study, records: list[RunRecord], iterations: int, seeds: int, elapsed: float, plot: Path
) -> str:
    datasets = list(records[0].psnr)
    bicubic = records[0].extra["bicubic_psnr"]
    header = (
        "| variant | "
        + " | ".join(f"{d} PSNR" for d in datasets)
        + " | "
        + " | ".join(f"{d} SSIM" for d in datasets)
        + " | train time (s) |"
    )
    lines = [
        f"# Study `{study.name}`",
        "",
        study.question,
        "",
        f"{iterations} iterations per run, {seeds} seed(s); x4 RGB, M4C16 unless the variant says "
        f"otherwise; deployed (plain) networks evaluated with the standard protocol (Y channel, "
        f"border = scale). Mean ± standard deviation over seeds. {elapsed / 60:.1f} min in all.",
        "",
        header,
        "|" + "---|" * (2 + 2 * len(datasets)),
    ]
    lines.append(
        "| bicubic | "
        + " | ".join(f"{bicubic[d]:.2f}" for d in datasets)
        + " | "
        + " | ".join("" for _ in datasets)
        + " | |"
    )
    for variant, group in _by_variant(records).items():
        psnrs = " | ".join(_summary([r.psnr[d] for r in group]) for d in datasets)
        ssims = " | ".join(f"{statistics.mean([r.ssim[d] for r in group]):.4f}" for d in datasets)
        seconds = statistics.mean(r.train_seconds for r in group)
        lines.append(f"| {variant} | {psnrs} | {ssims} | {seconds:.0f} |")
    if BN_GAP in study.measures:
        lines += [
            "",
            "## Population vs own-image (batch) statistics, per image",
            "",
            "| variant | image | PSNR population | PSNR own statistics | gap |",
            "|---|---|---|---|---|",
        ]
        for record in records:
            gap = record.extra.get("bn_gap")
            for row in (gap or {}).get("per_image", []):
                lines.append(
                    f"| {record.variant} s{record.seed} | {row['image']} | {row['population']:.2f} | "
                    f"{row['own_statistics']:.2f} | {row['population'] - row['own_statistics']:+.2f} |"
                )
        worst = min(
            ((r, row) for r in records for row in (r.extra.get("bn_gap") or {}).get("per_image", [])),
            key=lambda item: item[1]["population"],
            default=None,
        )
        if worst is not None:
            lines += [
                "",
                f"Worst image (population statistics): {worst[1]['image']} of "
                f"`{worst[0].variant}` s{worst[0].seed}, {worst[1]['population']:.2f} dB.",
            ]
    if THROUGHPUT in study.measures:
        lines += ["", "| variant | parameters | CPU frames/s (320x180 -> 1280x720) |", "|---|---|---|"]
        for variant, group in _by_variant(records).items():
            fps = statistics.mean(r.extra["fps"] for r in group)
            lines.append(f"| {variant} | {group[0].extra['params']:,} | {fps:.1f} |")
    lines += ["", f"![results]({plot.name})", ""]
    return "\n".join(lines)


def _plot(study: Study, records: list[RunRecord], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grouped = _by_variant(records)
    dataset = next(iter(records[0].psnr))
    fig, axis = plt.subplots(figsize=(8, 4))
    if THROUGHPUT in study.measures:
        for variant, group in grouped.items():
            fps = statistics.mean(r.extra["fps"] for r in group)
            value = statistics.mean(r.psnr[dataset] for r in group)
            axis.scatter(fps, value)
            axis.annotate(variant, (fps, value), textcoords="offset points", xytext=(4, 4))
        axis.set_xscale("log")
        axis.set_xlabel("CPU frames/s (320x180 LR)")
    else:
        labels = list(grouped)
        means = [statistics.mean(r.psnr[dataset] for r in grouped[k]) for k in labels]
        spreads = [
            statistics.stdev(r.psnr[dataset] for r in grouped[k]) if len(grouped[k]) > 1 else 0.0
            for k in labels
        ]
        axis.bar(range(len(labels)), means, yerr=spreads, capsize=4, color="#4c72b0")
        axis.set_xticks(range(len(labels)), labels, rotation=20, ha="right", fontsize=8)
        low = min(means) - max(0.3, 2 * max(spreads))
        axis.set_ylim(low, max(means) + max(0.2, 2 * max(spreads)))
    axis.axhline(records[0].extra["bicubic_psnr"][dataset], ls="--", color="gray", lw=0.8, label="bicubic")
    axis.set_ylabel(f"{dataset} PSNR (dB, Y)")
    axis.set_title(f"study {study.name}")
    axis.legend(fontsize=8)
    axis.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
