"""The module graph: no import cycle between repsr's modules, counting every import (module level,
inside functions, and `if TYPE_CHECKING:` blocks), so no function-level import can hide one."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.helpers.graph import describe, find_cycle, import_graph

SRC = Path(__file__).resolve().parent.parent / "src"


def test_repsr_has_no_import_cycle():
    graph = import_graph(SRC, "repsr")
    assert len(graph) > 50 and "repsr.training.trainer" in graph["repsr.training"]
    cycle = find_cycle(graph)
    assert cycle is None, f"import cycle: {describe(cycle, graph)}"


def test_the_checker_finds_a_cycle_hidden_in_a_function(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from pkg import b\n")
    (package / "b.py").write_text("import typing\n\ndef late():\n    from pkg.c import x\n")
    (package / "c.py").write_text("import typing\nif typing.TYPE_CHECKING:\n    from pkg.a import y\n")
    graph = import_graph(tmp_path, "pkg")
    assert find_cycle(graph) == ["pkg.a", "pkg.b", "pkg.c", "pkg.a"]
    assert "pkg.b (line 4)" in describe(find_cycle(graph), graph)
    (package / "c.py").write_text("x = 1\n")
    assert find_cycle(import_graph(tmp_path, "pkg")) is None


def test_import_repsr_stays_cheap():
    """`import repsr` loads no torch; the package's names load on first use."""
    code = (
        "import sys, repsr; print('torch' in sys.modules); repsr.build_model; print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "True"]
