"""The package's shape, as the README's Development section states it: imports point one way, no cycle
(imports under TYPE_CHECKING and inside functions count), modules and functions short enough to read."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "bpo"
# a folder may import only from folders of a lower level; within a level, only along ONE_WAY
LEVEL = {"cli": 4, "train": 3, "eval": 3, "annotators": 2, "human": 2, "tasks": 2, "model": 1}
ONE_WAY = {("train", "eval"), ("human", "annotators"), ("tasks", "annotators")}


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports() -> dict[str, set[str]]:
    """Every module of the package -> the package modules it imports, wherever the import statement is."""
    files = {module_name(p): p for p in SRC.rglob("*.py")}
    graph = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + [base]).strip(".")
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            found |= {t for t in targets if t in files and t != name}
        graph[name] = found
    return graph


def folder(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LEVEL else "base"


def test_no_import_cycle():
    graph = imports()
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> None:
        if node in path:
            raise AssertionError("import cycle: " + " -> ".join(path[path.index(node) :] + [node]))
        if node in done:
            return
        for nxt in sorted(graph[node]):
            visit(nxt, path + [node])
        done.add(node)

    for node in sorted(graph):
        visit(node, [])


def test_imports_point_one_way_between_folders():
    wrong = []
    for module, targets in imports().items():
        for target in targets:
            a, b = folder(module), folder(target)
            if module == "bpo" or a == b or (a, b) in ONE_WAY:
                continue
            if LEVEL.get(b, 0) >= LEVEL.get(a, 0):
                wrong.append(f"{module} -> {target}")
    assert not wrong, wrong


def test_modules_and_functions_stay_readable():
    long = []
    for path in sorted(SRC.rglob("*.py")):
        text = path.read_text()
        if len(text.splitlines()) > 400:
            long.append(f"{path.name}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 60:
                long.append(f"{path.name}:{node.lineno} {node.name}: {node.end_lineno - node.lineno + 1} lines")
    assert len((SRC / "train" / "loop.py").read_text().splitlines()) < 320
    assert not long, long


def test_reading_a_config_loads_no_model_library():
    """Every command checks its config first; an error there must come in a fraction of a second, before the
    seconds torch and transformers take to import (the registries load the built-in kinds to check names)."""
    import subprocess
    import sys

    code = "import sys; from bpo.config import load_config; load_config('quickstart'); "
    code += "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
