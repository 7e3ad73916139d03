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

clean:
	rm -rf runs .pytest_cache
