"""Why ``saddle_torch._C`` did not load, in words a user can act on."""

from __future__ import annotations

import importlib

REBUILD = "pip install --no-build-isolation --force-reinstall --no-deps ."


def built_against() -> str | None:
    """The torch version the extension was compiled against (``None``: it was never built here)."""
    try:
        return importlib.import_module("saddle_torch._build_info").TORCH_VERSION
    except ImportError:
        return None


def extension_error(exc: ImportError, running: str, built: str | None) -> ImportError:
    """The ImportError to raise when importing ``saddle_torch._C`` raised ``exc`` under torch ``running``.

    ``built``: :func:`built_against`. Three causes are told apart: no build at all; a build against
    another torch (its undefined symbols are the usual sign); a build against this torch that still
    fails (the loader's message).
    """
    if built is None:
        return ImportError(
            "saddle_torch's native extension is not built: in the repository run `make install` (or "
            "`pip install --no-build-isolation -e .`); from a release, `pip install saddle_torch` after torch"
        )
    if built != running:
        return ImportError(
            f"saddle_torch._C was compiled against torch {built}, but this process runs torch {running}: "
            f"rebuild it against this torch (`{REBUILD}` in the source tree, or reinstall the package "
            f"after torch). The loader said: {exc}"
        )
    return ImportError(f"saddle_torch._C (compiled against this torch, {running}) failed to load: {exc}")
