"""Markdown for the reports of compare.py, explain.py, tune.py and bench.py: a table from a header and rows, the
formatting of a cell that may have no value, and text in a code block (a sample, a run's text over training)."""

import re


def fmt(value, spec: str, missing=None):
    """value formatted by spec (as format() does), or missing when there is no value."""
    return missing if value is None else format(value, spec)


def markdown_table(header: list[str], rows: list[list]) -> str:
    """A markdown table; None shows as '-', and a '|' inside a cell is escaped so it cannot split the row."""
    def cell(value) -> str:
        return "-" if value is None else str(value).replace("|", "\\|")
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(cell(value) for value in row) + " |" for row in rows])


def fenced(text: str) -> str:
    """text in a code block whose fence is longer than any run of backticks inside it."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}text\n{text}\n{fence}"


def text_over_training(samples: list[tuple[int, str]]) -> list[str]:
    """The markdown lines that show a run's samples at its evaluations (runlog.samples_over_training), in order."""
    lines = []
    for iter_num, text in samples:
        lines += [f"At iter {iter_num:,}:", "", fenced(text), ""]
    return lines
