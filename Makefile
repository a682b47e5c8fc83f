# vitkd: `make demo` trains the offline demo, `make test` runs the test suite. Both create .venv on first use.
# torch/torchvision are pinned here (the pair that installs on our CPU machines), not in setup.cfg.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
export HF_HUB_OFFLINE := 1

.PHONY: install install-dev demo demo-downstream test bench-students clean-venv

$(VENV)/.installed-run: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install $(TORCH_PINS)
	$(PY) -m pip install -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed-run
	$(PY) -m pip install -e '.[dev]'
	touch $@

install: $(VENV)/.installed-run

install-dev: $(VENV)/.installed-dev

demo: install
	$(VENV)/bin/vitkd demo

$(VENV)/.installed-downstream: $(VENV)/.installed-run
	$(PY) -m pip install -e '.[downstream]'
	touch $@

demo-downstream: $(VENV)/.installed-downstream
	$(VENV)/bin/vitkd demo downstream

test: install-dev
	$(PY) -m pytest

bench-students: install
	$(PY) benchmarks/students.py --out benchmarks/results/students

clean-venv:
	rm -rf $(VENV)
