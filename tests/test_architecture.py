"""The package's layout rules, checked on its source: a newcomer can rely on them.

* ``import lazyreg.<module>`` works for every module, and no public name shadows a module;
* no private name (``_x``) is imported, or reached as ``module._x``, across modules;
* no import cycle between modules (imports inside functions included);
* no module over ``MAX_MODULE_LINES`` lines; no public function body over ``MAX_FUNCTION_LINES``
  lines unless a ``# long: <reason>`` comment in it says why;
* every public function and class named in a module's ``__all__`` has a docstring with an
  ``Examples`` section (the doctests run with the suite).
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
import types
from pathlib import Path

import pytest

import lazyreg

PACKAGE = Path(lazyreg.__file__).parent
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()
#: Modules that are imported to be checked (``__main__`` runs the command line when imported).
IMPORTABLE = sorted(m for m in MODULES if not m.endswith("__main__"))


def _resolve(module: str, node: ast.ImportFrom) -> str:
    """Absolute name of the module a ``from ... import`` reads from."""
    if node.level == 0:
        return node.module or ""
    is_pkg = MODULES[module].name == "__init__.py"
    base = module.split(".")
    base = base if is_pkg else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for sub in ast.walk(node):
                if hasattr(sub, "lineno"):
                    lines.add(sub.lineno)
    return lines


def _imports(module: str) -> list[tuple[str, str | None, int]]:
    """(imported module, imported name or None, line) for every lazyreg import in ``module``."""
    tree = ast.parse(MODULES[module].read_text())
    skip = _type_checking_lines(tree)
    out = []
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        if isinstance(node, ast.ImportFrom):
            src = _resolve(module, node)
            if not src.startswith("lazyreg"):
                continue
            for alias in node.names:
                sub = f"{src}.{alias.name}"
                if sub in MODULES:
                    out.append((sub, None, node.lineno))
                else:
                    out.append((src, alias.name, node.lineno))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("lazyreg"):
                    out.append((alias.name, None, node.lineno))
    return out


@pytest.mark.parametrize("name", IMPORTABLE)
def test_every_module_imports_and_no_public_name_shadows_a_module(name):
    mod = importlib.import_module(name)
    assert isinstance(mod, types.ModuleType)
    parent, _, child = name.rpartition(".")
    if parent:
        attr = getattr(importlib.import_module(parent), child, mod)
        assert attr is mod, f"{parent}.{child} is {type(attr).__name__}, shadowing the module {name}"


def test_no_private_name_crosses_modules():
    bad = []
    for module in MODULES:
        for src, name, line in _imports(module):
            if name is not None and name.startswith("_") and src != module:
                bad.append(f"{module}:{line} imports {name} from {src}")
        tree = ast.parse(MODULES[module].read_text())
        aliases = {}
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for alias in node.names:
                    full = (
                        alias.name
                        if isinstance(node, ast.Import)
                        else f"{_resolve(module, node)}.{alias.name}"
                    )
                    if full in MODULES and full != module:
                        aliases[alias.asname or alias.name.split(".")[-1]] = full
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in aliases
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
            ):
                bad.append(f"{module}:{node.lineno} uses {aliases[node.value.id]}.{node.attr}")
    assert not bad, "private names used across modules:\n" + "\n".join(bad)


def test_no_import_cycles():
    graph = {m: {src for src, _, _ in _imports(m) if src in MODULES and src != m} for m in MODULES}
    # Tarjan's strongly connected components
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    cycles = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for m in graph:
        if m not in index:
            visit(m)
    assert not cycles, f"import cycles: {cycles}"


def test_modules_are_small():
    big = {m: n for m, p in MODULES.items() if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert not big, f"modules over {MAX_MODULE_LINES} lines: {big}"


def _public_functions(tree: ast.Module):
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not node.name.startswith("_"):
            yield node.name, node
        if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
            for sub in node.body:
                if isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef)) and not sub.name.startswith("_"):
                    yield f"{node.name}.{sub.name}", sub


def test_public_functions_are_short_or_say_why():
    long = []
    for module, path in MODULES.items():
        text = path.read_text()
        lines = text.splitlines()
        for name, node in _public_functions(ast.parse(text)):
            body = node.body[1:] if ast.get_docstring(node) else node.body
            if not body:
                continue
            start, end = body[0].lineno, node.end_lineno
            n = end - start + 1
            if n > MAX_FUNCTION_LINES and not any("# long:" in ln for ln in lines[start - 1 : end]):
                long.append(f"{module}.{name}: {n} lines")
    assert not long, f"public function bodies over {MAX_FUNCTION_LINES} lines without a '# long:' reason:\n" + "\n".join(long)


def test_public_names_have_examples():
    missing = []
    for module in IMPORTABLE:
        mod = importlib.import_module(module)
        for name in getattr(mod, "__all__", ()):
            obj = getattr(mod, name, None)
            if isinstance(obj, types.ModuleType) or not callable(obj):
                continue
            if isinstance(obj, type) and issubclass(obj, BaseException):
                continue  # exception types: their use is shown where they are raised
            if getattr(obj, "__module__", module) != module:
                continue  # re-exported: checked where it is defined
            doc = getattr(obj, "__doc__", "") or ""
            if "Examples" not in doc and ">>>" not in doc:
                missing.append(f"{module}.{name}")
    assert not missing, "public names without an example:\n" + "\n".join(missing)


def test_every_submodule_is_listed():
    found = {m.name for m in pkgutil.walk_packages(lazyreg.__path__, "lazyreg.")}
    assert found <= set(MODULES)
