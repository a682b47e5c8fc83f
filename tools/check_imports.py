"""Check that vitkd's packages import downward only: print the package import graph and every cycle in it.

    python tools/check_imports.py            # exit status 1 when two packages import each other (directly or not)
    python tools/check_imports.py --graph    # also print which packages each package imports

A "package" is a first-level part of vitkd (`engine`, `tasks`, `cache`, ... or a top-level module such as
`config`). Imports inside functions count too: a lazy import still ties two layers together. The command-line
front ends (`cli`, `__main__`) sit on top of everything and are left out of the cycle search.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections import defaultdict
from pathlib import Path
from typing import Sequence

ROOT = Path(__file__).resolve().parents[1] / "vitkd"
FRONT_ENDS = {"cli", "__main__"}


def package_of(path: Path, root: Path) -> str:
    """`vitkd/engine/trainer.py` -> `engine`; `vitkd/config.py` -> `config`."""
    relative = path.relative_to(root)
    return relative.parts[0] if len(relative.parts) > 1 else relative.stem


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """package -> the other vitkd packages its modules import (`vitkd` itself for `from vitkd import ...`)."""
    graph: dict[str, set[str]] = defaultdict(set)
    for path in sorted(root.rglob("*.py")):
        source = package_of(path, root)
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            elif isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            else:
                continue
            for module in modules:
                parts = module.split(".")
                if parts[0] != root.name:
                    continue
                target = parts[1] if len(parts) > 1 else root.name
                if target != source:
                    graph[source].add(target)
    return dict(graph)


def find_cycles(graph: dict[str, set[str]], skip: set[str] = FRONT_ENDS) -> list[list[str]]:
    """Every elementary cycle among the packages not in `skip`, each as [a, b, ..., a], smallest first."""
    nodes = sorted(node for node in graph if node not in skip)
    cycles: set[tuple[str, ...]] = set()

    def walk(start: str, node: str, path: list[str]) -> None:
        for target in sorted(graph.get(node, ())):
            if target in skip:
                continue
            if target == start:
                cycles.add(tuple(path + [start]))
            elif target not in path and target > start:  # each cycle is found once, from its smallest package
                walk(start, target, path + [target])

    for node in nodes:
        walk(node, node, [node])
    return [list(cycle) for cycle in sorted(cycles, key=lambda cycle: (len(cycle), cycle))]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=ROOT, help=f"the package folder (default: {ROOT})")
    parser.add_argument("--graph", action="store_true", help="print the package import graph")
    args = parser.parse_args(argv)
    graph = import_graph(args.root)
    if args.graph:
        for package in sorted(graph):
            print(f"{package} -> {', '.join(sorted(graph[package]))}")
    cycles = find_cycles(graph)
    for cycle in cycles:
        print("cycle: " + " -> ".join(cycle))
    if not cycles:
        print(f"{args.root.name}: no import cycles between packages ({len(graph)} packages checked)")
    return 1 if cycles else 0


if __name__ == "__main__":
    sys.exit(main())
