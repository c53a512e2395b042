"""Building blocks of a self-contained HTML document: sections, tables, Plotly figures with plotly.js inline once,
images as base64 data URIs. Nothing is fetched when the file is opened."""

from __future__ import annotations

import base64
import html
from typing import Any

import numpy as np

from medimg.errors import MedimgError


class Figure:
    """A Plotly figure in a document's parts; `embed_figures` includes plotly.js inline with the first one."""

    def __init__(self, figure: Any) -> None:
        self.figure = figure


def embed_figures(parts: list[Any]) -> list[str]:
    flat: list[Any] = []
    for part in parts:
        flat.extend(part if isinstance(part, list) else [part])
    out, library_included = [], False
    for part in flat:
        if isinstance(part, Figure):
            out.append(
                part.figure.to_html(
                    full_html=False,
                    include_plotlyjs=not library_included,
                    config={"displaylogo": False, "responsive": True},
                    default_width="100%",
                    default_height="420px",
                )
            )
            library_included = True
        else:
            out.append(part)
    return out


def section(title: str, body: list[Any] | str) -> list[Any]:
    return [f"<section><h2>{html.escape(title)}</h2>", *(body if isinstance(body, list) else [body]), "</section>"]


def table(header: list[str], rows: list[list[Any]] | list[tuple[Any, ...]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(cell_text(v))}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def cell_text(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e-3 and value else f"{value:.3f}"
    if isinstance(value, list | tuple):
        return ", ".join(map(str, value))
    return str(value)


def paragraph(text: str) -> str:
    return f"<p>{html.escape(text)}</p>"


def png_uri(image: np.ndarray, display: int = 160) -> str:
    import cv2

    from medimg.model.explain import for_display

    ok, encoded = cv2.imencode(".png", cv2.cvtColor(for_display(image, display), cv2.COLOR_RGB2BGR))
    if not ok:
        raise MedimgError("could not encode an example image as PNG for the report.")
    return "data:image/png;base64," + base64.b64encode(encoded.tobytes()).decode("ascii")


STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#1d2733;line-height:1.45}h1{margin-bottom:.2em}
h2{border-bottom:2px solid #dde3ea;padding-bottom:.2em;margin-top:1.8em}
.meta{color:#5b6776}
.warning{background:#fdecea;border:2px solid #c62828;padding:.8em 1em;border-radius:6px;color:#7f1d1d}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #d5dbe2;padding:.3em .7em;text-align:left}
th{background:#f2f5f8}.ok{color:#1b5e20}.bad{color:#b71c1c}.gallery{display:flex;flex-wrap:wrap;gap:1em}
figure{margin:0;width:340px}figure img{width:160px;height:160px;image-rendering:pixelated;margin-right:4px}
figcaption{font-size:.85em;color:#425061}
"""


def document(title: str, body: str, footer: str = "") -> str:
    """The whole page: head with the inline style, the body, and a footer line."""
    return (
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<meta name='viewport' content='width=device-width, initial-scale=1'><style>{STYLE}</style></head>"
        f"<body>{body}<footer><p class='meta'>{html.escape(footer)}</p></footer></body></html>"
    )
