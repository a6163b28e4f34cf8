# All targets create and use the project virtualenv on their own.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
FMNIST := /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: setup system demo test test-fast bench lint standin clean

setup: $(STAMP) system

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	$(BIN)/python -c "import torch, sys; sys.exit('a CUDA build of torch was installed' if torch.version.cuda else 0)"
	touch $(STAMP)

system: $(FMNIST)

$(FMNIST):
	$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq dataset-fashion-mnist

demo: setup
	$(BIN)/lpmr-edge eval --model lpmr-tiny-fmnist --runtime torch --out lpmr-results/demo/torch-fp32

test: setup
	$(BIN)/pytest -q

bench: setup
	$(BIN)/lpmr-edge eval --model random:ViT-B-32 --runtime torch --limit 64

lint: setup
	$(BIN)/ruff check lpmr_edge tests

standin: setup
	$(BIN)/lpmr-edge train-standin

clean:
	rm -rf $(VENV) lpmr-results
