#!/usr/bin/env python
"""The import graph, read from the source (ast; nothing is imported): the packages, and the benchmark
scenarios of scripts/bench/ (which import each other by bare name). Prints any cycle; exit 1 on a
cycle or on an upward arrow between the floors (kv_cache_proposer/ must import nothing of
inference_engine/, which must import nothing of scripts/).

    .venv/bin/python scripts/imports.py            # cycles and floor violations only
    .venv/bin/python scripts/imports.py --graph    # the whole graph, one module per line
"""
from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("inference_engine", "kv_cache_proposer")
BENCH = ROOT / "scripts" / "bench"


def module_name(path: Path) -> str:
    base = BENCH if path.is_relative_to(BENCH) else ROOT
    parts = list(path.relative_to(base).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, known: set[str]) -> set[str]:
    """Modules of this repo that `path` imports at module level or in functions (TYPE_CHECKING included)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        else:
            continue
        for t in targets:
            while t and t not in known:  # `from pkg import module` or `from module import name`
                t = t.rpartition(".")[0]
            if t and t != name and not (t in PACKAGES or t.count(".") == 1 and (ROOT / t.replace(".", "/")).is_dir()):
                out.add(t)
    return out


def graph() -> dict[str, set[str]]:
    """Module → the repo's modules it imports; bench scenarios are named by their bare names."""
    files = [p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py") if "/pb/" not in p.as_posix()]
    files += [p for p in BENCH.rglob("*.py") if "peers" not in p.parts]  # peers/ runs in llama.cpp's own venv
    known = {module_name(p) for p in files}
    return {module_name(p): imports(p, known) for p in files}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in g.get(v, ()):
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
    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def upward(g: dict[str, set[str]]) -> list[tuple[str, str]]:
    floor = lambda m: 0 if m.startswith("kv_cache_proposer") else 1 if m.startswith("inference_engine") else 2  # noqa: E731
    return [(a, b) for a, deps in g.items() for b in deps if floor(b) > floor(a)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--graph", action="store_true")
    args = ap.parse_args()
    g = graph()
    if args.graph:
        for m in sorted(g):
            print(f"{m}: {', '.join(sorted(g[m])) or '-'}")
    bad = cycles(g)
    for comp in bad:
        print("cycle:", " ↔ ".join(comp))
    for a, b in upward(g):
        print(f"upward: {a} imports {b}")
    print(f"{len(g)} modules, {sum(map(len, g.values()))} imports, {len(bad)} cycles")
    return 1 if bad or upward(g) else 0


if __name__ == "__main__":
    sys.exit(main())
