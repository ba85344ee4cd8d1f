"""The frame library's journal: one line per frame added or deleted, so that the index loads
from one sequential read instead of opening every entry (10,000 entries cold from disk: 2.4 s
without it, see BENCHMARKS.md). It is a cache: the entry folders stay the truth, a lost or torn
line only sends that entry down the slow path, and the journal is rewritten whole after a
rebuild that found it out of date. Several processes may append to it (O_APPEND writes).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

Record = dict[str, Any]


class Journal:
    """``index.jsonl`` lines: ``{"add": {...entry...}}`` or ``{"del": FRAME_ID}``."""

    def __init__(self, path: Path) -> None:
        self.path = path
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

    def append(self, record: Record) -> None:
        """Add one line; best effort (the folders are the truth), so errors are left to the caller."""
        with open(self.path, "ab") as f:
            f.write(json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode() + b"\n")

    def rewrite(self, entries: list[Record]) -> None:
        """Replace the journal with one ``add`` line per entry, atomically."""
        partial = self.path.with_name(self.path.name + ".partial")
        with open(partial, "wb") as f:
            for entry in entries:
                f.write(json.dumps({"add": entry}, ensure_ascii=False, separators=(",", ":")).encode() + b"\n")
            f.flush()
            os.fsync(f.fileno())
            stat = os.fstat(f.fileno())
        os.replace(partial, self.path)  # the inode moves with the name
        self._identity, self._offset = (stat.st_dev, stat.st_ino), stat.st_size
