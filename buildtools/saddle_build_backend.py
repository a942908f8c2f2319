"""PEP 517 build backend: setuptools' own, compiling the extension against the torch the user runs.

``saddle_torch._C`` links against torch's C++ libraries, so it must be compiled against the very torch
it will be imported with. An isolated build (plain ``pip install .``, ``python -m build``) runs in a
fresh environment where, if torch were a build requirement, pip would fetch whichever torch its index
offers — another version than the user's (or a multi-GB CUDA build) — and the result would fail to
import with an undefined symbol. So torch is not a build requirement: every hook here finds the torch
of the interpreter that runs the build (the user's environment, outside pip's isolation) and compiles
against it. Without a torch there, the build stops with the commands that work.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from typing import Any

from setuptools import build_meta as _setuptools

_PROBE = "import os, torch; print(torch.__version__); print(os.path.dirname(os.path.dirname(torch.__file__)))"


def _interpreters() -> list[str]:
    """Pythons that may be the user's: this one, then those that started this build (nearest first).

    ``pip install .`` runs the hooks with the user's interpreter (its isolation is only ``sys.path``);
    ``python -m build`` runs them in a virtual environment of its own, started by the user's
    interpreter, which Linux's /proc names (argv[0], resolved against that process's cwd and PATH).
    """
    found = [sys.executable]
    pid = os.getppid()
    for _ in range(6):  # the frontend, its own launcher, a shell, make ...
        proc = f"/proc/{pid}"
        try:
            argv0 = open(f"{proc}/cmdline", "rb").read().split(b"\0")[0].decode()
            environ = dict(
                item.split("=", 1)
                for item in open(f"{proc}/environ", "rb").read().decode(errors="replace").split("\0")
                if "=" in item
            )
            cwd = os.readlink(f"{proc}/cwd")
            parent = int(open(f"{proc}/stat").read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
        if os.path.basename(argv0).startswith("python"):
            if os.sep in argv0:
                path = os.path.join(cwd, argv0)
            else:
                path = shutil.which(argv0, path=environ.get("PATH", "")) or ""
            if path and path not in found:
                found.append(path)
        if parent <= 1:
            break
        pid = parent
    return found


def _user_torch() -> tuple[str, str] | None:
    """(version, site directory) of the torch the user's interpreter sees outside build isolation."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONNOUSERSITE")}
    for python in _interpreters():
        probe = subprocess.run([python, "-c", _PROBE], env=env, capture_output=True, text=True)
        if probe.returncode == 0:
            version, site = probe.stdout.split()[-2:]
            return version, site
    return None


def _with_torch() -> None:
    """Make the user's torch importable in this (possibly isolated) build process."""
    try:
        import torch  # noqa: F401 - already importable: a --no-build-isolation build
    except ImportError:
        found = _user_torch()
        if found is None:
            raise RuntimeError(
                f"saddle_torch compiles a C++ extension against the torch it will run with, and the "
                f"interpreters building it ({', '.join(_interpreters())}) have no torch. Install torch "
                f"first, then saddle_torch: `pip install torch && pip install .`"
            ) from None
        version, site = found
        sys.path.append(site)  # after the build environment's own packages: only torch is taken from it
        print(f"saddle_torch: compiling against torch {version} from {site}", file=sys.stderr)


def get_requires_for_build_wheel(config_settings: dict[str, Any] | None = None) -> list[str]:
    """The setuptools requirements for a wheel (torch is found, not installed)."""
    _with_torch()
    return _setuptools.get_requires_for_build_wheel(config_settings)


def get_requires_for_build_sdist(config_settings: dict[str, Any] | None = None) -> list[str]:
    """The setuptools requirements for an sdist."""
    _with_torch()
    return _setuptools.get_requires_for_build_sdist(config_settings)


def get_requires_for_build_editable(config_settings: dict[str, Any] | None = None) -> list[str]:
    """The setuptools requirements for an editable install."""
    _with_torch()
    return _setuptools.get_requires_for_build_editable(config_settings)


def prepare_metadata_for_build_wheel(
    metadata_directory: str, config_settings: dict[str, Any] | None = None
) -> str:
    """The wheel's metadata (its torch requirement is the version compiled against)."""
    _with_torch()
    return _setuptools.prepare_metadata_for_build_wheel(metadata_directory, config_settings)


def prepare_metadata_for_build_editable(
    metadata_directory: str, config_settings: dict[str, Any] | None = None
) -> str:
    """The editable install's metadata."""
    _with_torch()
    return _setuptools.prepare_metadata_for_build_editable(metadata_directory, config_settings)


def build_wheel(
    wheel_directory: str, config_settings: dict[str, Any] | None = None, metadata_directory: str | None = None
) -> str:
    """Compile the extension against the user's torch and build the wheel."""
    _with_torch()
    return _setuptools.build_wheel(wheel_directory, config_settings, metadata_directory)


def build_editable(
    wheel_directory: str, config_settings: dict[str, Any] | None = None, metadata_directory: str | None = None
) -> str:
    """Compile the extension in place against the user's torch (``pip install -e .``)."""
    _with_torch()
    return _setuptools.build_editable(wheel_directory, config_settings, metadata_directory)


def build_sdist(sdist_directory: str, config_settings: dict[str, Any] | None = None) -> str:
    """The source distribution (nothing is compiled)."""
    _with_torch()
    return _setuptools.build_sdist(sdist_directory, config_settings)
