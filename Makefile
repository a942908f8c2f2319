# saddle_torch — `make demo` runs the main job, `make test` the whole test suite, both from a fresh clone.
PYTHON ?= python3
NPROC ?= 4
BUILD := build
CORE_BUILD := $(BUILD)/core
STAMP := $(BUILD)/.installed
NATIVE_SOURCES := $(shell find csrc -name '*.cpp' -o -name '*.h') setup.py
export OMP_NUM_THREADS ?= 1

.PHONY: all install deps native core-test py-test test demo demo-digits bench bench-cluster study study-ablation fuzz lint format clean

all: install

# System and Python dependencies (idempotent; apt only when GoogleTest is missing).
deps:
	@if ! [ -f /usr/include/gtest/gtest.h ] || ! command -v cmake >/dev/null || ! command -v ninja >/dev/null; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] && echo "" || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq libgtest-dev cmake ninja-build; fi
	$(PYTHON) -m pip install -q -r requirements-dev.txt

# The extension saddle_torch._C, rebuilt when a native source changes.
$(STAMP): $(NATIVE_SOURCES)
	$(MAKE) deps
	MAX_JOBS=2 $(PYTHON) -m pip install -q --no-build-isolation --no-deps -e .
	@mkdir -p $(BUILD) && touch $@

install: $(STAMP)

native: install

core-test:
	cmake -S . -B $(CORE_BUILD) -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
	cmake --build $(CORE_BUILD) -j 2
	$(CORE_BUILD)/saddle_core_tests --gtest_brief=1
	$(CORE_BUILD)/decode_fuzz_smoke 5000

py-test: install
	$(PYTHON) -m pytest -q tests/unit tests/distributed

test: install core-test py-test

# The demo: Fashion-MNIST (Debian's dataset-fashion-mnist) split over 8 ranks on a ring by Dirichlet
# α = 0.01, trained by dsgd, qgm, q-saddle and q-saddle with int8 gossip (about 4.5 minutes on 2 cores);
# demo-digits: the same four on scikit-learn's digits, 4 ranks (quicker). NPROC=… on the command line
# sets the ranks, DEMO_ARGS=… adds flags (e.g. "--seed 1"). Table and plot: runs/demo/.
DEMO_NPROC = $(if $(filter-out file default,$(origin NPROC)),--nproc $(NPROC))
demo: install
	@[ -d $(FMNIST) ] || { apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; }
	$(PYTHON) examples/demo.py $(DEMO_NPROC) $(DEMO_ARGS)

demo-digits: install
	$(PYTHON) examples/demo.py --dataset digits --out runs/demo-digits $(DEMO_NPROC) $(DEMO_ARGS)

bench: install
	$(PYTHON) bench/gossip.py
	$(PYTHON) bench/step.py

# DDP (+ SAM, fp16, PowerSGD) against gossip on an emulated 8-rank cluster: network namespaces, links
# shaped with tc tbf (needs root; about 35 minutes). Results: runs/cluster/results.md, tta.png.
# The emulated cluster (root, ip, tc: network namespaces and tbf links; about 40 minutes on 2 cores).
bench-cluster: install
	$(PYTHON) bench/cluster.py --out runs/cluster
	$(PYTHON) bench/straggler.py --out runs/straggler

# The learning-quality study (Fashion-MNIST from Debian's dataset-fashion-mnist; about 85 minutes on
# 2 cores) and its ρ / order ablation (about 10 minutes). Results: docs/RESULTS.md.
FMNIST := /usr/share/datasets/fashion-mnist
study: install
	@[ -d $(FMNIST) ] || { apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; }
	$(PYTHON) bench/study.py

study-ablation: install
	@[ -d $(FMNIST) ] || { apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; }
	$(PYTHON) bench/study.py --alphas 0.01 --seeds 0 --out runs/ablation \
	  --configs "q-saddle+rho=0.02,q-saddle+rho=0.1,q-saddle+order=awc"

# Longer decoder fuzzing on demand (libFuzzer + ASan/UBSan; see tests/fuzz/README.md).
fuzz:
	command -v clang++ >/dev/null || apt-get install -y -qq clang
	CXX=clang++ cmake -S . -B $(BUILD)/fuzz -G Ninja -DCMAKE_BUILD_TYPE=Release -DSADDLE_BUILD_FUZZ=ON >/dev/null
	cmake --build $(BUILD)/fuzz -j 2 --target decode_fuzz decode_fuzz_asan
	mkdir -p $(BUILD)/fuzz/corpus && $(BUILD)/fuzz/decode_fuzz_asan --seed-corpus $(BUILD)/fuzz/corpus 300
	$(BUILD)/fuzz/decode_fuzz -max_total_time=$${FUZZ_SECONDS:-600} -max_len=8192 $(BUILD)/fuzz/corpus

lint:
	$(PYTHON) -m ruff check saddle_torch tests bench examples
	$(PYTHON) -m ruff format --check saddle_torch tests bench examples

format:
	$(PYTHON) -m ruff format saddle_torch tests bench examples
	$(PYTHON) -m ruff check --fix saddle_torch tests bench examples
	clang-format -i $$(find csrc tests/cpp -name '*.cpp' -o -name '*.h')

clean:
	rm -rf $(BUILD) saddle_torch/*.so *.egg-info
