"""Render a report's display tables as one Markdown document (leaderboard.md)."""

from __future__ import annotations

from silc_eval.report.build import Report
from silc_eval.report.layout import ROW_PUBLISHED, DisplayTable, display_tables, intro_lines


def md_cell(text: str) -> str:
    """Return text safe inside a Markdown table cell (pipes escaped, no line breaks)."""
    return text.replace("|", "\\|").replace("\n", " ")


def md_table(table: DisplayTable) -> str:
    """Return a GitHub-flavoured Markdown table; published rows have their first cell in italics."""
    lines = ["| " + " | ".join(md_cell(h) for h in table.header) + " |",
             "|" + "|".join(" ---: " if n else " --- " for n in table.numeric) + "|"]
    for cells, kind in zip(table.rows, table.kinds):
        cells = [md_cell(c) for c in cells]
        if kind == ROW_PUBLISHED:
            cells[0] = f"*{cells[0]}*"
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def render_markdown(report: Report) -> str:
    """Return the whole Markdown report: title, intro, then each table under its own heading."""
    parts = ["# silc-eval leaderboard\n", "\n".join(intro_lines(report)) + "\n"]
    for table in display_tables(report):
        parts.append(f"## {table.title}\n")
        parts.append(md_table(table) if table.rows else "(no rows)\n")
        parts.extend(f"{note}\n" for note in table.notes)
    return "\n".join(parts)
