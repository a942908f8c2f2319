"""A 10-class text classification set built offline from the docstrings of Python's standard library.

Where the text comes from: the ``.py`` sources of the running interpreter's standard library
(``sysconfig.get_paths()["stdlib"]``, e.g. ``/root/.pyenv/versions/3.11.7/lib/python3.11``), parsed with
:mod:`ast` (nothing is imported or executed). Every module, class and function docstring of at least
``MIN_WORDS`` words is one sample, its whitespace collapsed; its label is the topic of the top-level
module or package it is written in (:data:`TOPICS`: ``asyncio`` → concurrency, ``tarfile`` → files, ...).
Test suites (``test/``, ``tests/``, ``idle_test/``) and ``site-packages`` are left out; a text that
occurs more than once is kept once, and dropped altogether when its copies carry different labels.

The split is fixed (it depends on ``split_seed``, not on the training seed): every topic is capped at
``per_class`` samples, ``test_per_class`` of them are held out as the test set, the rest is the
training set that :class:`saddle_torch.data.DirichletPartition` splits across ranks. With CPython
3.11.7 and the defaults this gives 4,187 samples (3,687 train, 500 test), on every machine with that
Python.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import random
import re
import sys
import sysconfig
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

MIN_WORDS = 5

# topic -> top-level stdlib modules/packages whose docstrings carry that label
TOPICS: dict[str, tuple[str, ...]] = {
    "gui": tuple("tkinter turtle turtledemo idlelib".split()),
    "internet": tuple(
        "http urllib ftplib imaplib nntplib poplib smtplib ssl socket socketserver xmlrpc "
        "wsgiref ipaddress webbrowser telnetlib".split()
    ),
    "email": tuple("email mailbox mimetypes smtpd mailcap quopri".split()),
    "concurrency": tuple("asyncio multiprocessing threading concurrent queue sched".split()),
    "packaging": tuple(
        "importlib distutils pkgutil zipimport ensurepip venv sysconfig site modulefinder "
        "runpy zipapp".split()
    ),
    "numbers": tuple("_pydecimal decimal fractions statistics numbers random colorsys".split()),
    "testing": tuple(
        "unittest doctest pdb bdb trace cProfile profile pstats timeit tracemalloc traceback".split()
    ),
    "markup": tuple("xml html json csv configparser tomllib plistlib netrc".split()),
    "files": tuple(
        "tarfile zipfile pathlib shutil os _pyio gzip bz2 lzma tempfile glob fnmatch filecmp "
        "fileinput shelve dbm stat genericpath posixpath ntpath".split()
    ),
    "language": tuple(
        "lib2to3 ast typing enum dis tokenize inspect pydoc dataclasses functools abc symtable "
        "pyclbr compileall py_compile code codeop".split()
    ),
}
CLASS_NAMES: tuple[str, ...] = tuple(TOPICS)
_LABEL_OF = {module: k for k, modules in enumerate(TOPICS.values()) for module in modules}
_SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "__pycache__"}


@dataclass(frozen=True)
class TextSplit:
    """The fixed train/test split: parallel lists of texts and integer labels (indices into ``classes``)."""

    train_texts: list[str]
    train_labels: list[int]
    test_texts: list[str]
    test_labels: list[int]
    classes: tuple[str, ...]
    source: str

    def describe(self) -> str:
        """One line: where the text comes from and how many samples each part has."""
        return (
            f"stdlib docstrings from {self.source}: {len(self.classes)} topics, "
            f"{len(self.train_texts)} train / {len(self.test_texts)} test"
        )


def stdlib_dir() -> Path:
    """The running interpreter's standard library source folder."""
    return Path(sysconfig.get_paths()["stdlib"])


def _sources(root: Path) -> list[Path]:
    """The ``.py`` files of the topics' modules and packages under ``root``, sorted."""
    files = []
    for module in sorted(_LABEL_OF):
        if (root / f"{module}.py").is_file():
            files.append(root / f"{module}.py")
        for path in (root / module).rglob("*.py"):
            if not _SKIP_DIRS.intersection(path.relative_to(root).parts):
                files.append(path)
    return sorted(files)


def collect(root: Path | None = None) -> list[tuple[str, int]]:
    """Every usable docstring under ``root`` with its topic label, in a deterministic order.

    Args:
        root: a standard library folder (default: the running interpreter's).

    Returns:
        ``(text, label)`` pairs, each text once.

    Raises:
        FileNotFoundError: ``root`` holds no ``.py`` file of any topic.
    """
    root = stdlib_dir() if root is None else root
    labels: dict[str, set[int]] = {}
    for path in _sources(root):
        label = _LABEL_OF[path.relative_to(root).parts[0].removesuffix(".py")]
        try:
            tree = ast.parse(path.read_text(encoding="utf-8", errors="replace"))
        except SyntaxError:  # lib2to3's test fixtures and the like
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                text = re.sub(r"\s+", " ", doc).strip() if doc else ""
                if len(text.split()) >= MIN_WORDS:
                    labels.setdefault(text, set()).add(label)
    if not labels:
        raise FileNotFoundError(f"no docstrings of the stdlib topics under {root}")
    return [(text, next(iter(ls))) for text, ls in labels.items() if len(ls) == 1]


def collect_cached(root: Path | None = None, cache: Path | None = None) -> list[tuple[str, int]]:
    """:func:`collect`, kept in ``cache`` as JSON (keyed by the folder, Python version and topics).

    Parsing the sources costs seconds of CPU; the file is written atomically, so ranks may race.
    """
    root = stdlib_dir() if root is None else root
    if cache is None:
        return collect(root)
    key = json.dumps([str(root), sys.version, MIN_WORDS, TOPICS, sorted(_SKIP_DIRS)])
    path = Path(cache) / f"stdlib-docstrings-{hashlib.sha1(key.encode()).hexdigest()[:12]}.json"
    if path.is_file():
        return [(text, label) for text, label in json.loads(path.read_text())]
    samples = collect(root)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(samples))
    tmp.replace(path)
    return samples


def load_split(
    *,
    per_class: int = 450,
    test_per_class: int = 50,
    split_seed: int = 0,
    root: Path | None = None,
    cache: Path | None = None,
) -> TextSplit:
    """The capped, held-out split of :func:`collect`'s samples.

    Args:
        per_class: keep at most this many samples of each topic (a random subset).
        test_per_class: hold out this many of each topic as the test set.
        split_seed: seed of the subset and of the hold-out (fixed across training seeds).
        root: a standard library folder (default: the running interpreter's).
        cache: keep the parsed docstrings in this folder (default: parse every time).

    Returns:
        The split; both parts are in random order.

    Raises:
        ValueError: a topic has no more than ``test_per_class`` samples, or bad sizes.
    """
    if test_per_class < 1 or per_class <= test_per_class:
        raise ValueError(f"need 1 ≤ test_per_class < per_class, got {test_per_class}, {per_class}")
    samples = collect_cached(root, cache)
    counts = Counter(label for _, label in samples)
    short = [CLASS_NAMES[k] for k in range(len(CLASS_NAMES)) if counts[k] <= test_per_class]
    if short:
        raise ValueError(f"topics {short} have ≤ test_per_class={test_per_class} docstrings")
    rng = random.Random(split_seed)
    train: list[tuple[str, int]] = []
    test: list[tuple[str, int]] = []
    for k in range(len(CLASS_NAMES)):
        mine = [s for s in samples if s[1] == k]
        rng.shuffle(mine)
        mine = mine[:per_class]
        test += mine[:test_per_class]
        train += mine[test_per_class:]
    rng.shuffle(train)
    rng.shuffle(test)
    return TextSplit(
        train_texts=[t for t, _ in train],
        train_labels=[y for _, y in train],
        test_texts=[t for t, _ in test],
        test_labels=[y for _, y in test],
        classes=CLASS_NAMES,
        source=str(root or stdlib_dir()),
    )


if __name__ == "__main__":
    split = load_split()
    print(split.describe())
    print(Counter(CLASS_NAMES[y] for y in split.train_labels))
    for text, y in list(zip(split.test_texts, split.test_labels, strict=True))[:5]:
        print(f"[{CLASS_NAMES[y]}] {text[:110]}")
