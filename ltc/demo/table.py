"""Plain-text tables for the demo and benchmark reports."""
from __future__ import annotations


def format_table(rows: list[dict], columns: list[str], floatfmt: str = "{:.4g}") -> str:
    """Rows of dicts as an aligned text table with the given column order."""
    def cell(v):
        if isinstance(v, float):
            return floatfmt.format(v)
        return "" if v is None else str(v)

    cells = [[cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[k]) for row in cells)) for k, c in enumerate(columns)]
    line = lambda vals: "  ".join(v.rjust(w) for v, w in zip(vals, widths))
    return "\n".join([line(columns), line(["-" * w for w in widths])] + [line(r) for r in cells])
