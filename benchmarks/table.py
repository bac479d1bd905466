"""Output helpers the benchmarks share: one JSON object per line, then a readable table."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any


def emit(rec: Mapping[str, Any], out: str | None = None) -> None:
    """Print ``rec`` as one JSON line (flushed); also append it to the file ``out`` if given."""
    line = json.dumps(rec)
    print(line, flush=True)
    if out:
        with open(out, "a") as f:
            f.write(line + "\n")


def print_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[tuple[str, str]]) -> None:
    """``rows`` as a right-aligned table of ``columns``: (key, header) pairs, widest cell wins."""
    cells = [[h for _, h in columns]] + [[str(r.get(k, "")) for k, _ in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    print()
    for row in cells:
        print("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)))
