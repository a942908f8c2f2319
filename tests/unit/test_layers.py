"""The package's shape, read from its source: layers, no import circle, one door for torch.distributed.

The layer order is the table in docs/architecture.md. Every import counts: module level, inside
functions and under ``TYPE_CHECKING`` alike.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "saddle_torch"
ARCHITECTURE = ROOT / "docs" / "architecture.md"

# torch.distributed names that do not communicate: types and the key-value store client.
DIST_TYPES = {
    "TCPStore",
    "PrefixStore",
    "HashStore",
    "FileStore",
    "Store",
    "GradBucket",
    "ProcessGroup",
    "ReduceOp",
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


MODULES = _modules()
NATIVE = {"saddle_torch._C"}


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(name: str, path: Path) -> set[str]:
    """The package modules ``name`` imports (``from pkg import sub`` counts as importing ``pkg.sub``)."""
    out: set[str] = set()
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(name, path.name == "__init__.py", node)
            targets = [
                f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES.keys() | NATIVE else base
                for a in node.names
            ]
        for target in targets:
            if target in NATIVE:  # the C++ extension is below every layer
                continue
            if target.split(".")[0] == "saddle_torch" and target != name:
                while target not in MODULES and "." in target:  # saddle_torch._C, attributes
                    target = target.rsplit(".", 1)[0]
                if target in MODULES and target != name:
                    out.add(target)
    return out


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _layers() -> dict[str, int]:
    text = ARCHITECTURE.read_text()
    table = text[text.index("<!-- layers") : text.index("<!-- /layers -->")]
    layers: dict[str, int] = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not (cells[0].isdigit() or cells[0] == "-"):
            continue
        for module in re.findall(r"`(saddle_torch[\w.]*)`", cells[2]):
            layers[module] = int(cells[0]) if cells[0].isdigit() else -1
    return layers


LAYERS = _layers()


def _layer_of(module: str) -> tuple[str, int]:
    """The most specific table entry that covers ``module`` (``saddle_torch.optim`` covers its files)."""
    best = max((k for k in LAYERS if module == k or module.startswith(k + ".")), key=len, default=None)
    assert best is not None, f"{module} is in no layer of docs/architecture.md: add it to the table"
    return best, LAYERS[best]


def test_the_table_names_real_modules_and_every_module_has_a_layer() -> None:
    assert len(LAYERS) >= 15
    for entry in LAYERS:
        assert entry in MODULES, f"docs/architecture.md names {entry}, which does not exist"
    for module in MODULES:
        _layer_of(module)


def test_no_module_imports_a_higher_layer() -> None:
    upward = []
    for module, targets in GRAPH.items():
        entry, layer = _layer_of(module)
        for target in targets:
            t_entry, t_layer = _layer_of(target)
            if layer == -1 or t_layer == -1:
                if entry != t_entry:  # tools stand apart: nothing imports them, they import nothing
                    upward.append(f"{module} -> {target}")
            elif t_layer > layer:
                upward.append(f"{module} (layer {layer}) -> {target} (layer {t_layer})")
    assert not upward, "imports from a lower layer to a higher one:\n" + "\n".join(sorted(upward))


def _cycles() -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in GRAPH:
        if v not in index:
            visit(v)
    return found


def test_no_import_circle_anywhere_in_the_package() -> None:
    assert not _cycles(), f"import circles: {_cycles()}"


def test_optim_is_a_stack_with_phases_at_the_bottom() -> None:
    optim = {m: t for m, t in GRAPH.items() if m.startswith("saddle_torch.optim.")}
    assert optim["saddle_torch.optim.phases"] <= {"saddle_torch.optim.replay"} | {
        t for t in optim["saddle_torch.optim.phases"] if not t.startswith("saddle_torch.optim")
    }
    for module, targets in optim.items():
        if module != "saddle_torch.optim.wrapper":
            assert "saddle_torch.optim.wrapper" not in targets, f"{module} imports the wrapper"


def _dist_aliases(tree: ast.AST) -> tuple[set[str], set[str]]:
    """Names bound to ``torch.distributed`` and names imported from it, in one module."""
    modules, names = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name == "torch.distributed":
                    modules.add(a.asname or "torch")
        elif isinstance(node, ast.ImportFrom):
            if node.module == "torch" and any(a.name == "distributed" for a in node.names):
                modules.update(a.asname or a.name for a in node.names if a.name == "distributed")
            elif node.module and node.module.startswith("torch.distributed"):
                names.update(a.asname or a.name for a in node.names if a.name not in DIST_TYPES)
    return modules, names


def _dist_calls(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), str(path))
    modules, names = _dist_aliases(tree)
    calls = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        chain = []
        while isinstance(f, ast.Attribute):
            chain.append(f.attr)
            f = f.value
        if isinstance(f, ast.Name):
            chain.append(f.id)
        chain.reverse()
        if not chain:
            continue
        if chain[0] in modules and "torch" not in modules and chain[1:2] and chain[1] not in DIST_TYPES:
            calls.append((node.lineno, ".".join(chain)))
        elif chain[:2] == ["torch", "distributed"] and chain[2:3] and chain[2] not in DIST_TYPES:
            calls.append((node.lineno, ".".join(chain)))
        elif len(chain) == 1 and chain[0] in names:
            calls.append((node.lineno, chain[0]))
    return calls


def test_every_torch_distributed_call_goes_through_the_door() -> None:
    door = PACKAGE / "comm"
    seen_in_door = []
    bypass = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for line, call in _dist_calls(path):
            where = f"{path.relative_to(ROOT)}:{line}: {call}"
            (seen_in_door if door in path.parents else bypass).append(where)
    assert not bypass, "torch.distributed called outside saddle_torch/comm (use ctx.door):\n" + "\n".join(
        bypass
    )
    # The door does make them (the test reads what it thinks it reads).
    assert any("all_reduce" in c for c in seen_in_door) and any("all_gather" in c for c in seen_in_door)
    assert any("init_process_group" in c for c in seen_in_door)


@pytest.mark.parametrize(
    "source",
    [
        "import torch.distributed as dist\ndist.all_reduce(t)\n",
        "import torch\ntorch.distributed.broadcast(t, 0)\n",
        "from torch.distributed import all_gather\nall_gather(a, t)\n",
        "from torch import distributed as d\nd.barrier()\n",
    ],
)
def test_the_call_finder_sees_each_spelling(tmp_path: Path, source: str) -> None:
    path = tmp_path / "m.py"
    path.write_text(source)
    assert len(_dist_calls(path)) == 1
    path.write_text("import torch.distributed as dist\nstore = dist.TCPStore('h', 1)\n")
    assert _dist_calls(path) == []
