"""Process settings belong to entry points: `import repsr` changes nothing, the CLI sets OMP_WAIT_POLICY
before torch is loaded, and an explicit choice in the environment wins."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _python(code: str, **env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    clean["PYTHONPATH"] = SRC
    result = subprocess.run(
        [sys.executable, "-c", code], env={**clean, **env}, capture_output=True, text=True, check=True
    )
    return result.stdout.strip()


def test_import_repsr_sets_nothing_and_loads_no_torch():
    code = (
        "import os, sys, repsr, repsr.cli; print(os.environ.get('OMP_WAIT_POLICY'), 'torch' in sys.modules)"
    )
    assert _python(code) == "None False"


def test_the_cli_entry_point_sets_passive_before_torch_is_imported():
    code = (
        "import os, sys, repsr.util.runtime as r\n"
        "import repsr.cli\n"
        "seen = []\n"
        "real = r.use_passive_omp_wait\n"
        "def spy():\n"
        "    seen.append('torch' in sys.modules)\n"
        "    return real()\n"
        "repsr.cli.use_passive_omp_wait = spy\n"
        "try:\n"
        "    repsr.cli.main(['upscale', '--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(os.environ['OMP_WAIT_POLICY'], seen, 'torch' in sys.modules, file=sys.stderr)\n"
        "sys.stderr.flush(); os._exit(0)"
    )
    clean = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    result = subprocess.run(
        [sys.executable, "-c", code], env={**clean, "PYTHONPATH": SRC}, capture_output=True, text=True
    )
    assert result.stderr.strip().splitlines()[-1] == "PASSIVE [False] True"


def test_an_explicit_policy_in_the_environment_wins():
    code = (
        "from repsr.util.runtime import use_passive_omp_wait as u; import os; "
        "print(u(), os.environ['OMP_WAIT_POLICY'])"
    )
    assert _python(code, OMP_WAIT_POLICY="ACTIVE") == "True ACTIVE"


def test_public_names_still_load_from_the_package():
    import repsr

    assert callable(repsr.build_model) and callable(repsr.load_model)
    assert repsr.image.metrics.__name__ == "repsr.image.metrics"
    from repsr import PlainSR, imresize

    assert PlainSR.__name__ == "PlainSR" and callable(imresize)
