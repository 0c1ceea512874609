"""Tables as text: GitHub Markdown, booktabs LaTeX and CSV, with a note under a table where it has one.

Every report (probes, agents) renders its tables with these, so a number reads the same in each.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

MISSING = "-"  # a missing value in Markdown (LaTeX: --; CSV: empty)
NOTE = "note"  # DataFrame.attrs key: a line that to_markdown and to_latex write under the table, never the CSV


def _cells(table: pd.DataFrame, digits: int) -> list[list[str]]:
    def cell(value) -> str:
        if isinstance(value, (float, np.floating)):
            return MISSING if math.isnan(value) else f"{value:.{digits}f}"
        return str(value)

    return [
        [str(index), *map(cell, row)] for index, row in zip(table.index, table.itertuples(index=False), strict=True)
    ]


def _numeric(table: pd.DataFrame) -> list[bool]:
    return [pd.api.types.is_numeric_dtype(dtype) for dtype in table.dtypes]


def to_markdown(table: pd.DataFrame, digits: int = 3, note: str | None = None) -> str:
    """A GitHub-flavoured Markdown table; numbers right-aligned with `digits` decimals, missing as '-';
    `note`, if any, as a paragraph under it."""
    header = [str(table.index.name or ""), *map(str, table.columns)]
    align = [":--", *("--:" if n else ":--" for n in _numeric(table))]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in _cells(table, digits)]
    if note:
        lines += ["", f"Note: {note}"]  # the blank line ends the table
    return "\n".join(lines) + "\n"


_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


def _latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text)


def to_latex(table: pd.DataFrame, digits: int = 3, note: str | None = None) -> str:
    """A booktabs `tabular` (needs \\usepackage{booktabs}); a summary row (mean, across_categories)
    is set off by a rule; `note`, if any, in small type in a paragraph under it."""
    spec = "l" + "".join("r" if n else "l" for n in _numeric(table))
    header = [str(table.index.name or ""), *map(str, table.columns)]
    lines = [rf"\begin{{tabular}}{{{spec}}}", r"\toprule", " & ".join(map(_latex_escape, header)) + r" \\", r"\midrule"]
    for row in _cells(table, digits):
        if row[0] in ("mean", "across_categories", "mean_abs_difference"):
            lines.append(r"\midrule")
        lines.append(" & ".join("--" if c == MISSING else _latex_escape(c) for c in row) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    if note:
        lines.append(rf"\par\smallskip{{\footnotesize Note: {_latex_escape(note)}\par}}")
    return "\n".join(lines) + "\n"


def to_csv(table: pd.DataFrame) -> str:
    """CSV with the index as first column, numbers to 6 decimals, missing values empty; a plain table (a
    table's note is in its Markdown and LaTeX only)."""
    return table.to_csv(float_format="%.6f", lineterminator="\n")
