"""Writing outputs without ever leaving a half-written file or silently replacing a user's file."""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

from ..errors import InputError


@contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path beside `path`; on success it is renamed onto `path` in one step."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json(path: str | Path, data) -> Path:
    """Write `data` as indented JSON, atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1))
    return path


def save_figure(fig, path: str | Path, dpi: int = 100) -> Path:
    """Save a matplotlib figure as PNG, atomically, and close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    plt.close(fig)
    return path


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_image(image, path: str | Path, metadata: dict | None = None) -> Path:
    """Save a PIL image atomically (format from the suffix). `metadata` (JSON values) goes into a PNG's
    "redraft" text entry: what made the picture (prompts, controls), so it can be made again."""
    path = Path(path)
    fmt = _format(path)
    options = {}
    if metadata is not None and fmt == "PNG":
        from PIL.PngImagePlugin import PngInfo

        options["pnginfo"] = info = PngInfo()
        info.add_text("redraft", json.dumps(metadata))
    with atomic_path(path) as tmp:
        image.save(tmp, format=fmt, **options)
    return path


def _format(path: Path) -> str:
    fmt = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}.get(path.suffix.lower())
    if fmt is None:
        raise InputError(f"{path}: unknown image type {path.suffix!r}; use .png, .jpg or .webp.")
    return fmt


def refuse_overwrite(path: str | Path, force: bool) -> None:
    """Outputs never silently replace an existing file."""
    if Path(path).exists() and not force:
        raise InputError(f"{path} exists; choose another output path or pass --force to replace it.")
