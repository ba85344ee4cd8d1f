"""Where ``dataset build`` reads image–caption pairs: an image folder, a Hugging Face dataset or the frame library.

Every source yields :class:`Item` in a fixed order, each with a stable ``source_id`` (what resuming skips) and a
``load`` that reads it only when needed, so one unreadable image is reported and skipped, never fatal.

- folder: the Hugging Face *imagefolder* convention, ``metadata.jsonl`` (one JSON object a line) or
  ``metadata.csv`` (a header row) naming ``file_name`` and a caption column (``text``, else ``caption``).
- Hugging Face ``datasets``: a hub name (``hf:NAME`` or a name like ``user/set``) or a folder written by
  ``save_to_disk``; needs the ``datasets`` package.
- the frame library (``library:`` or ``library:DIR``): the prompt is the caption, the frame's own depth is
  exact and no estimator runs (demo frames make a synthetic dataset for tests and smoke runs).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from ..backends.ldm3d_files import HUB_ID
from ..estimators.inputs import ImageError, read_image, to_rgb

LIBRARY_PREFIX, HUB_PREFIX = "library:", "hf:"
CAPTION_COLUMNS = ("text", "caption")


class SourceError(ValueError):
    """The source as a whole cannot be read (the message says why and what to do)."""


@dataclass(frozen=True)
class Item:
    source_id: str  # stable across runs: what resuming skips
    caption: str
    load: Callable[[], tuple[np.ndarray, np.ndarray | None]]  # (RGB uint8, exact depth uint16 or None)


@dataclass(frozen=True)
class Source:
    description: str
    items: Callable[[], Iterator[Item]]
    exact_depth: bool  # depth comes with the items (library); otherwise an estimator makes it


def open_source(spec: str, *, caption_column: str | None = None, image_column: str = "image",
                split: str = "train") -> Source:
    """The source ``spec`` names (see the module docstring), checked before any item is read."""
    if spec.startswith(LIBRARY_PREFIX):
        return _library_source(spec[len(LIBRARY_PREFIX):])
    path = Path(spec).expanduser()
    if path.is_dir():
        if (path / "metadata.jsonl").is_file() or (path / "metadata.csv").is_file():
            return _folder_source(path, caption_column)
        if (path / "dataset_info.json").is_file() or (path / "state.json").is_file() \
                or (path / "dataset_dict.json").is_file():
            return _datasets_source(str(path), caption_column, image_column, split, from_disk=True)
        raise SourceError(f"{path} has no metadata.jsonl or metadata.csv (file_name + caption column, the Hugging "
                          "Face imagefolder layout) and is not a dataset saved by the datasets package")
    name = spec[len(HUB_PREFIX):] if spec.startswith(HUB_PREFIX) else spec
    if spec.startswith(HUB_PREFIX) or (HUB_ID.match(name) and not path.exists()):
        return _datasets_source(name, caption_column, image_column, split, from_disk=False)
    raise SourceError(f"source {spec!r} is not a folder, a Hugging Face dataset name (hf:NAME) or library:[DIR]")


# ------------------------------------------------------------------ image folder


def _read_metadata(folder: Path) -> list[dict[str, Any]]:
    jsonl, table = folder / "metadata.jsonl", folder / "metadata.csv"
    rows: list[dict[str, Any]] = []
    if jsonl.is_file():
        for number, line in enumerate(jsonl.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise SourceError(f"{jsonl}, line {number}: not JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise SourceError(f"{jsonl}, line {number}: expected a JSON object")
            rows.append(row)
        return rows
    with table.open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def _caption_column(columns: set[str], asked: str | None, where: str) -> str:
    if asked is not None:
        if asked not in columns:
            raise SourceError(f"{where}: no caption column {asked!r}; columns are {', '.join(sorted(columns))}")
        return asked
    for name in CAPTION_COLUMNS:
        if name in columns:
            return name
    raise SourceError(f"{where}: no caption column (text or caption; pick one with --caption-column); columns are "
                      f"{', '.join(sorted(columns))}")


def _folder_source(folder: Path, caption_column: str | None) -> Source:
    try:
        rows = _read_metadata(folder)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise SourceError(f"cannot read the metadata in {folder}: {exc}") from None
    if not rows:
        raise SourceError(f"{folder}: the metadata lists no images")
    columns = set().union(*(row.keys() for row in rows))
    if "file_name" not in columns:
        raise SourceError(f"{folder}: the metadata has no file_name column; columns are {', '.join(sorted(columns))}")
    column = _caption_column(columns, caption_column, str(folder))
    root = folder.resolve()

    def items() -> Iterator[Item]:
        for row in rows:
            name = str(row.get("file_name") or "")
            path = (folder / name).resolve()
            if not path.is_relative_to(root):  # "../x.png" in someone's metadata
                yield Item(name, "", _refuse(f"{name}: outside the source folder"))
                continue
            yield Item(name, str(row.get(column) or ""), lambda path=path: (read_image(path)[0], None))

    return Source(f"image folder {folder} ({len(rows)} rows, captions from {column!r})", items, exact_depth=False)


def _refuse(reason: str) -> Callable[[], Any]:
    def load() -> Any:
        raise ImageError(reason)
    return load


# ------------------------------------------------------------------ Hugging Face datasets


def _datasets_source(name: str, caption_column: str | None, image_column: str, split: str, *,
                     from_disk: bool) -> Source:
    try:
        import datasets
    except ImportError:
        raise SourceError(f"{name} is read with the Hugging Face `datasets` package, which is not installed: "
                          "pip install datasets (or export it as an image folder with a metadata.jsonl)") from None
    try:
        data = datasets.load_from_disk(name) if from_disk else datasets.load_dataset(name, split=split)
    except (OSError, ValueError, ConnectionError) as exc:
        raise SourceError(f"cannot open the dataset {name}: {type(exc).__name__}: {exc}") from None
    if isinstance(data, datasets.DatasetDict):
        if split not in data:
            raise SourceError(f"{name} has splits {', '.join(data)}, not {split!r} (choose one with --split)")
        data = data[split]
    columns = set(data.column_names)
    if image_column not in columns:
        raise SourceError(f"{name}: no image column {image_column!r} (choose one with --image-column); columns are "
                          f"{', '.join(sorted(columns))}")
    column = _caption_column(columns, caption_column, name)

    def items() -> Iterator[Item]:
        captions = data[column]  # the text column alone: a row would decode its image too
        for index in range(len(data)):
            def load(index: int = index) -> tuple[np.ndarray, None]:
                return to_rgb(data[index][image_column], f"{name}[{index}]")[0], None
            yield Item(f"{split}/{index}", str(captions[index] or ""), load)

    return Source(f"dataset {name} ({split}, {len(data)} rows)", items, exact_depth=False)


# ------------------------------------------------------------------ frame library


def _library_source(root: str) -> Source:
    from ..library import FrameLibrary, LibraryError, default_root

    folder = Path(root).expanduser() if root else default_root()
    if not folder.is_dir():
        raise SourceError(f"there is no frame library at {folder}")
    library = FrameLibrary(folder)
    library.verify()
    entries = sorted(library.find(limit=len(library) or 1), key=lambda e: e.frame_id)
    if not entries:
        raise SourceError(f"the frame library {library.root} holds no frames")

    def items() -> Iterator[Item]:
        for entry in entries:
            def load(frame_id: str = entry.frame_id) -> tuple[np.ndarray, np.ndarray]:
                try:
                    _header, rgb, depth = library.load(frame_id)
                except LibraryError as exc:
                    raise ImageError(str(exc)) from None
                return rgb, depth
            yield Item(entry.frame_id, entry.prompt, load)

    return Source(f"frame library {library.root} ({len(entries)} frames, exact depth)", items, exact_depth=True)
