# All targets create and use the project virtualenv on their own.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
FMNIST := /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz
CHROMIUM := /usr/bin/chromium
SSHD := /usr/sbin/sshd
# Debian's aarch64 cross compiler builds ExecuTorch's native runner for arm64 devices (on an x86_64 host).
CROSS_CXX := $(if $(filter x86_64,$(shell uname -m)),/usr/bin/aarch64-linux-gnu-g++)
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
export PIP_DISABLE_PIP_VERSION_CHECK := 1
# CPU torch comes from PyTorch's CPU wheel index (PyPI's torch is a CUDA build), unless pip already has an
# index or a wheel directory configured (pip.conf, PIP_INDEX_URL, PIP_FIND_LINKS ...): that one wins.
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
PIP_HAS_SOURCE := $(BIN)/pip config list | grep -E '\.(index-url|extra-index-url|find-links)=' >/dev/null

.PHONY: setup setup-run system demo test bench bench-sweep lint standin clean arm-root browser sshd cross

# What running lpmr-edge here needs (the demo, the benchmarks, the stand-in, lint): the virtualenv and Fashion-MNIST.
setup-run: $(STAMP) system

# Everything, with what only the tests use: Chromium, sshd and the aarch64 cross compiler.
setup: setup-run browser sshd cross

# pip installs torch (it knows the configured wheel directory, uv does not) and uv; uv installs the rest of the
# pinned set, downloading and byte-compiling in parallel (pip takes minutes more). uv reads UV_* settings, not
# pip's: if uv cannot be installed or fails, pip installs. Byte-compiling at install matters where
# PYTHONDONTWRITEBYTECODE is set: every process (each export is one) would compile every module it imports again.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP_HAS_SOURCE) || $(BIN)/pip install -q -c constraints.txt torch --index-url $(TORCH_INDEX)
	$(BIN)/pip install -q -c constraints.txt torch
	$(BIN)/pip install -q -c constraints.txt uv \
		&& $(BIN)/uv pip install -q --compile-bytecode --python $(BIN)/python -c constraints.txt -e '.[dev]' \
		|| { echo "uv could not install the pinned set: installing it with pip"; \
		     $(BIN)/pip install -q -c constraints.txt -e '.[dev]'; }
	$(BIN)/python -c "import torch, sys; sys.exit('a CUDA build of torch was installed' if torch.version.cuda else 0)"
	touch $(STAMP)

system: $(FMNIST)

$(FMNIST):
	$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq dataset-fashion-mnist

# Headless Debian chromium: the report tests render report.html in it.
browser: $(CHROMIUM)

$(CHROMIUM):
	$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium

# Debian's OpenSSH server: the SSH device tests start their own on 127.0.0.1 (it is not configured here).
sshd: $(SSHD)

$(SSHD):
	$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq openssh-server

cross: $(CROSS_CXX)

$(CROSS_CXX):
	$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq g++-aarch64-linux-gnu

demo: setup-run
	$(BIN)/lpmr-edge run --model lpmr-tiny-fmnist --target x86 --target arm --out lpmr-results/demo

# pytest-xdist workers, one per logical CPU up to 4, each taking a module's tests (or a shared resource's) at a time
# (tests/conftest.py), slow modules first.
test: setup arm-root
	$(BIN)/pytest -q -n logical --maxprocesses 4 --no-loadscope-reorder

bench: setup-run
	$(BIN)/lpmr-edge bench --model random:ViT-B-32 --target x86 --runtime openvino --runtime executorch --batch 1 --batch 32 \
		--threads 2 --torch --json-out lpmr-results/bench/vit-b-32-x86.json

# Jobs/hour of the local and Ray sweep engines on sweeps/demo.toml, and the share of time outside the runtimes.
bench-sweep: setup-run
	$(BIN)/python scripts/bench_sweep.py sweeps/demo.toml

lint: setup-run
	$(BIN)/ruff check lpmr_edge tests

standin: setup-run
	$(BIN)/lpmr-edge train-standin --model lpmr-tiny-fmnist
	$(BIN)/lpmr-edge train-standin --model lpmr-tiny-fmnist-spurious

# Emulated arm64 device (Debian arm64 root + QEMU 10) in ${LPMR_EDGE_ARM_ROOT:-~/.cache/lpmr-edge/arm64-root};
# needs root, like the tests that use it.
arm-root:
	bash scripts/build-arm64-root.sh

clean:
	rm -rf $(VENV) lpmr-results
