"""A report as one self-contained HTML file (PNGs inline as base64, no external resource), or as
Markdown with its PNGs beside it (`runs.md`, `runs-loss.png`, …); the suffix of the output
path picks which."""

from __future__ import annotations

import base64
import html
from pathlib import Path

from osora.fileio import atomic_write_bytes, atomic_write_text
from osora.report.build import Plot, Report
from osora.report.tables import Cell, Table

STYLE = """body{font-family:system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;margin:0.5em 0 1.5em}
th,td{border:1px solid #ccc;padding:0.25em 0.6em;text-align:right}
th{background:#f3f3f3}td:first-child,td:nth-child(2){text-align:left;font-family:monospace}
img{max-width:100%}"""


def check_format(out: Path) -> None:
    if out.suffix not in (".html", ".md"):
        raise ValueError(f"report {out}: unknown format {out.suffix!r}; end the path in .html "
                         "(one self-contained file) or .md (Markdown with PNGs beside it)")


def write_report(report: Report, out: Path) -> list[Path]:
    """Write `report` to `out` (.html or .md); returns every file written."""
    check_format(out)
    if out.suffix == ".html":
        atomic_write_text(out, to_html(report))
        return [out]
    text, images = to_markdown(report, out.stem)
    for name, data in images.items():  # images first: the Markdown never points at a missing one
        atomic_write_bytes(out.parent / name, data)
    atomic_write_text(out, text)
    return [out, *(out.parent / name for name in images)]


def cell(value: Cell) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def to_html(report: Report) -> str:
    esc = html.escape
    body = [f"<h1>{esc(report.title)}</h1>", *(f"<p>{esc(n)}</p>" for n in report.notes)]
    for section in report.sections:
        body.append(f"<h2>{esc(section.title)}</h2>")
        if isinstance(section, Plot):
            data = base64.b64encode(section.png).decode("ascii")
            body.append(f'<img alt="{esc(section.title)}" src="data:image/png;base64,{data}">')
        else:
            head = "".join(f"<th>{esc(c)}</th>" for c in section.columns)
            rows = "".join("<tr>" + "".join(f"<td>{esc(cell(v))}</td>" for v in row) + "</tr>"
                           for row in section.rows)
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{esc(report.title)}</title><style>{STYLE}</style></head>\n<body>\n"
            + "\n".join(body) + "\n</body></html>\n")


def to_markdown(report: Report, stem: str) -> tuple[str, dict[str, bytes]]:
    """The Markdown text and its images by file name (`<stem>-<plot>.png`)."""
    lines = [f"# {report.title}", "", *(f"{n}  " for n in report.notes)]
    images: dict[str, bytes] = {}
    for section in report.sections:
        lines += ["", f"## {section.title}", ""]
        if isinstance(section, Plot):
            name = f"{stem}-{section.name}.png"
            images[name] = section.png
            lines.append(f"![{section.title}]({name})")
        else:
            lines += _markdown_table(section)
    return "\n".join(lines) + "\n", images


def _markdown_table(table: Table) -> list[str]:
    def row(cells) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    return [row(table.columns), "|" + "---|" * len(table.columns),
            *(row(cell(v) for v in r) for r in table.rows)]
