"""Offline data sets for the examples, as in-memory ``TensorDataset``s.

``digits``: scikit-learn's 8×8 digits (ships with scikit-learn), a fixed seeded 80/20 split.
``fashion-mnist``: the idx files of Debian's ``dataset-fashion-mnist`` (or any directory holding them).
``cifar10``: the ``cifar-10-batches-py`` pickles of the CIFAR-10 release, read directly (no torchvision);
torchvision downloads them only when asked (``--download``).
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import TensorDataset

DATASETS = ("digits", "fashion-mnist", "cifar10")
DEFAULT_DIRS = {"fashion-mnist": "/usr/share/datasets/fashion-mnist", "cifar10": "data/cifar10"}

_DIGITS_SPLIT_SEED = 0  # the train/test split never moves with the training seed
_FMNIST_MEAN, _FMNIST_STD = 0.2860, 0.3530
_CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
_CIFAR_STD = (0.2470, 0.2435, 0.2616)
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class Loaded(NamedTuple):
    """A loaded data set: unpacks as ``train, test, num_classes, input_shape``."""

    train: TensorDataset
    test: TensorDataset
    num_classes: int
    input_shape: tuple[int, ...]


def load(name: str, data_dir: str | os.PathLike | None = None, download: bool = False) -> Loaded:
    """Load one of :data:`DATASETS` (inputs float32 ``N×C×H×W``, labels int64).

    Args:
        name: ``"digits"``, ``"fashion-mnist"`` or ``"cifar10"``.
        data_dir: where the files are (default: :data:`DEFAULT_DIRS`; unused by ``digits``).
        download: CIFAR-10 only: fetch it into ``data_dir`` when missing (needs the network).

    Returns:
        ``(train, test, num_classes, input_shape)``.

    Raises:
        ValueError: an unknown name.
        FileNotFoundError: the files are not in ``data_dir`` (the message says what provides them).
        ModuleNotFoundError: CIFAR-10 without torchvision installed.
    """
    if name == "digits":
        return load_digits()
    if name == "fashion-mnist":
        return load_fashion_mnist(data_dir or DEFAULT_DIRS[name])
    if name == "cifar10":
        return load_cifar10(data_dir or DEFAULT_DIRS[name], download)
    raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")


def load_digits(test_fraction: float = 0.2) -> Loaded:
    """scikit-learn's 1,797 8×8 digits scaled to [0, 1], split 80/20 with a fixed seed."""
    try:
        from sklearn.datasets import load_digits as sk_load_digits
    except ModuleNotFoundError as e:
        raise ModuleNotFoundError("the digits data set needs scikit-learn: pip install scikit-learn") from e
    bunch = sk_load_digits()
    x = torch.from_numpy(bunch.images.astype(np.float32) / 16.0).unsqueeze(1)
    y = torch.from_numpy(bunch.target.astype(np.int64))
    order = torch.from_numpy(np.random.default_rng(_DIGITS_SPLIT_SEED).permutation(len(y)))
    n_test = round(test_fraction * len(y))
    test, train = order[:n_test], order[n_test:]
    return Loaded(TensorDataset(x[train], y[train]), TensorDataset(x[test], y[test]), 10, (1, 8, 8))


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an idx file (the MNIST format), gzipped or not.

    Raises:
        ValueError: the file is not an idx file or is truncated.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an idx file (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int(d) for d in np.frombuffer(raw[4:header], dtype=">u4"))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    count = int(np.prod(shape)) if shape else 1
    if len(raw) - header < count * dtype.itemsize:
        raise ValueError(f"{path} is truncated: shape {shape} needs {count * dtype.itemsize} bytes of data")
    return np.frombuffer(raw, dtype=dtype, count=count, offset=header).reshape(shape)


def _find_idx(directory: Path, stem: str) -> Path:
    for candidate in (directory / f"{stem}.gz", directory / stem):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"Fashion-MNIST file {stem}[.gz] not found in {directory}: install the Debian package "
        "dataset-fashion-mnist (apt-get install dataset-fashion-mnist, files in "
        f"{DEFAULT_DIRS['fashion-mnist']}) or pass --data-dir pointing to the directory with the idx files"
    )


def load_fashion_mnist(data_dir: str | os.PathLike) -> Loaded:
    """Fashion-MNIST (60,000 train, 10,000 test 28×28 images), normalised with the usual mean and std.

    Raises:
        FileNotFoundError: an idx file is missing from ``data_dir``.
    """
    directory = Path(data_dir)

    def split(prefix: str) -> TensorDataset:
        images = read_idx(_find_idx(directory, f"{prefix}-images-idx3-ubyte"))
        labels = read_idx(_find_idx(directory, f"{prefix}-labels-idx1-ubyte"))
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise ValueError(
                f"{directory}: {prefix} images {images.shape} and labels {labels.shape} do not match"
            )
        x = (torch.from_numpy(images.astype(np.float32) / 255.0) - _FMNIST_MEAN) / _FMNIST_STD
        return TensorDataset(x.unsqueeze(1), torch.from_numpy(labels.astype(np.int64)))

    return Loaded(split("train"), split("t10k"), 10, (1, 28, 28))


CIFAR10_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST_FILE = "test_batch"


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One pickle of ``cifar-10-batches-py``: images ``N×3×32×32`` uint8 and labels int64."""
    import pickle

    with open(path, "rb") as f:
        batch = pickle.load(f, encoding="bytes")  # noqa: S301 - the data set's own format, a local file
    try:
        data, labels = batch[b"data"], batch[b"labels"]
    except (KeyError, TypeError) as e:
        raise ValueError(f"{path} is not a CIFAR-10 batch (no b'data' / b'labels')") from e
    data = np.asarray(data, dtype=np.uint8)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(labels) != len(data):
        raise ValueError(f"{path}: expected N×3072 images and N labels, got {data.shape} and {len(labels)}")
    return data.reshape(-1, 3, 32, 32), np.asarray(labels, dtype=np.int64)


def load_cifar10(data_dir: str | os.PathLike, download: bool = False) -> Loaded:
    """CIFAR-10 from a local ``cifar-10-batches-py`` directory, normalised per channel (no augmentation).

    ``data_dir`` may be that directory or its parent. With ``download`` and the files missing,
    torchvision fetches the release into ``data_dir`` first (the only step that needs the network).

    Raises:
        FileNotFoundError: the files are missing and ``download`` is false.
        ValueError: a file that is not a CIFAR-10 batch, or labels outside 0..9.
    """
    root = Path(data_dir)
    folder = root if (root / CIFAR10_TEST_FILE).exists() else root / "cifar-10-batches-py"
    needed = [folder / f for f in (*CIFAR10_TRAIN_FILES, CIFAR10_TEST_FILE)]
    if download and not all(p.exists() for p in needed):
        _download_cifar10(root)
        folder = root / "cifar-10-batches-py"
        needed = [folder / f for f in (*CIFAR10_TRAIN_FILES, CIFAR10_TEST_FILE)]
    missing = [p.name for p in needed if not p.exists()]
    if missing:
        raise FileNotFoundError(
            f"CIFAR-10 not found in {folder}: missing {', '.join(missing)}. Pass --data-dir pointing to the "
            "directory that holds cifar-10-batches-py (the python version of the release), or --download "
            "(needs the network and torchvision)"
        )
    mean = torch.tensor(_CIFAR_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(_CIFAR_STD).view(1, 3, 1, 1)

    def tensors(files: list[Path]) -> TensorDataset:
        parts = [_read_cifar_batch(p) for p in files]
        x = torch.from_numpy(np.concatenate([p[0] for p in parts])).float().div_(255.0)
        y = torch.from_numpy(np.concatenate([p[1] for p in parts]))
        if len(y) and (int(y.min()) < 0 or int(y.max()) > 9):
            raise ValueError(f"CIFAR-10 labels must lie in 0..9, found {int(y.min())}..{int(y.max())}")
        return TensorDataset((x - mean) / std, y)

    return Loaded(tensors(needed[:-1]), tensors(needed[-1:]), 10, (3, 32, 32))


def _download_cifar10(root: Path) -> None:
    try:
        import torchvision
    except ModuleNotFoundError as e:
        raise ModuleNotFoundError(
            "--download fetches CIFAR-10 with torchvision: pip install torchvision (the build matching your "
            "torch), or download cifar-10-python.tar.gz yourself and unpack it into --data-dir"
        ) from e
    torchvision.datasets.CIFAR10(str(root), train=True, download=True)
