"""Render a report as one self-contained HTML file: inline CSS, plots as base64 PNG, no external URL."""

from __future__ import annotations

import base64
from html import escape

from silc_eval import __version__
from silc_eval.report.build import Report
from silc_eval.report.layout import DisplayTable, display_tables, intro_lines
from silc_eval.report.plots import compute_scatter, group_bar_chart

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2em auto; max-width: 1200px;
       padding: 0 1em; color: #1b1b1b; line-height: 1.4; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.85em; }
th, td { border: 1px solid #d0d0d0; padding: 0.25em 0.6em; vertical-align: top; }
th { background: #f2f2f2; text-align: left; }
div.scroll { overflow-x: auto; }
tbody td:first-child { white-space: nowrap; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr.baseline td { font-weight: 600; background: #f7fbff; }
tr.published td { font-style: italic; color: #555; background: #fbfbf5; }
p.note { font-size: 0.85em; color: #555; }
figure { margin: 0.8em 0; } figure img { max-width: 100%; height: auto; }
footer { margin-top: 3em; font-size: 0.8em; color: #666; }
"""


def html_table(table: DisplayTable) -> str:
    """Return a <table> of a display table; rows carry their kind (own, baseline, published) as class."""
    def cls(numeric: bool) -> str:
        return ' class="num"' if numeric else ""

    head = "".join(f"<th{cls(n)}>{escape(h)}</th>" for h, n in zip(table.header, table.numeric))
    body = "\n".join(f'<tr class="{kind}">' + "".join(f"<td{cls(n)}>{escape(c)}</td>"
                                                      for c, n in zip(cells, table.numeric)) + "</tr>"
                     for cells, kind in zip(table.rows, table.kinds))
    return (f'<div class="scroll"><table id="{escape(table.key)}">\n<thead><tr>{head}</tr></thead>\n<tbody>\n'
            f'{body}\n</tbody>\n</table></div>')


def img_tag(png: bytes, alt: str) -> str:
    """Return an <img> holding png inline as a base64 data URI."""
    data = base64.b64encode(png).decode("ascii")
    return f'<figure><img alt="{escape(alt)}" src="data:image/png;base64,{data}"></figure>'


def provenance_line(report: Report) -> str:
    """Return who made the records: silc-eval versions and git commits, in sorted order."""
    versions = sorted({r.get("provenance", {}).get("silc_eval_version", "?") for r in report.records})
    commits = sorted({str(r.get("provenance", {}).get("git_commit", "?"))[:12] for r in report.records})
    return (f"Built by silc-eval {__version__} from {len(report.records)} result records (silc-eval "
            f"{', '.join(versions)}; commits {', '.join(commits)}).")


def render_html(report: Report) -> str:
    """Return the complete HTML report: intro, tables with per-group bar charts, compute plot, published list."""
    tables = display_tables(report)
    by_key = {t.key: t for t in tables}
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             "<title>silc-eval report</title>", f"<style>{STYLE}</style></head><body>",
             "<h1>silc-eval report</h1>"]
    parts += [f"<p>{escape(line)}</p>" for line in intro_lines(report)]

    def section(table: DisplayTable, extra: str = "") -> None:
        parts.append(f"<h2>{escape(table.title)}</h2>")
        parts.append(html_table(table) if table.rows else "<p>(no rows)</p>")
        parts.extend(f'<p class="note">{escape(note)}</p>' for note in table.notes)
        if extra:
            parts.append(extra)

    scatter = compute_scatter(report)
    section(by_key["summary"], img_tag(scatter, "score versus training compute") if scatter else
            '<p class="note">No model card gives training FLOPs: no compute plot.</p>')
    for group in report.groups:
        section(by_key[f"group-{group}"], img_tag(group_bar_chart(report, group), f"{group} bar chart"))
    if "published" in by_key:
        section(by_key["published"])
    parts.append(f"<footer>{escape(provenance_line(report))}</footer></body></html>")
    return "\n".join(parts) + "\n"
