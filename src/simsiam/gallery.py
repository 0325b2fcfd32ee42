"""Self-contained HTML galleries of images: search results, duplicate groups, clusters. One file,
thumbnails embedded as base64 JPEG, no script: it opens in any browser, mailed or moved anywhere."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from . import checkpoint
from .data.datasets import decode_image

THUMB = 128  # pixels, the shorter side (centre-cropped square)

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.3em; } h2 { font-size: 1.05em; margin: 1.4em 0 0.4em; }
.row { display: flex; flex-wrap: wrap; gap: 8px; }
figure { margin: 0; width: 136px; font-size: 11px; overflow-wrap: anywhere; }
figure img { width: 128px; height: 128px; display: block; border: 4px solid transparent; }
figure.first img { border-color: #2a7ae2; }
.missing { width: 128px; height: 128px; background: #eee; display: flex; align-items: center; justify-content: center; }
"""


def thumbnail(path: str, size: int = THUMB) -> str | None:
    """A data: URI of the image at `path` as a size x size JPEG, or None when it cannot be read."""
    a = decode_image(str(path), size)
    return None if a is None else array_uri(a)


def array_uri(a: np.ndarray, size: int | None = None) -> str:
    """A data: URI of an RGB uint8 (H, W, 3) array as JPEG, resized to size x size when given."""
    im = Image.fromarray(a)
    if size is not None and im.size != (size, size):
        im = im.resize((size, size), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def write_gallery(
    out: str | Path, title: str, groups: Sequence[tuple[str, Sequence[tuple[str, str]]]], note: str = ""
) -> Path:
    """Write one HTML page: `title`, then per group (heading, [(image path, caption), ...]) a row of
    thumbnails, the first of each row outlined (the query, the group's first, the most typical)."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    if note:
        parts.append(f"<p>{html.escape(note)}</p>")
    for heading, items in groups:
        parts.append(f"<h2>{html.escape(heading)}</h2>")
        parts.append('<div class="row">')
        for i, (path, caption) in enumerate(items):
            uri = thumbnail(path)
            img = (
                f'<img src="{uri}" alt="{html.escape(str(path))}">' if uri else '<div class="missing">unreadable</div>'
            )
            cls = ' class="first"' if i == 0 else ""
            parts.append(
                f'<figure{cls} title="{html.escape(str(path))}">{img}'
                f"<figcaption>{html.escape(caption)}</figcaption></figure>"
            )
        parts.append("</div>")
    parts.append("</body></html>")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    checkpoint.write_atomic(out, "\n".join(parts) + "\n")
    return out
