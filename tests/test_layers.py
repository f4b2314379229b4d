"""The layering as a property of the code: imports go one way (core <- engine <- service <- {cli, webui}), no
cycles (function-level imports included), torch and streamlit only where a layer allows them, and no module
outside the registries compares a method or task name."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from peftcompare.core import methods, tasks

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "peftcompare"
RANK = {"core": 0, "engine": 1, "service": 2, "cli": 3, "webui": 3, "__main__": 4}
HEAVY = ("torch", "transformers", "peft", "accelerate", "safetensors")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def _imports(path: Path):
    """(target module, at module level?) for every import of a peftcompare module or a third-party root."""
    tree = ast.parse(path.read_text())
    top = {id(n) for n in tree.body}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, id(node) in top
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import; the layers read better absolute"
            for a in node.names:
                full = f"{node.module}.{a.name}"
                yield (full if full in MODULES else node.module), id(node) in top


def _edges():
    for name, path in MODULES.items():
        for target, top_level in _imports(path):
            while target and target not in MODULES and "." in target:
                target = target.rsplit(".", 1)[0]
            yield name, target, top_level


def test_imports_go_one_way():
    wrong = []
    for src, dst, top_level in _edges():
        if dst not in MODULES or src == dst or dst == "peftcompare":
            continue
        a, b = _layer(src), _layer(dst)
        if a is None or b is None or a == b:
            continue
        if RANK[b] > RANK[a] or (RANK[a] == RANK[b]):  # upwards, or sideways between cli and webui
            wrong.append(f"{src} -> {dst}")
        elif a == "service" and b == "engine" and top_level:
            wrong.append(f"{src} -> {dst} at module level (service must stay torch-free at import)")
    assert not wrong, wrong


def test_no_import_cycles():
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for src, dst, _ in _edges():
        if dst in MODULES and dst != src and dst != "peftcompare":
            graph[src].add(dst)
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for n in graph[m]:
            if state.get(n) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(n):] + [n]))
            if n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m)


def test_the_cli_and_the_app_call_the_service_only():
    """cli.py, webui/, app.py and pages/ reach the engine only through service: one API for both front ends."""
    fronts = [PACKAGE / "cli.py", *sorted((PACKAGE / "webui").glob("*.py")), ROOT / "app.py",
              *sorted((ROOT / "pages").glob("*.py"))]
    wrong = [f"{p.relative_to(ROOT)} imports {target}" for p in fronts for target, _ in _imports(p)
             if target.startswith("peftcompare.engine")]
    assert not wrong, wrong


@pytest.mark.parametrize("layer", ["core", "service", "cli"])
def test_heavy_libraries_only_where_allowed(layer):
    """Nothing outside the engine imports torch & co. at module level (the app's first paint and `--help` stay
    fast); inside functions, core may build PEFT config objects (a method's make_config) and nothing else
    heavy; streamlit lives in webui only."""
    wrong = []
    for name, path in MODULES.items():
        if (_layer(name) or "cli") != layer and not (layer == "cli" and name == "peftcompare.cli"):
            continue
        for target, top_level in _imports(path):
            root = target.split(".")[0]
            core_ok = layer == "core" and root == "peft" and name.startswith("peftcompare.core.methods")
            if root == "streamlit" or (root in HEAVY and (top_level or (layer == "core" and not core_ok))):
                wrong.append(f"{name} imports {target}")
    assert not wrong, wrong


def _names_compared(path: Path, names: set[str]) -> list[str]:
    """Places where a registered name is compared: `x == "lora"`, `x in ("lora", ...)`, `"lora" != x`."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Compare):
            continue
        for side in [node.left, *node.comparators]:
            consts = side.elts if isinstance(side, (ast.Tuple, ast.List, ast.Set)) else [side]
            hits = [c.value for c in consts if isinstance(c, ast.Constant) and c.value in names]
            if hits:
                where = path.relative_to(ROOT) if ROOT in path.parents else path.name
                found.append(f"{where}:{node.lineno} compares {hits}")
    return found


def _code_files():
    return [*MODULES.values(), *sorted((ROOT / "pages").glob("*.py")), ROOT / "app.py"]


def test_no_method_name_is_compared_outside_the_method_registry():
    inside = PACKAGE / "core" / "methods"
    found = [hit for p in _code_files() if inside not in p.parents
             for hit in _names_compared(p, set(methods.METHODS))]
    assert not found, found


def test_no_task_name_is_compared_outside_the_task_registry():
    found = [hit for p in _code_files() if p != PACKAGE / "core" / "tasks.py"
             for hit in _names_compared(p, set(tasks.TASKS))]
    assert not found, found


def test_the_checks_above_can_fail(tmp_path):
    """The name scan finds the forms it is meant to find (a scan that finds nothing proves nothing)."""
    probe = tmp_path / "probe.py"
    probe.write_text('def f(spec, task):\n    a = spec.method == "lora"\n    b = task in ("classification", "x")\n'
                     '    return a or b or "prefix" != spec.method\n')
    assert len(_names_compared(probe, set(methods.METHODS))) == 2
    assert len(_names_compared(probe, set(tasks.TASKS))) == 1
