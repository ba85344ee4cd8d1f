"""Cue lists for `python -m generator pregenerate`: named prompts and parameters, TOML or CSV.

TOML: an optional ``[defaults]`` table and ``[[cue]]`` tables, each with ``name`` and any
generation parameters. CSV: a header row naming ``name`` and parameter columns; empty cells
take the defaults. Every cue is validated by the parameter schema before anything runs.
A cue with ``upscale = true`` is upscaled after generating (its ``upscale_*`` keys set the
upscaler's parameters); its params then carry them under ``upscale``.

A cue may name an ``image`` (a path, relative to the cue list's folder) instead of a prompt: its frame is
the image with depth estimated by ``pregenerate --estimator`` (the estimation parameters ``pano``, ``views``,
``flip`` apply, generation parameters do not). The image is checked (readable, within the size limits) with
the list, and its SHA-256 is part of the cue's params, so a changed file is estimated again.
"""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path
from typing import Any

from td_bridge.params import (ESTIMATION_PARAMS, RANDOM_SEED, UPSCALE_PARAMS, Param, ParamError, validate,
                              validate_generation)

MAX_CUES = 10000
UPSCALE = Param("upscale", bool, False, "Upscale the cue's frame after generating.")


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
            cues.append((name, _cue_params(row, name, path.parent)))
        except ParamError as exc:
            problems.append(f"{where} ({name}): {exc}")
    if problems:
        raise ParamError(f"{path}: " + "; ".join(problems))
    return cues


def _cue_params(row: dict[str, Any], name: str, folder: Path) -> dict[str, Any]:
    upscale = UPSCALE.coerce(row.pop("upscale", False))
    upscale_keys = {k: row.pop(k) for k in list(row) if str(k).startswith("upscale_")}
    if upscale_keys and not upscale:
        raise ParamError(f"{', '.join(upscale_keys)} given without upscale = true")
    image = row.pop("image", None)
    params = validate_generation({**row, "cue": name}) if image is None else _image_params(image, row, name, folder)
    return {**params, "upscale": validate(upscale_keys, UPSCALE_PARAMS)} if upscale else params


def is_image_cue(params: dict[str, Any]) -> bool:
    return "image" in params


def _image_params(image: Any, row: dict[str, Any], name: str, folder: Path) -> dict[str, Any]:
    """An image cue's params: the estimation parameters, the image's absolute path and its SHA-256."""
    from .estimators.inputs import ImageError, probe_image

    if not isinstance(image, str) or not image.strip():
        raise ParamError("image must be a path to an image file")
    estimation = {p.name for p in ESTIMATION_PARAMS}
    others = sorted(k for k in row if k not in estimation)
    if others:
        raise ParamError(f"an image cue takes only {', '.join(sorted(estimation - {'cue'}))}; not {', '.join(others)}")
    path = (folder / image).expanduser().resolve()
    try:
        probe_image(path)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
    except (ImageError, OSError) as exc:
        raise ParamError(str(exc)) from None
    return {**validate({**row, "cue": name}, ESTIMATION_PARAMS), "image": str(path), "image_sha256": digest}


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


def pending_cues(cues: list[tuple[str, dict[str, Any]]], library: Any, model: str,
                 upscaler: str | None = None, estimator: str | None = None) -> list[tuple[str, dict[str, Any]]]:
    """The cues with no frame in the library made by ``model`` (``estimator`` for image cues) from
    identical parameters (a random seed matches any seed); an upscaled cue's newest frame must be
    ``upscaler``'s, from identical generation and upscale parameters."""
    todo = []
    for name, params in cues:
        entry = library.latest_for_cue(name)
        made_by = upscaler if "upscale" in params else estimator if is_image_cue(params) else model
        flat = {**params, **params.get("upscale", {})}
        wanted = {k: v for k, v in flat.items() if k != "upscale" and not (k in ("seed", "upscale_seed")
                                                                            and v == RANDOM_SEED)}
        if entry is None or entry.model != made_by or any(entry.params.get(k) != v for k, v in wanted.items()):
            todo.append((name, params))
    return todo
