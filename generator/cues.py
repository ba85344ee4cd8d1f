"""Cue lists for `python -m generator pregenerate`: named prompts and parameters, TOML or CSV.

TOML: an optional ``[defaults]`` table and ``[[cue]]`` tables, each with ``name`` and any
generation parameters. CSV: a header row naming ``name`` and parameter columns; empty cells
take the defaults. Every cue is validated by the parameter schema before anything runs.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from td_bridge.params import RANDOM_SEED, ParamError, validate_generation

MAX_CUES = 10000


def read_cues(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """[(cue name, validated params)]; raises ParamError listing every problem."""
    try:
        rows = _read_toml(path) if path.suffix.lower() == ".toml" else _read_csv(path)
    except (OSError, UnicodeDecodeError) as exc:
        raise ParamError(f"{path}: cannot read: {exc}") from None
    if not rows:
        raise ParamError(f"{path}: no cues")
    if len(rows) > MAX_CUES:
        raise ParamError(f"{path}: {len(rows)} cues; at most {MAX_CUES}")
    cues, problems, seen = [], [], set()
    for where, row in rows:
        name = str(row.pop("name", "") or "").strip()
        if not name or len(name) > 100:
            problems.append(f"{where}: every cue needs a name of 1-100 characters")
            continue
        if name in seen:
            problems.append(f"{where}: cue name {name!r} appears twice")
            continue
        seen.add(name)
        try:
            cues.append((name, validate_generation({**row, "cue": name})))
        except ParamError as exc:
            problems.append(f"{where} ({name}): {exc}")
    if problems:
        raise ParamError(f"{path}: " + "; ".join(problems))
    return cues


def _read_toml(path: Path) -> list[tuple[str, dict[str, Any]]]:
    import tomllib

    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ParamError(f"{path}: not valid TOML: {exc}") from None
    defaults = data.get("defaults", {})
    cues = data.get("cue", [])
    if not isinstance(defaults, dict) or not isinstance(cues, list) or not all(isinstance(c, dict) for c in cues):
        raise ParamError(f"{path}: expected an optional [defaults] table and [[cue]] tables")
    unknown = set(data) - {"defaults", "cue"}
    if unknown:
        raise ParamError(f"{path}: unknown top-level keys {', '.join(sorted(unknown))}")
    return [(f"cue {i}", {**defaults, **cue}) for i, cue in enumerate(cues, start=1)]


def _read_csv(path: Path) -> list[tuple[str, dict[str, Any]]]:
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or "name" not in reader.fieldnames:
            raise ParamError(f"{path}: the header row must include a 'name' column")
        return [(f"line {reader.line_num}", {k: v for k, v in row.items() if k and v not in (None, "")})
                for row in reader]


def pending_cues(cues: list[tuple[str, dict[str, Any]]], library: Any, model: str) -> list[tuple[str, dict[str, Any]]]:
    """The cues with no frame in the library made by ``model`` from identical parameters (a
    random seed matches any seed)."""
    todo = []
    for name, params in cues:
        entry = library.latest_for_cue(name)
        wanted = {k: v for k, v in params.items() if not (k == "seed" and v == RANDOM_SEED)}
        if entry is None or entry.model != model or any(entry.params.get(k) != v for k, v in wanted.items()):
            todo.append((name, params))
    return todo
