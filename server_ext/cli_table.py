"""Plain-text tables for the `fedhub` CLI: columns padded to their widest cell."""

from __future__ import annotations

import sys


def print_table(rows: list[list], out=None) -> None:
    """Print `rows` (the first one is the header) with two spaces between columns."""
    out = out or sys.stdout
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip(), file=out)
