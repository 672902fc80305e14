"""(image, prompt) pairs to train and test prompt prediction on (Reverse Stable Diffusion, Croitoru
et al. 2024, data: DiffusionDB; plus a plain folder and the shapes world).

Every reader is a list of rows (image source, prompt) with the same interface:

- `len(dataset)`: the rows that passed the cheap checks made when the dataset is built; they are
  `dataset[0]` ... `dataset[len - 1]`.
- `dataset[i]`: `(PIL RGB image, prompt)`, or None if the image cannot be decoded.
- `for image, prompt in dataset`: the good pairs only.
- `dataset.skipped`: a Counter of skipped rows by reason (the `SKIP_REASONS` below).

Bad rows are skipped and counted, never fatal, and never silent: the counts are logged as one line
on the "redraft.describe" logger (a warning when anything was skipped) when the dataset is built and
after each full pass; every undecodable image is also logged when it is found.

When images are checked: building checks what is cheap (the index parses, the prompt is not
empty, the image file or zip member exists). Decoding every image up front would take hours for
DiffusionDB's 2M images, so an image is decoded, and a broken one counted, when it is first read
(its row stays in `len`, so indices do not move, but gives None and is skipped by iteration; a
DataLoader over `dataset[i]` needs a collate function that drops None). Pass
`validate_images=True` to decode everything while building instead (fine for small sets). Counts made inside DataLoader worker
processes stay in those processes; iterate in the main process for exact counts.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import zipfile
import zlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from PIL import Image

from ..errors import InputError

log = logging.getLogger("redraft.describe")

MISSING_IMAGE = "missing image"  # the index names an image file (or zip member) that is not there
UNREADABLE_IMAGE = "unreadable image"  # the file is there but does not decode as an image
EMPTY_PROMPT = "empty prompt"  # the prompt is missing, not a string, or only whitespace
BAD_ROW = "bad row"  # an index line that does not parse or names no image; a DiffusionDB part that does not open
SKIP_REASONS = (MISSING_IMAGE, UNREADABLE_IMAGE, EMPTY_PROMPT, BAD_ROW)

IMAGE_SUFFIXES = (".png", ".webp", ".jpg", ".jpeg")
# What decoding a broken file can raise (PIL's UnidentifiedImageError is an OSError).
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, KeyError, zipfile.BadZipFile, zlib.error,
                  Image.DecompressionBombError)


def decode(data: bytes | Path) -> Image.Image:
    """The image in a file or in bytes, fully decoded, as RGB (raises if it is broken)."""
    with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as image:
        return image.convert("RGB")  # converting reads every pixel, so truncated files fail here


def _prompt_or_none(value) -> str | None:
    """The prompt stripped of surrounding whitespace, or None if it is missing, empty or not a string."""
    if not isinstance(value, str) or not value.strip():
        return None
    return value.strip()


class PairDataset:
    """The shared machinery: `rows` of (source, prompt), and `open_image(source)` per reader."""

    def __init__(self, name: str):
        self.name = name
        self.rows: list[tuple[object, str]] = []
        self.skipped: Counter[str] = Counter()
        self._unreadable: set[int] = set()  # row numbers whose image failed to decode

    def open_image(self, source) -> Image.Image:
        raise NotImplementedError

    def describe_source(self, source) -> str:
        return str(source)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[Image.Image, str] | None:
        """Row i as (image, prompt), or None if its image does not decode (counted and logged once)."""
        source, prompt = self.rows[i]
        if i in self._unreadable:
            return None
        try:
            return self.open_image(source), prompt
        except _DECODE_ERRORS as e:
            self._unreadable.add(i)
            self.skipped[UNREADABLE_IMAGE] += 1
            log.warning("%s: skipping unreadable image %s (%s: %s)", self.name, self.describe_source(source),
                        type(e).__name__, e)
            return None

    def __iter__(self) -> Iterator[tuple[Image.Image, str]]:
        for i in range(len(self.rows)):
            pair = self[i]
            if pair is not None:
                yield pair
        self.log_summary()

    def summary(self) -> str:
        """One line: how many pairs are good and how many rows were skipped, by reason."""
        line = f"{self.name}: {len(self.rows) - len(self._unreadable)} good pairs"
        if self.skipped:
            reasons = ", ".join(f"{reason} {n}" for reason, n in sorted(self.skipped.items()))
            line += f"; skipped {sum(self.skipped.values())} rows ({reasons})"
        return line

    def log_summary(self) -> None:
        log.log(logging.WARNING if self.skipped else logging.INFO, self.summary())

    def _validate_all(self) -> None:
        """Decode every image now and keep only the rows that decode (for `validate_images=True`)."""
        for i in range(len(self.rows)):
            self[i]
        self.rows = [row for i, row in enumerate(self.rows) if i not in self._unreadable]
        self._unreadable = set()


class FolderDataset(PairDataset):
    """A folder of images with an index: `prompts.csv` (columns image, prompt) or `prompts.jsonl`
    (one object a line with keys image, prompt). Image paths are relative to the folder.

    `index` names the index file inside the folder; by default prompts.csv, else prompts.jsonl.
    """

    def __init__(self, folder: str | Path, index: str | None = None, *, validate_images: bool = False):
        folder = Path(folder)
        super().__init__(f"FolderDataset({folder})")
        if not folder.is_dir():
            raise InputError(f"{folder} is not a folder: pass the folder holding the images and prompts.csv")
        if index is None:
            index = next((n for n in ("prompts.csv", "prompts.jsonl") if (folder / n).is_file()), None)
            if index is None:
                raise InputError(f"{folder} has no prompts.csv or prompts.jsonl: add an index with columns "
                                 "image,prompt, or pass index= the name of yours")
        path = folder / index
        if not path.is_file():
            raise InputError(f"no index file {path}: check the name passed as index=")
        if path.suffix == ".csv":
            records = _read_csv(path)
        elif path.suffix == ".jsonl":
            records = _read_jsonl(path)
        else:
            raise InputError(f"index {path.name} must end in .csv or .jsonl")
        for image, prompt in records:
            prompt = _prompt_or_none(prompt)
            if not isinstance(image, str) or not image.strip():
                self.skipped[BAD_ROW] += 1
            elif prompt is None:
                self.skipped[EMPTY_PROMPT] += 1
            elif not (folder / image).is_file():
                self.skipped[MISSING_IMAGE] += 1
            else:
                self.rows.append((folder / image, prompt))
        if validate_images:
            self._validate_all()
        self.log_summary()

    def open_image(self, source: Path) -> Image.Image:
        return decode(source)


def _read_csv(path: Path) -> Iterator[tuple[object, object]]:
    """(image, prompt) per CSV row; a short row gives None for what it lacks."""
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = {"image", "prompt"} - set(reader.fieldnames or ())
        if missing:
            raise InputError(f"{path} lacks the column(s) {sorted(missing)}: its first line must be a header "
                             "with columns image,prompt")
        for row in reader:
            yield row["image"], row["prompt"]


def _read_jsonl(path: Path) -> Iterator[tuple[object, object]]:
    """(image, prompt) per JSON line; a line that is not a JSON object gives (None, None), a bad row."""
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                record = None
            if isinstance(record, dict):
                yield record.get("image"), record.get("prompt")
            else:
                yield None, None


class DiffusionDBDataset(PairDataset):
    """DiffusionDB as downloaded: `part-NNNNNN.zip` files, in `root` or one folder below it (as in
    `images/`), each holding its images and `part-NNNNNN.json`, which maps an image's file name to
    {"p": prompt, "se": seed, "c": cfg, "st": steps, "sa": sampler}; optionally `metadata.parquet`.

    Prompts come from the part JSON. An image the JSON does not cover takes its prompt from
    `metadata.parquet` (columns image_name, prompt) when that file exists and pyarrow or pandas is
    installed; neither is a dependency of redraft, so without them only the JSON is used and such
    an image counts as "empty prompt". A JSON entry whose image is not in the zip is a "missing
    image". Images stay in the zips and are read when asked for (the zip is opened per read, which
    costs a little but is safe in forked DataLoader workers).
    """

    def __init__(self, root: str | Path, *, validate_images: bool = False):
        root = Path(root)
        super().__init__(f"DiffusionDBDataset({root})")
        if not root.is_dir():
            raise InputError(f"{root} is not a folder: pass the DiffusionDB folder holding the part-*.zip files")
        zips = sorted([*root.glob("part-*.zip"), *root.glob("*/part-*.zip")])
        if not zips:
            raise InputError(f"no part-*.zip files in {root} or its subfolders: download DiffusionDB parts "
                             "(e.g. images/part-000001.zip) into it")
        self._parquet: dict[str, str] | None = None  # read on first need
        self._parquet_path = root / "metadata.parquet"
        for zip_path in zips:
            self._add_part(zip_path)
        if validate_images:
            self._validate_all()
        self.log_summary()

    def _add_part(self, zip_path: Path) -> None:
        """Add the rows of one part: its images, with prompts from its JSON (inside the zip or beside it)."""
        try:
            with zipfile.ZipFile(zip_path) as z:
                names = z.namelist()
                json_name = next((n for n in names if Path(n).name == zip_path.stem + ".json"), None)
                text = z.read(json_name) if json_name else None
            if text is None and zip_path.with_suffix(".json").is_file():
                text = zip_path.with_suffix(".json").read_bytes()
            part = json.loads(text) if text is not None else {}
        except (zipfile.BadZipFile, OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
            log.warning("%s: skipping unreadable part %s (%s)", self.name, zip_path.name, e)
            self.skipped[BAD_ROW] += 1
            return
        part = part if isinstance(part, dict) else {}
        images = {Path(n).name: n for n in names if n.lower().endswith(IMAGE_SUFFIXES)}
        for file_name, member in images.items():
            entry = part.get(file_name)
            prompt = _prompt_or_none(entry.get("p")) if isinstance(entry, dict) else None
            if file_name not in part:  # the JSON does not cover it: try the parquet
                prompt = _prompt_or_none(self._parquet_prompts().get(file_name))
            if prompt is None:
                self.skipped[EMPTY_PROMPT] += 1
            else:
                self.rows.append(((zip_path, member), prompt))
        self.skipped[MISSING_IMAGE] += sum(1 for file_name in part if file_name not in images)

    def _parquet_prompts(self) -> dict[str, str]:
        if self._parquet is None:
            self._parquet = read_parquet_prompts(self._parquet_path) if self._parquet_path.is_file() else {}
        return self._parquet

    def open_image(self, source: tuple[Path, str]) -> Image.Image:
        zip_path, member = source
        with zipfile.ZipFile(zip_path) as z:
            return decode(z.read(member))

    def describe_source(self, source: tuple[Path, str]) -> str:
        return f"{source[0].name}:{source[1]}"


def read_parquet_prompts(path: Path) -> dict[str, str]:
    """image_name -> prompt from DiffusionDB's metadata.parquet, with pyarrow or else pandas.

    Returns {} (and logs why) when neither is installed or the file does not read.
    """
    try:
        try:
            import pyarrow.parquet as pq

            table = pq.read_table(path, columns=["image_name", "prompt"]).to_pydict()
            return dict(zip(table["image_name"], table["prompt"]))
        except ImportError:
            import pandas as pd

            frame = pd.read_parquet(path, columns=["image_name", "prompt"])
            return dict(zip(frame["image_name"], frame["prompt"]))
    except ImportError:
        reason = "it needs pyarrow or pandas (pip install pyarrow)"
    except (OSError, ValueError, KeyError) as e:  # pyarrow's ArrowInvalid is a ValueError
        reason = f"{type(e).__name__}: {e}"
    log.warning("%s is not read (%s); using the part JSON files only", path, reason)
    return {}


class ShapesDataset(PairDataset):
    """Scenes of the shapes world (`redraft.shapes.world`), drawn when read; prompts in full form
    ("a large red circle on a white background"). Nothing is ever skipped."""

    def __init__(self, seed: int, n: int, split: str = "train"):
        from ..shapes import world

        super().__init__(f"ShapesDataset(seed={seed}, n={n}, split={split})")
        if not isinstance(n, int) or n < 0:
            raise InputError(f"n must be a non-negative integer, not {n!r}")
        if split not in ("train", "test"):
            raise InputError(f"split must be 'train' or 'test', not {split!r}")
        self._render = world.render
        self.rows = [(scene, scene.prompt()) for scene in world.scenes(seed, n, split)]

    def open_image(self, scene) -> Image.Image:
        return self._render(scene)

    def describe_source(self, scene) -> str:
        return repr(scene)


def open_pairs(data: str | Path, *, seed: int = 0, n: int = 2000) -> PairDataset:
    """The reader a `--data` option names: "shapes" (n training scenes of the seed), a folder with
    DiffusionDB's part-*.zip files, or a folder with prompts.csv / prompts.jsonl."""
    if str(data) == "shapes":
        return ShapesDataset(seed, n, "train")
    folder = Path(data)
    if not folder.is_dir():
        raise InputError(f"--data {data}: not 'shapes' and not a folder; give a folder with prompts.csv / "
                         "prompts.jsonl, or with DiffusionDB's part-*.zip files")
    zips = [*folder.glob("part-*.zip"), *folder.glob("*/part-*.zip")]
    return DiffusionDBDataset(folder) if zips else FolderDataset(folder)
