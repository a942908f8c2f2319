#!/usr/bin/env bash
# Compiles (syntax only) the CUDA kernels of torch.ops.saddle (csrc/torch/cuda/*.cpp) against the
# installed torch's headers, wherever a CUDA toolkit is found: the extension builds them only when
# torch has CUDA, so without this a CPU-only CI would never see them compile. A CPU torch wheel ships
# c10/cuda's headers but not the header its CMake generates (cuda_cmake_macros.h); an empty one stands in.
set -euo pipefail
PYTHON=${PYTHON:-python3}
# torch's own search for the toolkit (CUDA_HOME, nvcc on PATH, /usr/local/cuda)
CUDA_HOME=${CUDA_HOME:-$($PYTHON -c "from torch.utils.cpp_extension import CUDA_HOME; print(CUDA_HOME or '')" 2>/dev/null)}
CUDA_INCLUDE=${CUDA_INCLUDE:-${CUDA_HOME:-/usr/local/cuda}/include}
if [ ! -f "$CUDA_INCLUDE/cuda_runtime_api.h" ]; then
  echo "check_cuda_ops: no CUDA toolkit (nvcc) found: skipped"
  exit 0
fi
TORCH=$($PYTHON -c "import os, torch; print(os.path.dirname(torch.__file__))")
STUB=build/cuda-ops-stub
mkdir -p "$STUB/c10/cuda/impl"
[ -f "$TORCH/include/c10/cuda/impl/cuda_cmake_macros.h" ] || echo "#pragma once" >"$STUB/c10/cuda/impl/cuda_cmake_macros.h"
for src in csrc/torch/cuda/*.cpp; do
  ${CXX:-g++} -std=c++20 -fsyntax-only -Wall -Werror -DSADDLE_WITH_CUDA=1 -I csrc -I "$STUB" -I "$TORCH/include" \
    -I "$TORCH/include/torch/csrc/api/include" -I "$CUDA_INCLUDE" "$src"
  echo "check_cuda_ops: $src compiles"
done
