"""Markdown tables for the reports of compare.py, tune.py and bench.py: a table from a header and rows, and the
formatting of a cell that may have no value."""


def fmt(value, spec: str, missing=None):
    """value formatted by spec (as format() does), or missing when there is no value."""
    return missing if value is None else format(value, spec)


def markdown_table(header: list[str], rows: list[list]) -> str:
    """A markdown table; None shows as '-', and a '|' inside a cell is escaped so it cannot split the row."""
    def cell(value) -> str:
        return "-" if value is None else str(value).replace("|", "\\|")
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(cell(value) for value in row) + " |" for row in rows])
