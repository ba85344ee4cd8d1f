"""The frame library's journal: one line per frame added or deleted, so that the index loads
from one sequential read instead of opening every entry (10,000 entries cold from disk: 2.4 s
without it, see BENCHMARKS.md). It is a cache: the entry folders stay the truth, a lost or torn
line only sends that entry down the slow path, and the journal is rewritten whole after a
rebuild that found it out of date. Several processes, on one machine or several sharing the folder, may add
frames at once: each line goes in one O_APPEND write, and appends and rewrites take ``index.lock`` (an exclusive
lock on a file beside the journal), so a rewrite never drops a line another process appended meanwhile.
"""

from __future__ import annotations

import json
import os
import secrets
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, Iterator

Record = dict[str, Any]


def _lock_fd(fd: int, wait: bool) -> bool:
    """Lock an open file exclusively; False when ``wait`` is off and another holds it."""
    if os.name == "nt":
        import msvcrt

        while True:  # LK_LOCK itself gives up after ten tries a second apart
            try:
                msvcrt.locking(fd, msvcrt.LK_LOCK if wait else msvcrt.LK_NBLCK, 1)
                return True
            except OSError:
                if not wait:
                    return False
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
        return False
    return True


@contextmanager
def file_lock(path: Path, *, create: bool = True, wait: bool = True) -> Iterator[bool]:
    """Hold an exclusive lock on ``path`` against other processes while the block runs; yields whether it was
    taken (always, when ``wait``). ``create`` makes the file if missing, else a missing file raises
    FileNotFoundError. The lock goes with the process if it dies."""
    fd = os.open(path, os.O_RDWR | (os.O_CREAT if create else 0), 0o644)
    try:
        yield _lock_fd(fd, wait)
    finally:
        os.close(fd)  # closing releases flock and msvcrt locks alike


class Journal:
    """``index.jsonl`` lines: ``{"add": {...entry...}}`` or ``{"del": FRAME_ID}``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock_path = path.with_name("index.lock")
        self._identity: tuple[int, int] | None = None  # (device, inode) of the file read so far
        self._offset = 0

    def read(self, *, new_only: bool = False) -> tuple[dict[str, Record | None], int] | None:
        """({frame id: entry record, or None when deleted}, lines that did not parse).

        ``new_only`` reads what was appended since the last read; it returns None when the file
        was replaced or truncated since, and the caller must read it all again.
        """
        try:
            with open(self.path, "rb") as f:
                stat = os.fstat(f.fileno())
                identity = (stat.st_dev, stat.st_ino)
                replaced = self._identity is not None and identity != self._identity
                if new_only and (replaced or stat.st_size < self._offset):
                    return None
                f.seek(self._offset if new_only else 0)
                data = f.read()
        except FileNotFoundError:
            if new_only and self._identity is not None:
                return None
            self._identity, self._offset = None, 0
            return {}, 0
        complete = data.rfind(b"\n") + 1  # a line still being appended is read next time
        self._identity, self._offset = identity, (self._offset if new_only else 0) + complete
        records: dict[str, Record | None] = {}
        bad = 0
        for line in data[:complete].splitlines():
            try:
                record = json.loads(line)
                if "add" in record:
                    records[record["add"]["frame_id"]] = record["add"]
                else:
                    records[record["del"]] = None
            except (ValueError, TypeError, KeyError):
                bad += 1
        return records, bad

    def locked(self) -> AbstractContextManager[bool]:
        """The journal's lock: hold it around an append, and around a rebuild's listing and rewrite."""
        return file_lock(self.lock_path)

    def append(self, record: Record) -> None:
        """Add one line in one write (hold :meth:`locked`); best effort (the folders are the truth), so errors
        are left to the caller."""
        line = json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_BINARY", 0), 0o644)
        try:
            if os.write(fd, line) != len(line):
                raise OSError(f"short write appending to {self.path}")
        finally:
            os.close(fd)

    def rewrite(self, entries: list[Record]) -> None:
        """Replace the journal with one ``add`` line per entry, atomically (hold :meth:`locked`)."""
        partial = self.path.with_name(f"{self.path.name}.{secrets.token_hex(4)}.partial")
        try:
            with open(partial, "wb") as f:
                for entry in entries:
                    f.write(json.dumps({"add": entry}, ensure_ascii=False, separators=(",", ":")).encode() + b"\n")
                f.flush()
                os.fsync(f.fileno())
                stat = os.fstat(f.fileno())
            os.replace(partial, self.path)  # the inode moves with the name
        finally:
            partial.unlink(missing_ok=True)
        self._identity, self._offset = (stat.st_dev, stat.st_ino), stat.st_size
