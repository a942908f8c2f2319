"""Every command the README and the quick-start docs tell a user to type still parses.

A renamed flag, a removed make target or a script that moved breaks this test, not a user: each shell
command in a ```bash block (and each inline `make ...`, `python ...`, `torchrun ...`) of README.md,
docs/port_ddp.md and docs/frameworks.md is checked against the real thing — make targets against the
Makefile, ``python -m saddle_torch.run`` against the launcher's parser, ``torchrun`` against torch's,
and the script's own flags against the script's ``parse_args``. Running them is other tests' job
(examples, elastic, the demo smoke test) and CI's clean-venv install; the Python blocks are executed
by tests/distributed/test_docs_python.py; every call into saddle_torch in any Python block (the
Lightning and HF Trainer ones included) is bound here against the real signature.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", ROOT / "docs" / "port_ddp.md", ROOT / "docs" / "frameworks.md"]
MAKEFILE = (ROOT / "Makefile").read_text()
PLACEHOLDER_SCRIPTS = {"your_script.py", "script.py"}  # the user's own script, named as an example
FIRST_WORDS = ("make ", "python ", "python3 ", "torchrun ", "pip ")


def shell_commands(doc: Path) -> list[str]:
    """The commands of ``doc``: every line of its bash blocks and every inline code span that is one."""
    text = doc.read_text()
    out = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        out += [line for line in block.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    for span in re.findall(r"`([^`]+)`", prose):
        span = " ".join(span.split())
        # inline: make targets and commands that run a script; a bare `python -m saddle_torch.run` or
        # `torchrun --nproc_per_node=4` names a tool in prose, not a command to type
        if span.startswith("make ") or (span.startswith(FIRST_WORDS) and ".py" in span):
            out.append(span)
    return out


def _script_args_parse(script: str, args: list[str]) -> None:
    if Path(script).name in PLACEHOLDER_SCRIPTS:
        return
    path = ROOT / script
    assert path.is_file(), f"the docs run {script}, which does not exist"
    spec = importlib.util.spec_from_file_location(f"_doc_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert hasattr(module, "parse_args"), f"{script} has no parse_args(argv) to check its flags with"
    try:
        module.parse_args(args)
    except SystemExit as exc:
        raise AssertionError(f"{script} rejects the documented flags {args}") from exc


def check(command: str) -> None:
    """Raise AssertionError if ``command`` would not start as documented."""
    words = shlex.split(command, comments=True)
    while words and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", words[0]):  # VAR=value prefixes
        words.pop(0)
    assert words, command
    if words[0] == "make":
        for target in (w for w in words[1:] if "=" not in w and not w.startswith("-")):
            assert re.search(rf"^{re.escape(target)}:", MAKEFILE, re.M), f"make {target}: no such target"
    elif words[0] == "pip":
        assert words[1] == "install", command  # what it installs is checked by make install-check
    elif words[:3] == ["python", "-m", "build"]:
        pass
    elif words[:3] == ["python", "-m", "saddle_torch.run"]:
        import tempfile

        from saddle_torch.elastic.launcher import parse_args

        argv = words[3:]
        if "--secret-file" in argv:  # the user's own file: parse against one that exists
            secret = Path(tempfile.mkdtemp()) / "job.secret"
            secret.write_text("documented-command-secret-0123456789")
            argv[argv.index("--secret-file") + 1] = str(secret)
        try:
            args = parse_args(argv)
        except SystemExit as exc:
            raise AssertionError(f"the launcher rejects {command!r}") from exc
        _script_args_parse(args.script, args.args)
    elif words[0] == "torchrun":
        from torch.distributed.run import get_args_parser

        try:
            args = get_args_parser().parse_args(words[1:])
        except SystemExit as exc:
            raise AssertionError(f"torchrun rejects {command!r}") from exc
        _script_args_parse(args.training_script, args.training_script_args)
    elif words[0] in ("python", "python3") and words[1].endswith(".py"):
        _script_args_parse(words[1], words[2:])
    else:
        raise AssertionError(f"a documented command this test does not know how to check: {command!r}")


COMMANDS = sorted({(doc.name, c) for doc in DOCS for c in shell_commands(doc)})


def test_the_docs_have_commands() -> None:
    assert len(COMMANDS) >= 15 and any(c.startswith("torchrun") for _, c in COMMANDS)


@pytest.mark.parametrize("doc,command", COMMANDS, ids=[f"{d}:{c[:50]}" for d, c in COMMANDS])
def test_documented_command_parses(doc: str, command: str) -> None:
    check(command)


def test_the_check_catches_a_renamed_flag_a_missing_target_and_a_missing_script() -> None:
    with pytest.raises(AssertionError, match="rejects"):
        check("python -m saddle_torch.run --nproc 8 examples/elastic.py --halt 3@100")
    with pytest.raises(AssertionError, match="no such target"):
        check("make demo-quick")
    with pytest.raises(AssertionError, match="does not exist"):
        check("torchrun --nproc_per_node=4 examples/trian.py")


# -- the Python blocks: every call into saddle_torch binds to the real signature ----------------------
ROOTS = {
    "st": "saddle_torch",
    "saddle_torch": "saddle_torch",
    "SaddleStrategy": "saddle_torch.lightning.SaddleStrategy",
    "SaddleTrainer": "saddle_torch.hf.SaddleTrainer",
}


def _dotted(node: ast.expr) -> str | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name) or node.id not in ROOTS:
        return None
    return ".".join([ROOTS[node.id], *reversed(parts)])


def _resolve(dotted: str) -> object:
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):  # the longest importable module, then attributes
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)  # AttributeError: the docs name something that is not there
        return obj
    raise AssertionError(f"nothing of {dotted} imports")


def api_calls(doc: Path) -> list[tuple[str, int, list[str]]]:
    """(callee, positional count, keyword names) of every call into saddle_torch in ``doc``'s blocks."""
    calls = []
    for block in re.findall(r"```python\n(.*?)```", doc.read_text(), re.S):
        for node in ast.walk(ast.parse(block)):
            if isinstance(node, ast.Call) and (name := _dotted(node.func)) is not None:
                calls.append((name, len(node.args), [k.arg for k in node.keywords if k.arg]))
    return calls


def _accepted(target: object) -> set[str]:
    """Keyword names ``target`` takes; behind ``**kwargs``: ``st.Decentralized``'s fields and the
    framework base class's own parameters (SaddleStrategy and SaddleTrainer pass the rest on)."""
    import saddle_torch as st

    params = inspect.signature(target).parameters
    names = {n for n, p in params.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        names |= set(st.Decentralized.__dataclass_fields__)
        for base in getattr(target, "__mro__", ())[1:]:
            if base is not object and "__init__" in vars(base):
                names |= set(inspect.signature(base.__init__).parameters) - {"self"}
    return names


CALLS = sorted({(doc.name, name, n, tuple(kw)) for doc in DOCS for name, n, kw in api_calls(doc)})


@pytest.mark.parametrize("doc,name,positional,keywords", CALLS, ids=[f"{c[0]}:{c[1]}" for c in CALLS])
def test_documented_call_binds(doc: str, name: str, positional: int, keywords: tuple[str, ...]) -> None:
    target = _resolve(name)
    unknown = set(keywords) - _accepted(target)
    assert not unknown, f"{doc}: {name}(...) takes no {sorted(unknown)}"
    try:
        inspect.signature(target).bind(*[None] * positional, **dict.fromkeys(keywords))
    except TypeError as exc:
        signature = inspect.signature(target)
        raise AssertionError(f"{doc}: {name}(...) as documented does not fit {signature}") from exc


def test_a_misspelt_option_behind_kwargs_is_caught() -> None:
    strategy = _resolve("saddle_torch.lightning.SaddleStrategy")
    assert {"topology", "algorithm", "rho", "hook"} <= _accepted(strategy)
    assert "algorith" not in _accepted(strategy)
    trainer = _resolve("saddle_torch.hf.SaddleTrainer")
    assert {"model", "args", "train_dataset", "rho"} <= _accepted(trainer)
    assert "rhoo" not in _accepted(trainer)


def test_the_blocks_call_the_main_api() -> None:
    names = {c[1] for c in CALLS}
    assert {"saddle_torch.DistributedOptimizer", "saddle_torch.lightning.SaddleStrategy"} <= names
    assert "saddle_torch.hf.SaddleTrainer" in names and "saddle_torch.configure" in names
