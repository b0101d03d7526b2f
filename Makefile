# Every target does its own set-up on a fresh machine: it creates .venv and installs what it needs.
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
CLI    := $(VENV)/bin/poke-rl
SYSPY  ?= python3
# torch is installed first and alone: a loose requirement resolved first pulls a multi-GB CUDA build.
TORCH  := torch==2.13.0

.PHONY: install demo test bench lint clean showdown

# The local Pokemon Showdown server (poke_rl/showdown/server.py) lives in a git-ignored folder.
# Without npm this target only warns: the tests that need the server then skip, saying why.
SHOWDOWN_VERSION := 0.11.11
SHOWDOWN_DIR     := .showdown
SHOWDOWN_PKG     := $(SHOWDOWN_DIR)/node_modules/pokemon-showdown
SHOWDOWN_STAMP   := $(SHOWDOWN_DIR)/.installed-$(SHOWDOWN_VERSION)

$(VENV)/.installed-dev: pyproject.toml
	test -x $(PY) || $(SYSPY) -m venv $(VENV)
	$(PIP) install -q $(TORCH)
	$(PIP) install -q -e '.[dev,onnx,ray]'
	touch $@

$(VENV)/.installed-bench: $(VENV)/.installed-dev
	$(PIP) install -q -e '.[dev,onnx,ray,bench]'
	touch $@

install: $(VENV)/.installed-dev

$(SHOWDOWN_STAMP):
	@if ! command -v npm >/dev/null 2>&1; then \
	  echo "warning: npm not found: the local Showdown server is not installed (server tests skip)"; \
	else \
	  npm install --omit=optional --no-audit --no-fund --prefix $(SHOWDOWN_DIR) \
	    pokemon-showdown@$(SHOWDOWN_VERSION) && \
	  mkdir -p $(SHOWDOWN_PKG)/logs/repl $(SHOWDOWN_PKG)/config/chat-plugins && \
	  echo "exports.bindaddress = '127.0.0.1';" > $(SHOWDOWN_PKG)/config/config.js && \
	  touch $@; \
	fi

showdown: $(SHOWDOWN_STAMP)

demo: $(VENV)/.installed-dev showdown
	$(PY) pipelines/demo.py

test: $(VENV)/.installed-dev showdown
	$(PY) -m pytest

bench: $(VENV)/.installed-bench
	$(PY) -m pipelines.bench

lint: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check poke_rl pipelines tests

clean:
	rm -rf shards/demo runs/demo
