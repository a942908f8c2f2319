"""An extension that does not load says why: never built, built for another torch, or the loader's reason."""

from __future__ import annotations

import saddle_torch._native as native

LOADER = ImportError("_C.so: undefined symbol: _ZNK4c10d7Backend15incref_pyobjectEv")


def test_never_built_says_how_to_build() -> None:
    err = native.extension_error(LOADER, "2.13.0+cpu", built=None)
    assert "not built" in str(err) and "make install" in str(err)


def test_built_against_another_torch_names_both_versions_and_the_fix() -> None:
    err = str(native.extension_error(LOADER, "2.13.0+cpu", built="2.14.1+cu128"))
    assert "compiled against torch 2.14.1+cu128" in err and "runs torch 2.13.0+cpu" in err
    assert native.REBUILD in err and "undefined symbol" in err  # the loader's own words are kept
    assert "not built" not in err


def test_built_against_this_torch_passes_the_loader_reason_on() -> None:
    err = str(native.extension_error(LOADER, "2.13.0+cpu", built="2.13.0+cpu"))
    assert "compiled against this torch, 2.13.0+cpu" in err and "undefined symbol" in err


def test_this_build_records_the_torch_it_runs() -> None:
    import torch

    import saddle_torch  # noqa: F401 - the extension loaded

    assert native.built_against() == torch.__version__
