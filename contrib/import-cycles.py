#!/usr/bin/env python3
"""Import graph of the crate's top-level modules (src/*.rs, src/*/): an edge A -> B
for every `crate::B` that A's files name (in `use` lines or paths, comments and
doc comments left out). Prints the layers bottom up and exits 1 on a cycle, or
when they differ from docs/architecture.md's layer table (the one place they
are written; tests/layers.rs checks the same).

Usage: contrib/import-cycles.py [SRC_DIR]   (default: src)
"""
import os
import re
import sys

src = sys.argv[1] if len(sys.argv) > 1 else "src"
modules = {}
for entry in sorted(os.listdir(src)):
    path = os.path.join(src, entry)
    if entry.endswith(".rs") and entry not in ("lib.rs", "main.rs"):
        modules.setdefault(entry[:-3], []).append(path)
    elif os.path.isdir(path):
        for root, _, files in os.walk(path):
            modules.setdefault(entry, []).extend(
                os.path.join(root, f) for f in files if f.endswith(".rs")
            )

def code(text):
    # Drops // comments (doc comments included) and string literals' contents.
    out = []
    for line in text.splitlines():
        line = re.sub(r'"(\\.|[^"\\])*"', '""', line)
        out.append(line.split("//", 1)[0])
    return "\n".join(out)

edges = {m: set() for m in modules}
for m, files in modules.items():
    for f in files:
        text = code(open(f).read())
        # `use crate::{a, b::c}` and `crate::a::...` paths.
        for group in re.findall(r"crate::\{([^}]*)\}", text):
            for name in re.findall(r"(?:^|,)\s*(\w+)", group):
                if name in modules and name != m:
                    edges[m].add(name)
        for name in re.findall(r"crate::(\w+)", text):
            if name in modules and name != m:
                edges[m].add(name)
        # `$crate::x` in macros of this module count too.
        for name in re.findall(r"\$crate::(\w+)", text):
            if name in modules and name != m:
                edges[m].add(name)

# Kahn's algorithm: the layers bottom up; what is left over lies on a cycle.
left = {m: set(d) for m, d in edges.items()}
layers = []
while left:
    ready = sorted(m for m, d in left.items() if not d)
    if not ready:
        break
    layers.append(ready)
    for m in ready:
        del left[m]
    for d in left.values():
        d.difference_update(ready)
for i, layer in enumerate(layers):
    print(f"{i}: {' '.join(layer)}")
if left:
    print("cycle among:", " ".join(sorted(left)))
    for m in sorted(left):
        print(f"  {m} -> {' '.join(sorted(d for d in edges[m] if d in left))}")
    sys.exit(1)

# The documented table: the second column's `module` names, row by row.
doc = os.path.join(os.path.dirname(os.path.abspath(src)), "docs/architecture.md")
documented = []
if os.path.exists(doc):
    rows = open(doc).read().split("| layer | modules |", 1)[-1].splitlines()[2:]
    for row in rows:
        if not row.startswith("|"):
            break
        documented.append(sorted(m.strip().strip("`") for m in row.split("|")[2].split(",")))
    if documented != layers:
        print(f"{doc}: its layer table differs from the imports:")
        for i, layer in enumerate(documented):
            print(f"  documented {i}: {' '.join(layer)}")
        sys.exit(1)
