# Two commands from a fresh clone (Python >= 3.10 and pip): `make demo` and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch/torchvision pinned to the builds this project is tested with; pip takes them from the local
# wheel cache where one exists (see README "Install").
TORCH ?= torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.installed

.PHONY: demo test test-all setup clean bench-fmnist bench-cifar bench-cifar-wrn bench-throughput gpu-check

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check $(TORCH)
	$(BIN)/pip install -q --disable-pip-version-check -e '.[test,robustness,export,logging,heif]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/noisystudent demo

test: $(STAMP)
	$(BIN)/python -m pytest

test-all: $(STAMP)
	$(BIN)/python -m pytest -m ''

bench-fmnist: $(STAMP)        # 3 seeds x (teacher 5,500 steps; noisy, no-noise, supervised students from it, 2,750 each): 26-49 min on 2 Intel Xeon cores, as the instance's speed (printed first)
	$(BIN)/python benchmarks/accuracy.py fashion-mnist-1k --seeds 3 --jobs 3

CIFAR_TAR ?= ../shared/data/cifar10-jpeg.tar.gz
data/cifar10/train:           # the JPEG tree the CIFAR configs read
	mkdir -p data/cifar10 && tar xzf $(CIFAR_TAR) -C data/cifar10

bench-cifar: $(STAMP) data/cifar10/train   # the fast CIFAR-10-4000 recipe (ns_air, one round): loop 30-53 min on 2 cores, + ~1 h for its 2 variants; PFLOP printed
	$(BIN)/python benchmarks/accuracy.py cifar10-4k-fast

bench-cifar-wrn: $(STAMP) data/cifar10/train   # the standard-architecture comparison: WRN-28-2 student, ~2 h on 2 cores
	$(BIN)/python benchmarks/accuracy.py cifar10-4k --ablations none

gpu-check: $(STAMP)           # on a GPU machine, ~9 min (PARTS="tests throughput" for ~2)
	bash benchmarks/gpu_check.sh

bench-throughput: $(STAMP)
	$(BIN)/python benchmarks/throughput.py

clean:
	rm -rf runs .pytest_cache
