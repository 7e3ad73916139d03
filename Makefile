# Each target sets itself up: a fresh clone needs only Python 3.11+ and pip.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/erase demo --out runs/demo

test: $(STAMP)
	$(PY) -m pytest tests

# The two CPU benchmarks with a section in BENCHMARKS.md, at their defaults (bench/README.md; the steps
# benchmark alone took 33 min on 2 cores). They print their tables and redraw assets/steps_to_forget.png;
# `make bench BENCH_FLAGS=--write-benchmarks` also rewrites their sections of BENCHMARKS.md.
BENCH_FLAGS ?=
bench: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) bench/overhead.py $(BENCH_FLAGS)
	OMP_NUM_THREADS=1 $(PY) bench/steps_to_forget.py $(BENCH_FLAGS)

clean:
	rm -rf runs .pytest_cache
