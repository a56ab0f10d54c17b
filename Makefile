# Each target bootstraps .venv (once) and installs the project into it.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.bench-installed

.PHONY: test demo bench lint typecheck clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# The install compiles the optional accelerator (aioipc/_core/*.c) in place.
$(STAMP): pyproject.toml setup.py $(wildcard aioipc/_core/*.c aioipc/_core/*.h) | $(PY)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

# Accelerated paths run twice: with the accelerator, then in pure Python (AIOIPC_NO_SPEEDUPS=1).
ACCELERATED_TESTS := tests/test_speedups.py tests/test_message_batching.py tests/test_sockets.py tests/test_sockets_processes.py \
	tests/test_sockets_server.py tests/test_framing.py tests/test_pipes.py tests/test_fifo.py tests/test_unix_fds.py tests/test_ring.py \
	tests/test_mq.py tests/test_sysv_mq.py tests/test_queue_fairness.py tests/test_stream_rules.py tests/test_lines.py

test: $(STAMP)
	$(PY) -m ruff check aioipc tests examples benchmarks
	$(PY) -m mypy
	$(PY) -c "import aioipc._core.speedups as s; print('accelerator:', 'compiled' if s.ACTIVE else 'pure Python')"
	$(PY) -m pytest
	AIOIPC_NO_SPEEDUPS=1 $(PY) -m pytest $(ACCELERATED_TESTS)

demo: $(STAMP)
	$(PY) -m aioipc.demo

$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e '.[test,bench]'
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(PY) benchmarks/run.py

lint: $(STAMP)
	$(PY) -m ruff check aioipc tests examples benchmarks
	$(PY) -m ruff format --check aioipc tests examples benchmarks

typecheck: $(STAMP)
	$(PY) -m mypy

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache build aioipc/_core/*.so
