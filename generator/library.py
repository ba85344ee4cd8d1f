"""The frame library: every generated frame kept on disk, crash-safe, recallable at once.

Layout: ``ROOT/YYYYMMDD/FRAME_ID/{rgb.png, depth.png, metadata.json}`` (the day is the frame
id's UTC date). A frame is written into ``ROOT/.partial/`` first, every file fsynced, then
renamed into place and the parent folders fsynced: an entry exists whole or not at all.
``ROOT/index.jsonl`` (generator/library_journal.py) caches the entries' metadata. On start the
index is rebuilt: the folders are listed, the journal supplies what it knows, any other folder
is read and checked; leftovers of interrupted writes are removed and unreadable entries
reported and skipped, never fatal.

Several processes (``serve`` beside ``pregenerate``, or a batch verb's processes on several GPUs or machines
sharing the folder) may add frames at once: a frame being written holds a lock on
``ROOT/.writing/NAME.lock``, so another process's rebuild removes only the leftovers of writers that are gone,
and the journal's lines are appended and rewritten under its own lock.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import shutil
import threading
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from td_bridge.depth import read_depth_png
from td_bridge.protocol import is_valid_id

from .images import read_rgb_png
from .library_journal import Journal, Record, file_lock

log = logging.getLogger("depthfusion.library")

FILES = ("rgb.png", "depth.png", "metadata.json")
PARTIAL = ".partial"
WRITING = ".writing"  # NAME.lock, held while .partial/NAME is being written
JOURNAL = "index.jsonl"
ENV_ROOT = "DEPTHFUSION_LIBRARY"
_DAY = re.compile(r"\d{8}")


class LibraryError(RuntimeError):
    """A library operation failed (disk full, permissions, unknown frame)."""


def default_root() -> Path:
    """$DEPTHFUSION_LIBRARY, else the per-user data folder (~/.local/share, ~/Library/Application
    Support or %LOCALAPPDATA%) + DepthFusion/library."""
    from platformdirs import user_data_path

    configured = os.environ.get(ENV_ROOT, "").strip()
    return Path(configured) if configured else user_data_path("DepthFusion", appauthor=False) / "library"


def day_of(frame_id: str, created_at: float) -> str:
    """The day folder of a frame: its id's date (ids start with YYYYMMDD), else its creation date."""
    return frame_id[:8] if _DAY.fullmatch(frame_id[:8]) else time.strftime("%Y%m%d", time.gmtime(created_at))


@dataclass(frozen=True)
class Entry:
    frame_id: str
    folder: str  # a plain string: 10,000 Path objects would cost a third of the index load
    prompt: str
    cue: str
    model: str
    created_at: float
    params: dict[str, Any]

    @property
    def path(self) -> Path:
        return Path(self.folder)

    def record(self) -> Record:
        """What the journal keeps: everything but the root."""
        day = os.path.basename(os.path.dirname(self.folder))
        return {"frame_id": self.frame_id, "day": day, "prompt": self.prompt, "cue": self.cue,
                "model": self.model, "created_at": self.created_at, "params": self.params}

    def summary(self) -> dict[str, Any]:
        summary = self.record()
        del summary["day"]
        return summary | {"path": str(self.path)}


def _entry_from_meta(folder: str, meta: dict[str, Any]) -> Entry:
    params = meta.get("params") if isinstance(meta.get("params"), dict) else {}
    cue = str(params.get("cue") or meta.get("cue") or "")
    return Entry(os.path.basename(folder), folder, str(meta.get("prompt", "")), cue, str(meta.get("model", "")),
                 float(meta.get("created_at", 0.0)), params)


def _read_entry(folder: str) -> Entry:
    """The entry in ``folder``, checked: a frame id, all three files, metadata naming this frame."""
    name = os.path.basename(folder)
    if not is_valid_id(name):
        raise ValueError("not a frame folder")
    missing = set(FILES) - set(os.listdir(folder))
    if missing:
        raise ValueError(f"missing {', '.join(sorted(missing))}")
    with open(os.path.join(folder, "metadata.json"), encoding="utf-8") as f:
        meta = json.load(f)
    if not isinstance(meta, dict) or meta.get("frame_id") != name:
        raise ValueError("metadata.json does not name this frame")
    for png in ("rgb.png", "depth.png"):
        if os.path.getsize(os.path.join(folder, png)) == 0:
            raise ValueError(f"{png} is empty")
    return _entry_from_meta(folder, meta)


def _report(problems: list[str]) -> None:
    for problem in problems[:20]:
        log.warning("library entry skipped: %s", problem)
    if len(problems) > 20:
        log.warning("... and %d more library entries skipped", len(problems) - 20)


def _fsync_dir(path: Path) -> None:
    if os.name == "nt":  # Windows cannot open directories; NTFS renames are journaled
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_file(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


@contextmanager
def _writing(root: Path, name: str) -> Iterator[None]:
    """Hold ``.writing/NAME.lock`` while ``.partial/NAME`` is written: a rebuild elsewhere leaves it alone."""
    lock = root / WRITING / f"{name}.lock"
    lock.parent.mkdir(exist_ok=True)
    try:
        with file_lock(lock):
            yield
    finally:
        with suppress(OSError):  # after the release (Windows removes no open file); a rebuild may have done it
            lock.unlink()


def _writer_gone(root: Path, name: str) -> bool:
    """Whether nobody holds ``.writing/NAME.lock`` (a leftover's writer died); removes such a lock file."""
    lock = root / WRITING / f"{name}.lock"
    try:
        with file_lock(lock, create=False, wait=False) as taken:
            if not taken:
                return False
    except FileNotFoundError:
        return True
    with suppress(OSError):
        lock.unlink()
    return True


def _remove_leftovers(root: Path) -> None:
    """Remove what interrupted writes left in ``.partial``, not the writes under way in other processes."""
    for leftover in (root / PARTIAL).iterdir():
        if _writer_gone(root, leftover.name):
            shutil.rmtree(leftover, ignore_errors=True)


def _png_bytes(array: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


class FrameLibrary:
    """Thread-safe index over the frames under ``root``; other processes may add frames too
    (``pregenerate`` beside ``serve``): queries pick up what they appended to the journal."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).expanduser()
        self._lock = threading.RLock()
        self._entries: dict[str, Entry] = {}
        self.skipped: list[str] = []  # problems found by the last rebuild or verify()
        self._unverified: set[str] = set()  # taken from the journal, folder not checked yet
        try:
            (self.root / PARTIAL).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise LibraryError(f"cannot create the frame library at {self.root}: {exc}") from exc
        self._journal = Journal(self.root / JOURNAL)
        self._pool = ThreadPoolExecutor(2, thread_name_prefix="depthfusion-png")
        self.rebuild()

    # ------------------------------------------------------------ index

    def rebuild(self) -> None:
        """Re-read the index from disk; interrupted writes are removed, bad entries skipped."""
        with self._lock, self._journal.locked():  # no line appended between the listing and a rewrite is lost
            _remove_leftovers(self.root)
            known, bad_lines = self._journal.read()
            entries, skipped, from_journal = {}, [], 0
            for day in sorted(d for d in os.scandir(self.root) if d.is_dir() and not d.name.startswith(".")):
                for name in os.listdir(day.path):
                    if name.startswith("."):  # .DS_Store and the like
                        continue
                    folder = os.path.join(day.path, name)
                    record = known.get(name)
                    if record is not None and record.get("day") == day.name:
                        try:
                            entries[name] = _entry_from_meta(folder, record)
                            from_journal += 1
                            continue
                        except (ValueError, TypeError):  # a damaged line: read the folder instead
                            pass
                    try:
                        entries[name] = _read_entry(folder)
                    except (OSError, ValueError, TypeError) as exc:
                        skipped.append(f"{folder}: {exc}")
            self._entries, self.skipped = entries, skipped
            self._unverified = {name for name in entries if name in known}
            if bad_lines or from_journal != len(entries) or from_journal != len(known):  # out of date: compact
                self._rewrite_journal()
        _report(skipped)
        log.info("library %s: %d frames", self.root, len(entries))

    def verify(self) -> list[str]:
        """Check the folders of the entries the journal vouched for (files there, metadata
        readable); broken ones leave the index and are reported. Safe to run on a thread."""
        with self._lock:
            todo = [self._entries[i] for i in self._unverified if i in self._entries]
        problems = []
        for entry in todo:
            try:
                _read_entry(entry.folder)
            except (OSError, ValueError, TypeError) as exc:
                with self._lock:
                    if self._entries.get(entry.frame_id) is entry:  # not deleted meanwhile
                        del self._entries[entry.frame_id]
                        problems.append(f"{entry.folder}: {exc}")
        with self._lock:
            self._unverified.clear()
            self.skipped += problems
            if problems:
                with self._journal.locked():
                    self._rewrite_journal()
        _report(problems)
        return problems

    def _rewrite_journal(self) -> None:
        try:
            self._journal.rewrite([e.record() for e in self._entries.values()])
        except OSError as exc:  # only a cache: the next start reads the folders instead
            log.warning("could not rewrite the library journal %s: %s", self._journal.path, exc)

    def _note(self, record: Record) -> None:
        try:
            with self._journal.locked():
                self._journal.append(record)
        except OSError as exc:
            log.warning("could not append to the library journal %s: %s", self._journal.path, exc)

    def _refresh(self) -> None:
        """Take in what other processes appended to the journal since the last look."""
        news = self._journal.read(new_only=True)
        if news is None or news[1]:  # replaced, or a torn line (a writer on a file system without atomic appends)
            self.rebuild()
            return
        for frame_id, record in news[0].items():
            if record is None:
                self._entries.pop(frame_id, None)
            elif frame_id not in self._entries and is_valid_id(frame_id) and _DAY.fullmatch(str(record.get("day"))):
                try:
                    self._entries[frame_id] = _entry_from_meta(os.path.join(self.root, record["day"], frame_id), record)
                    self._unverified.add(frame_id)
                except (ValueError, TypeError):
                    pass  # the next rebuild reads that folder itself

    def __len__(self) -> int:
        with self._lock:
            self._refresh()
            return len(self._entries)

    def get(self, frame_id: str) -> Entry | None:
        with self._lock:
            self._refresh()
            return self._entries.get(frame_id)

    def latest_for_cue(self, cue: str) -> Entry | None:
        with self._lock:
            self._refresh()
            matches = [e for e in self._entries.values() if e.cue == cue]
        return max(matches, key=lambda e: (e.created_at, e.frame_id), default=None)

    def find(self, text: str = "", limit: int = 100) -> list[Entry]:
        """Newest first; ``text`` matches prompt or cue, case-insensitively."""
        needle = text.casefold()
        with self._lock:
            self._refresh()
            hits = [e for e in self._entries.values() if needle in e.prompt.casefold() or needle in e.cue.casefold()]
        hits.sort(key=lambda e: (e.created_at, e.frame_id), reverse=True)
        return hits[:limit]

    # ------------------------------------------------------------ frames

    def save(self, header: dict[str, Any], rgb: np.ndarray, depth: np.ndarray) -> Entry:
        """Write a frame durably; returns its entry only once it is on disk (fsynced)."""
        frame_id = header["frame_id"]
        day = self.root / day_of(frame_id, header.get("created_at", time.time()))
        final = day / frame_id
        name = f"{frame_id}-{secrets.token_hex(4)}"
        staging = self.root / PARTIAL / name
        try:
            with _writing(self.root, name):
                staging.mkdir()
                rgb_png, depth_png = self._pool.map(_png_bytes, (rgb, depth))  # zlib runs without the GIL
                _write_file(staging / "rgb.png", rgb_png)
                _write_file(staging / "depth.png", depth_png)
                _write_file(staging / "metadata.json", json.dumps(header, indent=2, ensure_ascii=False).encode())
                _fsync_dir(staging)
                day.mkdir(exist_ok=True)
                os.rename(staging, final)
                _fsync_dir(day)
                _fsync_dir(self.root)
        except OSError as exc:
            shutil.rmtree(staging, ignore_errors=True)
            raise LibraryError(f"could not save frame {frame_id} to {self.root}: {exc}") from exc
        entry = _entry_from_meta(str(final), header)
        with self._lock:
            self._entries[frame_id] = entry
            self._note({"add": entry.record()})
        return entry

    def load(self, frame_id: str) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
        """(header, rgb, depth) of a kept frame."""
        entry = self.get(frame_id)
        if entry is None:
            raise LibraryError(f"frame {frame_id} is not in the library")
        try:
            header = json.loads((entry.path / "metadata.json").read_text(encoding="utf-8"))
            depth_read = self._pool.submit(read_depth_png, entry.path / "depth.png")  # both at once
            rgb, depth = read_rgb_png(entry.path / "rgb.png"), depth_read.result()
        except (OSError, ValueError) as exc:
            raise LibraryError(f"frame {frame_id} cannot be read: {exc}") from exc
        if rgb.shape[:2] != depth.shape:
            raise LibraryError(f"frame {frame_id}: rgb {rgb.shape[:2]} and depth {depth.shape} sizes differ")
        return header, rgb, depth

    def delete(self, frame_ids: str | Iterable[str]) -> None:
        """Remove frames; every id is checked before anything is removed."""
        ids = [frame_ids] if isinstance(frame_ids, str) else list(frame_ids)
        with self._lock:
            self._refresh()
            missing = [i for i in ids if i not in self._entries]
            if missing:
                raise LibraryError(f"not in the library: {', '.join(missing)}")
            for frame_id in ids:
                entry = self._entries[frame_id]
                trash = self.root / PARTIAL / f"{frame_id}-deleted"
                try:
                    os.rename(entry.path, trash)  # atomic: gone from the library, even after a crash
                except OSError as exc:
                    raise LibraryError(f"could not delete frame {frame_id}: {exc}") from exc
                del self._entries[frame_id]
                self._note({"del": frame_id})
                shutil.rmtree(trash, ignore_errors=True)

    def export_zip(self, frame_ids: Iterable[str], path: Path) -> int:
        """Write the frames into a zip (one folder per frame); returns how many."""
        entries = []
        for frame_id in frame_ids:
            entry = self.get(frame_id)
            if entry is None:
                raise LibraryError(f"frame {frame_id} is not in the library")
            entries.append(entry)
        path = Path(path)
        if path.exists():
            raise LibraryError(f"{path} already exists; choose another name")
        partial = path.with_name(path.name + ".partial")
        try:
            with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_STORED) as archive:  # PNGs are compressed
                for entry in entries:
                    for name in FILES:
                        archive.write(entry.path / name, f"{entry.frame_id}/{name}")
            os.replace(partial, path)
        except OSError as exc:
            partial.unlink(missing_ok=True)
            raise LibraryError(f"could not write {path}: {exc}") from exc
        return len(entries)
