"""The shape of the package: no import cycles, short functions, ruff's complexity and
argument-count rules clean, a torch-free feature store, docs that stand alone."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "transferkit"
MAX_FUNCTION_LINES = 60


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def _type_checking_only(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _walk_imports(tree: ast.AST, *, top_level_only: bool):
    """Import statements, skipping ``if TYPE_CHECKING:`` blocks (and, with
    ``top_level_only``, anything inside functions)."""
    stack = list(ast.iter_child_nodes(tree))
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _type_checking_only(node):
            continue
        if top_level_only and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def imports_of(name: str, *, top_level_only: bool = False) -> set[str]:
    """The modules ``name`` imports: inside the package, resolved to the module or
    package ``__init__`` it names; outside, the top-level distribution name."""
    tree = ast.parse(MODULES[name].read_text())
    package = name if _is_package(name) else name.rpartition(".")[0]
    found = set()
    for node in _walk_imports(tree, top_level_only=top_level_only):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
            continue
        base = node.module or ""
        if node.level:
            anchor = package.split(".")
            anchor = anchor[: len(anchor) - node.level + 1]
            base = ".".join([*anchor, base] if base else anchor)
        for alias in node.names:
            sub = f"{base}.{alias.name}"
            found.add(sub if sub in MODULES else base)
    return {m if m in MODULES else m.split(".")[0] for m in found}


def _cycles() -> list[list[str]]:
    graph = {m: sorted(i for i in imports_of(m) if i in MODULES and i != m) for m in MODULES}
    cycles, state, path = [], {}, []

    def visit(m):
        state[m] = "open"
        path.append(m)
        for n in graph[m]:
            if state.get(n) == "open":
                cycles.append([*path[path.index(n) :], n])
            elif n not in state:
                visit(n)
        path.pop()
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m)
    return cycles


def test_no_import_cycle_inside_the_package():
    """Counting every import, lazy ones inside functions included: a lazy import that
    closes a cycle still ties two modules together."""
    assert _cycles() == []


def test_the_cycle_check_finds_a_cycle(monkeypatch, tmp_path):
    a, b = tmp_path / "transferkit" / "a.py", tmp_path / "transferkit" / "b.py"
    a.parent.mkdir()
    a.write_text("def f():\n    from .b import g\n")
    b.write_text("from .a import f\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", tmp_path / "transferkit")
    monkeypatch.setattr(sys.modules[__name__], "MODULES", {"transferkit.a": a, "transferkit.b": b})
    assert _cycles() == [["transferkit.a", "transferkit.b", "transferkit.a"]]


def test_no_function_is_longer_than_60_lines():
    long = []
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{name}.{node.name}: {lines} lines")
    assert long == []


def test_ruff_complexity_and_argument_count_rules_are_on_and_clean():
    config = (ROOT / "pyproject.toml").read_text()
    assert '"C901"' in config and '"PLR0913"' in config
    ruff = shutil.which("ruff") or str(Path(sys.executable).with_name("ruff"))
    if not Path(ruff).exists():
        pytest.skip("ruff is not installed (it is part of the dev extra)")
    proc = subprocess.run(
        [ruff, "check", "--select", "C901,PLR0913", "--output-format", "concise", "src"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout


def test_the_feature_store_needs_no_torch():
    """The store only keeps arrays; nothing it imports at load time pulls in torch."""
    seen, todo = set(), ["transferkit.features.store"]
    while todo:
        name = todo.pop()
        seen.add(name)
        for dep in imports_of(name, top_level_only=True):
            assert dep not in ("torch", "torchvision", "timm"), f"{name} imports {dep}"
            if dep in MODULES and dep not in seen and not _is_package(dep):
                todo.append(dep)
    assert "transferkit.atomic" in seen


def test_every_arrow_of_the_data_flow_has_its_module_named_in_the_design_doc():
    design = (ROOT / "docs" / "design.md").read_text()
    for arrow in ("source", "examples", "backbone", "features", "head", "predictions"):
        assert re.search(rf"\b{arrow}\b", design), arrow
    named = set(re.findall(r"`((?:[a-z_]+/)*[a-z_]+\.py)`", design))
    missing = [m for m in named if not (PACKAGE / m).is_file()]
    assert named and missing == []


def _doc_files():
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_docs_link_only_to_files_inside_the_repository():
    for doc in _doc_files():
        for target in re.findall(r"\]\(([^)#\s]+)", doc.read_text()):
            if re.match(r"[a-z]+://", target):
                continue
            resolved = (doc.parent / target).resolve()
            assert resolved.is_relative_to(ROOT) and resolved.exists(), f"{doc.name}: {target}"


RULE_NUMBER = re.compile(r"\bR(?:[1-9]|1[0-2])\b|DESIGN|shared/|[Ii]ssue \d+|§")


def test_no_doc_message_or_docstring_cites_a_rule_number_or_a_file_users_lack():
    texts = {p: p.read_text() for p in _doc_files()}
    texts.update({p: p.read_text() for p in MODULES.values()})
    texts.update({p: p.read_text() for p in (ROOT / "tests").rglob("*.py")})
    texts.update({p: p.read_text() for p in (ROOT / "bench").glob("*.py")})
    hits = [
        f"{p.relative_to(ROOT)}:{text.count(chr(10), 0, m.start()) + 1}: {m.group()}"
        for p, text in texts.items()
        if p.name != "test_architecture.py"
        for m in RULE_NUMBER.finditer(text)
    ]
    assert hits == []
