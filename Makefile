# Every target does its own set-up on a fresh machine: it creates .venv and installs what it needs.
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
CLI    := $(VENV)/bin/poke-rl
SYSPY  ?= python3
# torch is installed first and alone: a loose requirement resolved first pulls a multi-GB CUDA build.
TORCH  := torch==2.13.0

.PHONY: install demo test bench lint clean

$(VENV)/.installed-dev: pyproject.toml
	test -x $(PY) || $(SYSPY) -m venv $(VENV)
	$(PIP) install -q $(TORCH)
	$(PIP) install -q -e '.[dev]'
	touch $@

$(VENV)/.installed-bench: $(VENV)/.installed-dev
	$(PIP) install -q -e '.[dev,bench]'
	touch $@

install: $(VENV)/.installed-dev

demo: $(VENV)/.installed-dev
	$(PY) pipelines/demo.py

test: $(VENV)/.installed-dev
	$(PY) -m pytest

bench: $(VENV)/.installed-bench
	$(PY) -m pipelines.bench

lint: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check poke_rl pipelines tests

clean:
	rm -rf shards/demo runs/demo
