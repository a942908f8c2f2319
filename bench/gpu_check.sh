#!/usr/bin/env bash
# The GPU check run on a lent device machine (see docs/benchmarks.md, "GPU"): build the extension
# against that machine's torch, build and run the device codecs' tests (csrc/cuda), time ResNet-20 steps
# (bench/gpu_step.py), run the CUDA tests and then the suite. Results land in $OUT (default ./gpu-out).
set -uo pipefail
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
nvidia-smi -L
python3 -c "import sys, torch; print(sys.version.split()[0], torch.__version__, torch.cuda.is_available())"
start=$SECONDS
# The image's default CXX (/opt/gcc/bin/g++) links libstdc++ statically: setup.py refuses that build.
if ! MAX_JOBS=16 CXX=/usr/bin/g++ CC=/usr/bin/gcc timeout 260 python3 -m pip install -q --no-build-isolation --no-deps -e . >"$OUT/build.log" 2>&1; then
  tail -60 "$OUT/build.log"; echo "BUILD FAILED after $((SECONDS - start)) s"; exit 1
fi
echo "built in $((SECONDS - start)) s"
# torch.ops.saddle on CUDA tensors (csrc/torch/cuda/ops_cuda.cpp): the same bits/bytes as on the CPU.
python3 -c "import torch, saddle_torch; print('CUDA kernels registered:', torch._C._dispatch_has_kernel_for_dispatch_key('saddle::sam_perturb', 'CUDA'))"
timeout 90 python3 -m pytest -q -p no:cacheprovider tests/unit/test_ops_dispatch.py 2>&1 | tee "$OUT/ops_test.log" | tail -15
# Device codecs (csrc/cuda, docs/cuda_kernels.md): messages byte-identical to the CPU codecs'.
if timeout 120 cmake -S . -B build/cuda -G Ninja -DCMAKE_BUILD_TYPE=Release >"$OUT/cuda_build.log" 2>&1 \
  && timeout 240 cmake --build build/cuda -j 16 --target saddle_cuda_tests >>"$OUT/cuda_build.log" 2>&1; then
  timeout 120 build/cuda/saddle_cuda_tests 2>&1 | tee "$OUT/cuda_codec_test.log" | tail -15
else
  tail -40 "$OUT/cuda_build.log"; echo "CUDA CODEC BUILD FAILED after $((SECONDS - start)) s"
fi
timeout 150 python3 bench/gpu_step.py --iters 20 --json "$OUT/gpu_step.json" 2>&1 | tee "$OUT/bench.log"
timeout 60 python3 -m pytest -q -p no:cacheprovider tests/distributed/test_cuda.py 2>&1 | tee "$OUT/cuda_test.log" | tail -15
timeout 140 python3 -m pytest -q -p no:cacheprovider -n 14 -p no:benchmark --durations=5 tests/unit tests/distributed 2>&1 \
  | tee "$OUT/suite.log" | tail -40
echo "total $((SECONDS - start)) s"
