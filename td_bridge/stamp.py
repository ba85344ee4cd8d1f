"""Which td_bridge this is: its version and a hash of its sources.

The TouchDesigner component carries its own copy of td_bridge; the builder writes this stamp beside
it, and Diagnose compares it with any other td_bridge on TouchDesigner's Python path.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Mapping

VERSION_LINE = re.compile(r"^__version__ = ['\"]([^'\"]+)['\"]", re.M)


def source_stamp(sources: Mapping[str, str]) -> str:
    """'VERSION+HASH' of a td_bridge given as {module name: source text} (``__init__`` holds the version)."""
    digest = hashlib.sha256()
    for name in sorted(sources):
        digest.update(name.encode() + b"\0" + sources[name].encode("utf-8") + b"\0")
    match = VERSION_LINE.search(sources.get("__init__", ""))
    return f"{match.group(1) if match else 'unknown'}+{digest.hexdigest()[:12]}"


def folder_sources(folder: Path) -> dict[str, str]:
    """{module name: source text} of a td_bridge package folder."""
    return {path.stem: path.read_text(encoding="utf-8") for path in sorted(Path(folder).glob("*.py"))}


def folder_stamp(folder: Path) -> str:
    """The stamp of the td_bridge in ``folder`` ('unreadable: …' when it cannot be read)."""
    try:
        return source_stamp(folder_sources(folder))
    except (OSError, UnicodeDecodeError) as exc:
        return f"unreadable: {exc}"
