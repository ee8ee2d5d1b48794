"""A self-contained HTML report: settings, a table of figures, and captioned rows of images.

Every image is embedded as a base64 PNG data URI, so the one .html file can be mailed or published
as it is. The same inputs give the same bytes (no timestamps anywhere).
"""

from __future__ import annotations

import base64
import html
import io
import json
from dataclasses import dataclass
from pathlib import Path

from torch import Tensor

from imagetext.files import atomic_path
from imagetext.images import tensor_to_pil

TILE_WIDTH_PX = 96  # small images are shown enlarged, with hard pixel edges

STYLE = f"""
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
table.figures {{ border-collapse: collapse; margin-bottom: 2em; }}
table.figures th, table.figures td {{ border: 1px solid #ccc; padding: 4px 10px; text-align: right; }}
table.figures th:first-child, table.figures td:first-child {{ text-align: left; }}
.row {{ margin: 0.8em 0; }}
.caption {{ font-weight: 600; margin-bottom: 0.2em; }}
.tiles {{ display: flex; gap: 6px; flex-wrap: wrap; }}
figure {{ margin: 0; text-align: center; font-size: 0.75em; }}
figure img {{ width: {TILE_WIDTH_PX}px; image-rendering: pixelated; display: block; border: 2px solid #ccc; }}
figure.ok img {{ border-color: #2a2; }}
figure.wrong img {{ border-color: #d22; }}
pre {{ background: #f6f6f6; padding: 0.8em; }}
"""


@dataclass
class Tile:
    """One image with a label under it; `ok` is a verdict shown as a green (True) or red (False) frame."""

    image: Tensor  # [3, H, W] in [-1, 1]
    label: str
    ok: bool | None = None


@dataclass
class Row:
    caption: str
    tiles: list[Tile]


@dataclass
class Section:
    title: str
    rows: list[Row]


def png_data_uri(image: Tensor) -> str:
    """An image [3, H, W] in [-1, 1] as a `data:image/png;base64,…` URI."""
    buffer = io.BytesIO()
    tensor_to_pil(image).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def render_report(
    title: str, settings: dict[str, object], table: dict[str, dict[str, str]], sections: list[Section]
) -> str:
    """The report as one HTML string.

    `table` maps each figure's name to its formatted value per column ({figure: {column: text}});
    a column missing for a figure shows as an empty cell.
    """
    columns = list(dict.fromkeys(column for values in table.values() for column in values))
    header = "".join(f"<th>{html.escape(column)}</th>" for column in columns)
    body = "\n".join(
        f"<tr><td>{html.escape(figure)}</td>"
        + "".join(f"<td>{html.escape(values.get(column, ''))}</td>" for column in columns)
        + "</tr>"
        for figure, values in table.items()
    )
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f'<table class="figures"><tr><th>figure</th>{header}</tr>\n{body}\n</table>',
    ]
    for section in sections:
        parts.append(f"<h2>{html.escape(section.title)}</h2>")
        parts += [_render_row(row) for row in section.rows]
    parts.append(f"<h2>settings</h2><pre>{html.escape(json.dumps(settings, indent=2, sort_keys=True))}</pre>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def write_report(
    path: str | Path, title: str, settings: dict[str, object], table: dict[str, dict[str, str]], sections: list[Section]
) -> Path:
    """Write `render_report(...)` to `path` atomically."""
    path = Path(path)
    with atomic_path(path) as temporary:
        temporary.write_text(render_report(title, settings, table, sections), encoding="utf-8")
    return path


def _render_row(row: Row) -> str:
    tiles = []
    for tile in row.tiles:
        verdict = {True: ' class="ok"', False: ' class="wrong"', None: ""}[tile.ok]
        tiles.append(
            f'<figure{verdict}><img src="{png_data_uri(tile.image)}" alt="{html.escape(tile.label)}">'
            f"<figcaption>{html.escape(tile.label)}</figcaption></figure>"
        )
    return (
        f'<div class="row"><div class="caption">{html.escape(row.caption)}</div>'
        f'<div class="tiles">{"".join(tiles)}</div></div>'
    )
