"""Writing outputs without ever leaving a half-written file or silently replacing a user's file."""

from __future__ import annotations

import errno
import json
import os
import stat
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path

from ..errors import InputError

# os.link fails with these where a file system has no hard links (FAT, some network and FUSE mounts)
_NO_LINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.ENOSYS, errno.EMLINK}
_umask_lock = threading.Lock()


@contextmanager
def atomic_path(path: str | Path, replace: bool = True):
    """Yield a temporary path beside `path`; on success it is published as `path` in one step, with
    the permissions a newly created file gets (0o666 less the umask; an overwritten file keeps its own).

    replace=True (the default) overwrites whatever is at `path`: for outputs that a run owns (a batch's
    rows, a benchmark's report). replace=False never overwrites: if `path` exists when the file is
    published (even if another writer created it a moment ago) it is an InputError, and of two writers
    racing to one new path exactly one wins. Front-ends pass replace=force (the CLI's --force).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, _new_file_mode(path))
        _publish(tmp, path, replace)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _publish(tmp: str, path: Path, replace: bool) -> None:
    """Rename `tmp` onto `path`; without `replace`, only if no file is there (atomically: a hard link)."""
    if replace:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)  # FileExistsError if `path` exists, whoever made it
    except FileExistsError:
        raise _exists(path) from None
    except OSError as e:
        if e.errno not in _NO_LINKS:
            raise
        _reserve(path)  # no hard links here: claim the name exclusively, then fill it
        os.replace(tmp, path)
        return
    os.remove(tmp)


def _reserve(path: Path) -> None:
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        raise _exists(path) from None


def _exists(path: Path) -> InputError:
    return InputError(f"{path} exists; choose another output path or pass --force to replace it.")


def _new_file_mode(path: Path) -> int:
    """The mode `path` would get from open(path, "w"): its own if it exists, else 0o666 less the umask."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return 0o666 & ~_umask()


def _umask() -> int:
    """The process's umask, without changing it where /proc tells it (Linux), else read under a lock."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _umask_lock:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def write_json(path: str | Path, data, replace: bool = True) -> Path:
    """Write `data` as indented JSON, atomically (`replace`: as in `atomic_path`)."""
    path = Path(path)
    with atomic_path(path, replace) as tmp:
        tmp.write_text(json.dumps(data, indent=1))
    return path


def save_figure(fig, path: str | Path, dpi: int = 100, replace: bool = True) -> Path:
    """Save a matplotlib figure as PNG, atomically, and close it (`replace`: as in `atomic_path`)."""
    import matplotlib.pyplot as plt

    path = Path(path)
    with atomic_path(path, replace) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    plt.close(fig)
    return path


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_image(image, path: str | Path, metadata: dict | None = None, replace: bool = True) -> Path:
    """Save a PIL image atomically (format from the suffix; `replace`: as in `atomic_path`). `metadata`
    (JSON values) goes into a PNG's "redraft" text entry: what made the picture (prompts, controls),
    so it can be made again."""
    path = Path(path)
    fmt = image_format(path)
    options = {}
    if metadata is not None and fmt == "PNG":
        from PIL.PngImagePlugin import PngInfo

        options["pnginfo"] = info = PngInfo()
        info.add_text("redraft", json.dumps(metadata))
    with atomic_path(path, replace) as tmp:
        image.save(tmp, format=fmt, **options)
    return path


def image_format(path: str | Path) -> str:
    """PIL's format name for an output path's suffix, or an InputError that lists the suffixes."""
    path = Path(path)
    fmt = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}.get(path.suffix.lower())
    if fmt is None:
        raise InputError(f"{path}: unknown image type {path.suffix!r}; use .png, .jpg or .webp.")
    return fmt


def check_output(path: str | Path, force: bool, image: bool = True) -> Path:
    """An output path checked before any work: an image type (`image`) that does not exist (unless `force`)."""
    if image:
        image_format(path)
    refuse_overwrite(path, force)
    return Path(path)


def refuse_overwrite(path: str | Path, force: bool) -> None:
    """Outputs never silently replace an existing file: the early check, before any work. It cannot see
    a file that another writer creates later: save with replace=force too (`atomic_path`)."""
    if Path(path).exists() and not force:
        raise _exists(Path(path))
