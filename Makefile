VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install test lint demo bench clean

install: $(VENV)/.installed

# torch==2.13.0 is installed first when missing: an unpinned torch would pull a multi-GB CUDA build.
# pnnx (the ncnn converter) declares an unpinned torch dependency, so it is installed without deps.
$(VENV)/.installed: pyproject.toml src/repsr/kernels/fused.c
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install torch==2.13.0
	$(PY) -m pip install -e '.[dev,onnx,video,ncnn]'
	$(PY) -m pip install --no-deps pnnx
	$(PY) -m repsr.kernels  # the fused CPU kernel; without a compiler it says so and torch runs
	@# the browser tests of `repsr app` drive Debian's Chromium through Playwright (no browser download)
	@if command -v chromium >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		{ apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; } \
		|| echo "make install: apt-get install chromium failed: the browser tests will skip"; \
	else echo "make install: no chromium and not root (apt-get install chromium): the browser tests will skip"; fi
	touch $@

lint: install
	$(VENV)/bin/ruff check src tests benchmarks scripts

test: lint
	$(PY) -m pytest -q

demo: install
	$(VENV)/bin/repsr demo

bench: install
	$(PY) benchmarks/run.py

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
