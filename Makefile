# saddle_torch — `make demo` runs the main job, `make test` the whole test suite, both from a fresh clone.
PYTHON ?= python3
NPROC ?= 4
BUILD := build
CORE_BUILD := $(BUILD)/core
STAMP := $(BUILD)/.installed
NATIVE_SOURCES := $(shell find csrc -name '*.cpp' -o -name '*.h') setup.py
export OMP_NUM_THREADS ?= 1

.PHONY: all install deps native core-test py-test test test-quick install-check demo demo-digits bench bench-cluster study study-rho-val study-ablation chaos fuzz lint format clean

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
	PYTHON=$(PYTHON) bash buildtools/check_cuda_ops.sh

# The elastic tests train Fashion-MNIST (Debian's dataset-fashion-mnist, about 30 MB).
py-test: install
	@[ -d $(FMNIST) ] || { SUDO=$$( [ "$$(id -u)" = 0 ] && echo "" || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq dataset-fashion-mnist; }
	$(PYTHON) -m pytest -q tests/unit tests/distributed

test: install core-test py-test

# The inner loop (under 2 minutes once built): the C++ core, the unit tests, and one multi-process check
# (real ranks over Gloo: a gossip round against the dense W·X). CI runs the whole suite (make test).
test-quick: install core-test
	$(PYTHON) -m pytest -q tests/unit "tests/distributed/test_gossip.py::test_one_round_equals_dense_WX"

# pip install as a user does it, in fresh virtual environments (python -m build, the wheel elsewhere,
# README's training block under torchrun); about 5 minutes (one compile). CI runs it after make test.
install-check:
	bash .ci/clean_venv.sh

# The demo: Fashion-MNIST (Debian's dataset-fashion-mnist) split over 8 ranks on a ring by Dirichlet
# α = 0.01, trained by dsgd, qgm, q-saddle and q-saddle with int8 gossip, 400 gradient evaluations per
# rank each (about 4 minutes on 2 cores after the build);
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

# The learning-quality study (docs/RESULTS.md): Fashion-MNIST from Debian's dataset-fashion-mnist, a
# 2,000-sample stratified subset that an MLP fits to ≥ 99% (the regime where sharpness can matter),
# 8 ranks on a ring, step decay, 3 seeds × 2 α × 11 configurations (about 3 minutes per run on 2 cores:
# several sessions; it resumes from the log.json files committed under docs/study/), then the ρ sweep.
FMNIST := /usr/share/datasets/fashion-mnist
STUDY_FLAGS := --seeds 0,1,2 --alphas 0.1,0.01 --schedule step --train-subset 2000 --model mlp \
  --width 256 --epochs 120 --eval-every 100 --out docs/study/fmnist-mlp
STUDY_CONFIGS := dsgd,qgm,sam-dsgd,q-saddle,ngm,n-saddle,n-saddle+cross_sam=off,q-saddle@fp16,q-saddle@int8,n-saddle@fp16,n-saddle@int8
RHO_CONFIGS := q-saddle+rho=0.01,q-saddle+rho=0.1,q-saddle+rho=0.2,n-saddle+rho=0.01,n-saddle+rho=0.1,n-saddle+rho=0.2
study: install
	@[ -d $(FMNIST) ] || { apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; }
	$(PYTHON) bench/study.py $(STUDY_FLAGS) --configs "$(STUDY_CONFIGS)" --report docs/study/fmnist-mlp/main.md
	$(PYTHON) bench/study.py $(STUDY_FLAGS) --configs "q-saddle,n-saddle,$(RHO_CONFIGS)" \
	  --report docs/study/fmnist-mlp/rho.md
	$(MAKE) study-rho-val

# ρ chosen on a validation split (issue 29): 5,000 training images outside the 2,000-image subset, so
# the training data are the main study's; qgm and ngm are its runs (docs/study/fmnist-mlp-val holds
# copies of their logs). Resumes from the committed logs.
VAL_FLAGS := --seeds 0,1,2 --alphas 0.1,0.01 --schedule step --train-subset 2000 --model mlp --width 256 \
  --epochs 120 --eval-every 470 --val-size 5000 --sharpness-samples 0 --out docs/study/fmnist-mlp-val
study-rho-val: install
	@[ -d $(FMNIST) ] || { apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; }
	$(PYTHON) bench/study.py $(VAL_FLAGS) \
	  --configs "qgm,ngm,q-saddle,n-saddle,q-saddle+rho=0.1,q-saddle+rho=0.2,n-saddle+rho=0.1,n-saddle+rho=0.2" \
	  --report docs/study/fmnist-mlp-val/rho_val.md

study-ablation: install
	@[ -d $(FMNIST) ] || { apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; }
	$(PYTHON) bench/study.py --alphas 0.01 --seeds 0 --out runs/ablation \
	  --configs "q-saddle+rho=0.02,q-saddle+rho=0.1,q-saddle+order=awc"

# The chaos harness (issue 30, item 1; bench/chaos.py): 8 ranks on Fashion-MNIST under two launchers on
# 127.0.0.1 with --restarts, faults at random times (MTBF 35 s): SIGKILL, SIGSTOP past the timeout, a kill
# during set-up, a kill of a joiner being admitted, two kills within one timeout window, node 1's launcher
# killed. q-saddle + int8 on one_peer_exponential with AdamW, n-saddle + int8 on a ring, allreduce (3 jobs
# of 3,000 steps each) and the DDP gossip hook (4 of 1,500: it admits no joiners, so each job loses ranks);
# about an hour on 2 cores. Fails on a hang, a fault not survived, an averaged model more than 1 point
# below the uninterrupted run, fewer than 40 faults or any kind survived fewer than 5 times. Report:
# runs/chaos/report.md (+ report.json, per-job logs); CHAOS_ARGS=... adds flags (e.g. "--seed 1").
CHAOS_CONFIGS := q-saddle-int8-ope-adamw@3x3000,n-saddle-int8-ring@3x3000,allreduce@3x3000,ddp-hook@4x1500
chaos: install
	@[ -d $(FMNIST) ] || { SUDO=$$( [ "$$(id -u)" = 0 ] && echo "" || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq dataset-fashion-mnist; }
	$(PYTHON) bench/chaos.py --configs "$(CHAOS_CONFIGS)" --mtbf 35 --min-gap 15 --require-faults 40 \
	  --require-each 5 --out runs/chaos $(CHAOS_ARGS)

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
