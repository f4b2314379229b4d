"""The shape of the package, measured: largest modules and functions, imports made inside functions, import
cycles (strongly connected groups of modules, function-level imports counted), and the files outside the
method registry that name a given method.

    python scripts/code_shape.py [ROOT] [--method lora]

ROOT is a checkout (default: this one), so an older commit can be measured the same way
(`git worktree add ../shape-old <commit> && python scripts/code_shape.py ../shape-old`).
"""
from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path


def modules(root: Path) -> dict[str, Path]:
    pkg = root / "peftcompare"
    out = {}
    for p in sorted(pkg.rglob("*.py")):
        parts = p.relative_to(root).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return out


def imports(path: Path, known: dict[str, Path], name: str = ""):
    """(target module, inside a function?) for every import of a package module (`name`: the importing
    module's own name, for relative imports)."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    top = {id(n) for n in tree.body}
    # imports under `if TYPE_CHECKING:` at module level are for annotations only
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            top |= {id(n) for n in ast.walk(node)}
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[:len(package.split(".")) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            names = [f"{module}.{a.name}" if f"{module}.{a.name}" in known else module for a in node.names]
        for n in names:
            while n and n not in known and "." in n:
                n = n.rsplit(".", 1)[0]
            if n in known and n != "peftcompare":
                yield n, id(node) not in top


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
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
                out.append(sorted(comp))

    sys.setrecursionlimit(10_000)
    for v in graph:
        if v not in index:
            visit(v)
    return out


def functions(path: Path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node.name, node.end_lineno - node.lineno + 1


def names_method(path: Path, method: str) -> bool:
    """The file compares or dispatches on the method's name as a string constant."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Constant) and node.value == method:
            return True
    return False


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("root", nargs="?", default=str(Path(__file__).resolve().parents[1]))
    ap.add_argument("--method", default="adalora", help="a method whose name is looked for outside the registry")
    args = ap.parse_args(argv)
    root = Path(args.root).resolve()
    mods = modules(root)
    graph = {m: set() for m in mods}
    inside = 0
    for m, p in mods.items():
        for target, in_function in imports(p, mods, m):
            if target != m:
                graph[m].add(target)
                inside += in_function
    sizes = sorted(((len(p.read_text().splitlines()), m) for m, p in mods.items()), reverse=True)
    funcs = sorted(((n, f"{m}.{name}") for m, p in mods.items() for name, n in functions(p)), reverse=True)
    registry = [p for m, p in mods.items() if ".methods" in m or m.endswith(".methods")]
    front = [*mods.values(), *sorted((root / "pages").glob("*.py")), root / "app.py"]
    naming = sorted(str(p.relative_to(root)) for p in front
                    if p.is_file() and p not in registry and names_method(p, args.method))
    print(f"modules: {len(mods)}, lines: {sum(s for s, _ in sizes)}")
    print("largest modules: " + ", ".join(f"{m} {s}" for s, m in sizes[:5]))
    print("largest functions: " + ", ".join(f"{f} {n}" for n, f in funcs[:5]))
    print(f"imports inside functions (package modules): {inside}")
    found = cycles(graph)
    print(f"import cycles: {len(found)}" + "".join(f"\n  {' <-> '.join(c)}" for c in found))
    print(f"files outside the method registry naming {args.method!r}: {len(naming)}"
          + "".join(f"\n  {n}" for n in naming))
    return 0


if __name__ == "__main__":
    sys.exit(main())
