#!/usr/bin/env python3
"""Module cycles among the top-level modules of a crate's src/, from `crate::NAME` references
(in code and in doc comments alike; test files and inline `#[cfg(test)] mod` blocks excluded).

Usage: python3 scripts/module-cycles.py SRC [--layers "a > b c > d"]
Prints each cycle with the references that make it, and the number of cycles last. Exits 1
when there is any cycle. With --layers (groups from top to bottom, separated by `>`), also
fails when a module depends on one that is not in a lower group, or is in no group (CI runs it
on coordinator/src with the order in its lib.rs)."""
import os
import re
import sys


def edges_of(src):
    tops = {
        os.path.splitext(n)[0]
        for n in os.listdir(src)
        if n.endswith(".rs") or os.path.isdir(os.path.join(src, n))
    } - {"main", "lib", "bin"}
    edges = {t: {} for t in tops}
    for root, _, files in os.walk(src):
        rel = os.path.relpath(root, src)
        if rel.startswith("bin"):
            continue
        for f in sorted(files):
            if not f.endswith(".rs") or f == "tests.rs" or f.endswith("_tests.rs"):
                continue
            top = rel.split(os.sep)[0] if rel != "." else os.path.splitext(f)[0]
            if top not in tops:
                continue
            path = os.path.join(root, f)
            with open(path, encoding="utf-8", errors="replace") as fh:
                text = fh.read()
            # Inline test modules are not the design.
            text = re.split(r"#\[cfg\(test\)\]\s*mod\s+\w+\s*\{", text)[0]
            for m in re.finditer(r"crate::(?:\{([^}]*)\}|(\w+))", text):
                names = re.findall(r"(\w+)", m.group(1)) if m.group(1) else [m.group(2)]
                for n in names:
                    if n in tops and n != top:
                        line = text.count("\n", 0, m.start()) + 1
                        edges[top].setdefault(n, f"{os.path.relpath(path, src)}:{line}")
    return edges


def cycles(edges):
    index, low, stack, on, groups, counter = {}, {}, [], set(), [], [0]

    def strong(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            g = []
            while True:
                w = stack.pop()
                on.discard(w)
                g.append(w)
                if w == v:
                    break
            if len(g) > 1:
                groups.append(sorted(g))

    sys.setrecursionlimit(10000)
    for v in sorted(edges):
        if v not in index:
            strong(v)
    return groups


def layer_violations(edges, spec):
    rank = {}
    groups = [g.split() for g in spec.split(">")]
    for i, g in enumerate(groups):
        for m in g:
            rank[m] = len(groups) - i
    bad = [f"{m} is in no layer" for m in sorted(edges) if m not in rank]
    for a in sorted(edges):
        for b, where in sorted(edges[a].items()):
            if a in rank and b in rank and rank[b] >= rank[a]:
                bad.append(f"{a} -> {b} ({where}): {b} is not below {a}")
    return bad


def main():
    args = sys.argv[1:]
    spec = None
    if len(args) == 3 and args[1] == "--layers":
        spec = args[2]
    elif len(args) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    edges = edges_of(args[0])
    groups = cycles(edges)
    for g in groups:
        print("cycle:", " ".join(g))
        for a in g:
            for b, where in sorted(edges[a].items()):
                if b in g:
                    print(f"  {a} -> {b} ({where})")
    print(len(groups))
    bad = layer_violations(edges, spec) if spec else []
    for b in bad:
        print("layer:", b)
    return 1 if groups or bad else 0


if __name__ == "__main__":
    sys.exit(main())
