"""RUN_DIR/report/report.html: the run's report as one self-contained file.

Built with bokeh's standalone output (`bokeh.embed.file_html` with its JavaScript inlined): the
summary table and every plot of summary.md (the PNGs embedded), then an interactive embedding map:
hovering a point shows its image, its class and where it comes from. No file beside it is needed
and nothing is fetched from the network.
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

import numpy as np

from . import checkpoint
from .gallery import array_uri

THUMB = 64  # pixels of the hover thumbnails


def available() -> str | None:
    """None when bokeh can be imported, else why not (the report then skips report.html)."""
    try:
        import bokeh  # noqa: F401
    except ImportError:
        return "report.html: bokeh is not installed (pip install bokeh)"
    return None


def markdown_html(md: str, folder: Path) -> str:
    """The subset of Markdown that summary.md uses (headings, tables, images, paragraphs) as HTML;
    images are read from `folder` and embedded."""
    out: list[str] = []
    table: list[list[str]] = []

    def inline(text: str) -> str:
        text = html.escape(text)
        text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
        return re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", text)

    def flush() -> None:
        if table:
            rows = [r for r in table if not all(re.fullmatch(r":?-+:?", c) for c in r if c)]
            out.append(
                "<table>" + "".join("<tr>" + "".join(f"<td>{inline(c)}</td>" for c in r) + "</tr>" for r in rows)
            )
            out.append("</table>")
            table.clear()

    for line in md.splitlines():
        if line.startswith("|"):
            table.append([c.strip() for c in line.strip().strip("|").split("|")])
            continue
        flush()
        if m := re.fullmatch(r"(#+) (.*)", line):
            level = min(len(m.group(1)), 4)
            out.append(f"<h{level}>{inline(m.group(2))}</h{level}>")
        elif m := re.fullmatch(r"!\[([^\]]*)\]\(([^)]+)\)", line.strip()):
            png = folder / m.group(2)
            if png.exists() and png.parent == folder:
                uri = "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode()
                out.append(f'<img src="{uri}" alt="{html.escape(m.group(1))}" style="max-width:100%">')
        elif line.startswith("- "):
            out.append(f"<li>{inline(line[2:])}</li>")
        elif line.strip():
            out.append(f"<p>{inline(line)}</p>")
    flush()
    return "\n".join(out)


def embedding_map(points: dict):
    """A bokeh scatter of points["xy"] coloured by class; the hover shows the image, the class and
    the name (path) of each point."""
    from bokeh.models import ColumnDataSource, HoverTool
    from bokeh.palettes import Category10, Category20, Turbo256
    from bokeh.plotting import figure

    xy, labels, classes = points["xy"], points["labels"], points["classes"]
    if len(classes) <= 10:
        palette = list(Category10[10])
    elif len(classes) <= 20:
        palette = list(Category20[20])
    else:
        palette = [Turbo256[int(i)] for i in np.linspace(0, 255, len(classes))]
    source = ColumnDataSource(
        {
            "x": xy[:, 0],
            "y": xy[:, 1],
            "label": [classes[c] for c in labels],
            "name": points["names"],
            "thumb": [array_uri(a, THUMB) for a in points["images"]],
            "colour": [palette[c % len(palette)] for c in labels],
        }
    )
    tip = (
        '<div><img src="@thumb" width="64" height="64" class="simsiam-thumb" style="display:block">'
        "<div><b>@label</b></div><div style='font-size:10px'>@name</div></div>"
    )
    fig = figure(
        title=f"{points['method']} of {len(xy)} test-image features, coloured by class (hover: the image)",
        width=760,
        height=600,
        tools="pan,wheel_zoom,box_zoom,reset,save",
        name="embedding_map",
    )
    fig.add_tools(HoverTool(tooltips=tip))
    fig.scatter("x", "y", source=source, color="colour", size=6, alpha=0.8, legend_field="label")
    fig.legend.location = "top_left"
    fig.legend.label_text_font_size = "8pt"
    fig.xaxis.visible = fig.yaxis.visible = False
    return fig


def write(folder: Path, md: str, points: dict | None, title: str) -> Path:
    """folder/report.html from the page summary.md holds and, when given, the map's points."""
    from bokeh.embed import file_html
    from bokeh.layouts import column
    from bokeh.models import Div  # type: ignore[attr-defined]
    from bokeh.resources import INLINE

    style = (
        "<style>table{border-collapse:collapse}td{border:1px solid #ccc;padding:2px 8px;font-size:13px}"
        "body{font-family:system-ui,sans-serif}</style>"
    )
    parts = [Div(text=style + markdown_html(md, folder), width=900)]
    if points is not None:
        parts += [Div(text="<h2>Embedding map (interactive)</h2>"), embedding_map(points)]
    page = file_html(column(*parts), resources=INLINE, title=title)
    out = folder / "report.html"
    checkpoint.write_atomic(out, page)
    return out
