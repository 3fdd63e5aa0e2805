"""The layering of docs/architecture.md, read from the code's own imports (every import statement, including the
ones inside functions), and the size rules. A new import that crosses a layer the wrong way fails here."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "saescope"
BASE = {"errors", "_io", "_checks", "_config", "_version", "progress", "display", "assets", "__main__", "__init__"}

# package -> the saescope packages it may import (besides itself and the base modules)
ALLOWED = {
    "sae": set(),
    "lm": set(),
    "data": {"lm"},
    "site": {"lm", "sae"},
    "interp": {"lm", "sae", "data", "site"},
    "evals": {"lm", "sae", "data", "site", "plan"},
    "train": {"lm", "sae", "data", "site", "evals", "plan"},
    "report": {"lm", "sae", "data", "site", "interp", "evals", "plan"},
    "explain": {"lm", "sae", "data", "site", "interp", "report"},
    "graph": {"lm", "sae", "data", "site", "interp", "report"},
    "plan": {"lm", "sae", "data", "site"},     # below evals/report/train: they ask it for batch sizes
    "server": {"lm", "sae", "data", "site", "interp", "evals", "report", "explain", "graph", "plan"},
    "cli": None,   # the interface may import anything
}
MAX_MODULE_LINES = 420


def _package(path: Path) -> str:
    rel = path.relative_to(SRC)
    return rel.parts[0].removesuffix(".py")


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, saescope package) for every import of a saescope module in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    rel = path.relative_to(SRC)
    here = list(rel.parts[:-1])            # package path of the module
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - (node.level - 1)] if node.level > 1 else here
                parts = base + (node.module.split(".") if node.module else [])
                if not parts:               # "from .. import x" at the top: x is the package
                    parts = [node.names[0].name]
            elif node.module and node.module.split(".")[0] == "saescope":
                parts = node.module.split(".")[1:] or [node.names[0].name]
            else:
                continue
            if not parts and node.names:
                parts = [node.names[0].name]
            out.append((node.lineno, parts[0] if parts else ""))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "saescope" and "." in alias.name:
                    out.append((node.lineno, alias.name.split(".")[1]))
    return out


def _modules():
    return sorted(p for p in SRC.rglob("*.py") if "assets" not in p.parts)


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(SRC)))
def test_imports_follow_the_layers(path):
    pkg = _package(path)
    if pkg in BASE or ALLOWED.get(pkg, set()) is None:
        return
    assert pkg in ALLOWED, f"{path.relative_to(SRC)}: package {pkg!r} is not in the layer table of this test and docs"
    allowed = ALLOWED[pkg] | BASE | {pkg}
    bad = [(line, target) for line, target in _imports(path) if target not in allowed]
    assert not bad, f"{path.relative_to(SRC)} imports {', '.join(f'{t} (line {ln})' for ln, t in bad)}; " \
                    f"{pkg} may import only {sorted(ALLOWED[pkg]) or 'nothing of saescope'} (docs/architecture.md)"


def test_the_rule_reader_sees_a_violation(tmp_path):
    """The import reader is not blind: it finds a relative and an absolute cross-layer import."""
    mod = SRC / "sae" / "model.py"
    found = {t for _, t in _imports(mod)}
    assert "lm" not in found and found, "sae/model.py imports saescope modules"
    fake = tmp_path / "x.py"
    fake.write_text("from ...lm import LanguageModel\nimport saescope.interp.read\ndef f():\n    from ...report import x\n")
    target = SRC / "sae" / "formats" / "_probe_.py"
    target.write_text(fake.read_text())
    try:
        assert {t for _, t in _imports(target)} == {"lm", "interp", "report"}
    finally:
        target.unlink()


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(SRC)))
def test_no_module_over_the_size_limit(path):
    n = len(path.read_text(encoding="utf-8").splitlines())
    assert n <= MAX_MODULE_LINES, f"{path.relative_to(SRC)} has {n} lines (limit about 400): split it along its seams"


MAX_FUNCTION_LINES = 90


def test_no_function_over_the_size_limit():
    """No function over about 80 lines. A route-group factory (``router(state, forms)``, whose body is the short
    route handlers it registers) is measured by its longest handler instead."""
    long = []
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            if node.name == "router" and path.parent.name == "server":
                continue
            n = node.end_lineno - node.lineno + 1
            if n > MAX_FUNCTION_LINES:
                long.append(f"{path.relative_to(SRC)}:{node.name} ({n} lines)")
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines, split them: {', '.join(long)}"


def test_writes_go_through_io():
    """Crash-safe writes live in saescope._io: no other module renames temp files into place by hand."""
    offenders = []
    for path in _modules():
        if path.name == "_io.py":
            continue
        text = path.read_text(encoding="utf-8")
        if "os.replace(" in text or "tempfile.mkstemp(" in text:
            offenders.append(str(path.relative_to(SRC)))
    assert not offenders, f"write files through saescope._io instead of by hand: {', '.join(offenders)}"
