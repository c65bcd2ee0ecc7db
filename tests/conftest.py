"""The test run is an entry point: it chooses the process settings a `repsr` command would, and keeps
its fused-kernel builds in a folder of its own (no test reads or writes the user's kernel cache, and
every run tests the kernel built from the source it tests)."""

import os
import shutil
import tempfile

from repsr.util.runtime import use_passive_omp_wait

use_passive_omp_wait()  # before any test module imports torch; see repsr.util.runtime

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from repsr.models.files import save_model  # noqa: E402
from tests.helpers import tiny_plain  # noqa: E402

_KERNEL_CACHE = tempfile.mkdtemp(prefix="repsr-test-kernels-")


def pytest_configure(config: pytest.Config) -> None:
    os.environ["REPSR_KERNEL_CACHE"] = _KERNEL_CACHE  # subprocesses of the tests inherit it


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(_KERNEL_CACHE, ignore_errors=True)


@pytest.fixture
def plain_file(tmp_path: Path) -> Path:
    """A small deployed model saved as safetensors."""
    path = tmp_path / "plain.safetensors"
    save_model(tiny_plain(), path)
    return path


@pytest.fixture
def one_thread():
    """Torch on one thread for the test (restored after): small, many, timing-insensitive runs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
