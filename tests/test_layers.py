"""The package layers: a package of repsr imports only packages below it (counting every import: module
level, inside functions and under `if TYPE_CHECKING:`), so `ls src/repsr` reads as the architecture."""

from __future__ import annotations

from pathlib import Path

from tests.helpers.graph import import_graph

SRC = Path(__file__).resolve().parent.parent / "src"

# Lowest first. A package may import its own modules and those of any package listed before it.
LAYERS = (
    "util",  # errors, atomic writes, process settings, timers, hardware detection
    "image",  # files, pixels, resize, colour, metrics
    "arch",  # merge math, blocks, phase, networks
    "data",  # samples, patches, evaluation sets, degradations, corpus
    "models",  # model files, shipped models, blends, the loader
    "deploy",  # deploy, ONNX, int8, ncnn
    "kernels",  # the fused C kernel
    "inference",  # backends and the decider, upscaler, tiling, files, video
    "quality",  # evaluation, degraded benchmark, gate
    "training",
    "apps",  # bench, demo, studies
    "cli",
)
TOP = ("repsr", "repsr.__main__")  # the public facade and `python -m repsr`: may import anything


def package_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def violations(graph: dict[str, dict[str, int]], layers: tuple[str, ...]) -> list[str]:
    """`module (line N) -> imported module` for every import of a package from one at or below it."""
    rank = {name: index for index, name in enumerate(layers)}
    found = []
    for module, edges in sorted(graph.items()):
        if module in TOP or module.count(".") == 0:
            continue
        here = package_of(module)
        assert here in rank, f"{module}: package {here!r} is in no layer of tests/test_layers.py"
        for target, line in sorted(edges.items()):
            there = package_of(target)
            if target in TOP or there == "":
                found.append(f"{module} (line {line}) imports the top-level package {target}")
            elif there != here and rank[there] > rank[here]:
                found.append(f"{module} (line {line}) -> {target}: {here} is below {there}")
    return found


def test_every_package_imports_only_packages_below_it():
    graph = import_graph(SRC, "repsr")
    packages = {package_of(m) for m in graph if m.count(".") >= 1 and m not in TOP}
    assert packages == set(LAYERS), f"packages and layers differ: {sorted(packages ^ set(LAYERS))}"
    problems = violations(graph, LAYERS)
    assert not problems, "layering broken:\n" + "\n".join(problems)


def test_the_layer_check_sees_an_import_hidden_in_a_function(tmp_path):
    root = tmp_path / "repsr"
    for package in ("low", "high"):
        (root / package).mkdir(parents=True)
        (root / package / "__init__.py").write_text("")
    (root / "__init__.py").write_text("")
    (root / "low" / "a.py").write_text("def late():\n    from repsr.high.b import x\n")
    (root / "high" / "b.py").write_text("from repsr.low import a\nx = 1\n")
    graph = import_graph(tmp_path, "repsr")
    assert violations(graph, ("low", "high")) == ["repsr.low.a (line 2) -> repsr.high.b: low is below high"]
    assert violations(graph, ("high", "low")) == ["repsr.high.b (line 1) -> repsr.low.a: high is below low"]


# Import name -> distribution (pyproject.toml); pnnx is installed by `make install` with --no-deps (its
# unpinned torch dependency would pull a CUDA build), so it is declared in the Makefile, not here.
DISTRIBUTIONS = {"PIL": "pillow", "yaml": "pyyaml", "skimage": "scikit-image", "ncnn": "ncnn", "av": "av"}
NOT_IN_PYPROJECT = {"pnnx"}


def test_every_third_party_import_is_a_declared_dependency():
    import ast
    import re
    import sys

    import tomllib

    project = tomllib.loads((SRC.parent / "pyproject.toml").read_text())["project"]
    declared = {re.split(r"[<>=\[ ;]", entry)[0].lower() for entry in project["dependencies"]}
    for extra in project["optional-dependencies"].values():
        declared |= {re.split(r"[<>=\[ ;]", entry)[0].lower() for entry in extra}
    missing = []
    for path in sorted((SRC / "repsr").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                if top in sys.stdlib_module_names or top == "repsr" or top in NOT_IN_PYPROJECT:
                    continue
                if DISTRIBUTIONS.get(top, top).lower() not in declared:
                    missing.append(f"{path.relative_to(SRC)}:{node.lineno} imports {top}")
    assert not missing, "imported but not declared in pyproject.toml:\n" + "\n".join(sorted(set(missing)))
