"""The files an LDM3D model needs: which to fetch from the hub, where the Hugging Face cache keeps them, and what
is wrong when they are not there, all decided before any weights load.

A model is a hub id (``Intel/ldm3d-pano``), read from huggingface_hub's cache and fetched into it when allowed, or
a folder in the diffusers layout: ``model_index.json`` plus one subfolder per component.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path, PurePosixPath
from typing import Iterable, Mapping

from .base import BackendUnavailable

log = logging.getLogger("depthfusion.ldm3d")

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[\w.-]{1,96}$")
COMMIT = re.compile(r"^[0-9a-f]{40}$")
CHECKPOINTS = ("Intel/ldm3d-pano", "Intel/ldm3d-4c", "Intel/ldm3d")  # text → RGBD; `auto` prefers them in order
COMPONENTS = ("scheduler", "tokenizer", "text_encoder", "unet", "vae")
WEIGHTED = ("text_encoder", "unet", "vae")
SKIPPED = ("*.fp16.*", "*non_ema*")  # half-precision and training copies of the same weights
WEIGHT_FORMATS = (".safetensors", ".bin")  # preferred first; older repositories ship PyTorch .bin only
UPSCALER = "StableDiffusionUpscaleLDM3DPipeline"


class HubUnreachable(BackendUnavailable):
    """The hub could not be asked (no network, offline mode, a server error)."""


@dataclass(frozen=True)
class ModelFiles:
    folder: Path
    safetensors: dict[str, bool]  # per weighted component: safetensors weights (else .bin)


def needed_files(files: Iterable[str]) -> list[str]:
    """The files of a repository listing that the loader reads: the index, every component's configs and
    tokenizer files, and per weighted component its safetensors weights, or its .bin weights where none."""
    files = [f for f in files if not any(fnmatch(f, pattern) for pattern in SKIPPED)]
    keep = [f for f in files if f == "model_index.json" or _is_config(PurePosixPath(f))]
    for component in WEIGHTED:
        for suffix in WEIGHT_FORMATS:
            weights = [f for f in files if PurePosixPath(f).parent.name == component and f.endswith(suffix)
                       and len(PurePosixPath(f).parts) == 2]
            if weights:
                keep += weights
                break
    return sorted(keep)


def _is_config(path: PurePosixPath) -> bool:
    if len(path.parts) != 2 or path.parts[0] not in COMPONENTS:
        return False
    return path.suffix == ".json" or (path.parts[0] == "tokenizer" and path.suffix == ".txt")


def check_index(index: object, where: str) -> None:
    """Refuse, from ``model_index.json`` alone, what is not a text → RGBD model."""
    if not isinstance(index, dict):
        raise BackendUnavailable(f"{where}: model_index.json is not a JSON object")
    if index.get("_class_name") == UPSCALER or "low_res_scheduler" in index:
        raise BackendUnavailable(
            f"{where} is ldm3d-sr ({index.get('_class_name')}, says its model_index.json), an RGBD upscaler, "
            f"not a text-to-RGBD model; serve {', '.join(CHECKPOINTS)}")


def inspect_folder(folder: Path, where: str | None = None, incomplete_hint: str = "") -> ModelFiles:
    """Check a model folder before loading: the layout, the index, and that every needed file is there."""
    where = where or str(folder)
    index_file = folder / "model_index.json"
    if not index_file.exists() and ((folder / "snapshots").is_dir() or (folder / "blobs").is_dir()):
        raise BackendUnavailable(_cache_folder_message(folder))
    needed = needed_files(_listing(folder))
    dangling = [f for f in needed if (folder / f).is_symlink() and not (folder / f).exists()]
    if dangling:
        raise BackendUnavailable(
            f"{where}: {len(dangling)} needed files are links to files that are not there "
            f"({', '.join(dangling[:3])}{', …' if len(dangling) > 3 else ''}); a snapshot copied without the "
            "blobs/ folder it links into? Copy the whole models--… cache folder, or copy with links followed "
            "(cp -rL)")
    if not index_file.is_file():
        raise BackendUnavailable(f"{where} has no model_index.json: not a model folder in the diffusers layout "
                                 f"(model_index.json and the subfolders {', '.join(COMPONENTS)})")
    try:
        check_index(json.loads(index_file.read_text(encoding="utf-8")), where)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BackendUnavailable(f"{where}: model_index.json is not valid JSON ({exc})") from None
    missing = [f"{c}/ config" for c in COMPONENTS
               if not any(f.startswith(c + "/") and f.endswith((".json", ".txt")) for f in needed)]
    missing += [f"{c}/ weights (*.safetensors or *.bin)" for c in WEIGHTED
                if not any(f.startswith(c + "/") and f.endswith(WEIGHT_FORMATS) for f in needed)]
    if missing:
        raise BackendUnavailable(f"{where} is incomplete: no {', '.join(missing)}{incomplete_hint}")
    return ModelFiles(folder, {c: any(f.startswith(c + "/") and f.endswith(".safetensors") for f in needed)
                               for c in WEIGHTED})


def _listing(folder: Path) -> list[str]:
    """Every file below ``folder`` (links included, dangling or not) as a relative POSIX path."""
    found = []
    for top, _dirs, names in os.walk(folder):
        base = Path(top).relative_to(folder)
        found += [(base / name).as_posix() for name in names]
    return found


def _cache_folder_message(folder: Path) -> str:
    repo = folder.name.removeprefix("models--").replace("--", "/")
    main = folder / "refs" / "main"
    snapshots = [main.read_text(encoding="utf-8").strip()] if main.is_file() else []
    snapshots += sorted(p.name for p in (folder / "snapshots").glob("*") if p.is_dir())
    pick = f"its snapshot folder {folder / 'snapshots' / snapshots[0]}" if snapshots else "a snapshot folder"
    return (f"{folder} is a Hugging Face cache folder, not a model folder: pass the hub id {repo} "
            f"(it is read from the cache; --offline never goes online) or {pick}")


# ------------------------------------------------------------------ the hub cache


def hub_cache() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def cached_snapshot(model: str, revision: str | None = None) -> ModelFiles:
    """The checked snapshot of hub id ``model`` at ``revision`` in the cache; the error says what is there."""
    cache = hub_cache()
    repo = cache / ("models--" + model.replace("/", "--"))
    rev = revision or "main"
    fetch = f"`python -m generator download {model}{f' --revision {revision}' if revision else ''}`"
    if not repo.is_dir():
        raise BackendUnavailable(
            f"nothing of {model} is in the Hugging Face cache (searched {cache}). Fetch it where there is internet "
            f"with {fetch} (or `hf download {model}`) and copy {repo.name} over, or pass a local folder with --model")
    ref = repo / "refs" / rev
    commit = rev if COMMIT.match(rev) else (ref.read_text(encoding="utf-8").strip() if ref.is_file() else None)
    partial = len(list((repo / "blobs").glob("*.incomplete")))
    hint = (f" (an interrupted download{f', {partial} partial files in blobs/' if partial else ''}?); "
            f"finish it with {fetch}")
    if commit is None or (COMMIT.match(rev) and not (repo / "snapshots" / commit).is_dir()):
        raise BackendUnavailable(
            f"{model} is in the Hugging Face cache ({repo}), but not at revision {rev}; cached: "
            f"{_cached_revisions(repo)}. Pass one of those with --revision or fetch this one with {fetch}")
    snapshot = repo / "snapshots" / commit
    where = f"the cached {model} (revision {rev}, {snapshot})"
    if not snapshot.is_dir():
        raise BackendUnavailable(f"{where} has no files yet{hint}")
    return inspect_folder(snapshot, where, hint)


def _cached_revisions(repo: Path) -> str:
    refs = {p.relative_to(repo / "refs").as_posix(): p.read_text(encoding="utf-8").strip()[:8]
            for p in (repo / "refs").rglob("*") if p.is_file()}
    named = [f"{name} → {commit}" for name, commit in sorted(refs.items())]
    loose = [p.name[:8] for p in sorted((repo / "snapshots").glob("*")) if p.name[:8] not in refs.values()]
    return ", ".join(named + loose) or "no revision"


def cached_checkpoints(revision: str | None = None) -> tuple[list[str], dict[str, str]]:
    """The known text → RGBD checkpoints complete in the cache (preferred first), and why each other one is not."""
    usable, reasons = [], {}
    for model in CHECKPOINTS:
        try:
            cached_snapshot(model, revision)
            usable.append(model)
        except BackendUnavailable as exc:
            reasons[model] = str(exc)
    return usable, reasons


# ------------------------------------------------------------------ the hub


def fetch(model: str, revision: str | None = None) -> list[str]:
    """Download into the cache exactly the files the loader needs (the index first: no weights for a model we
    would refuse), with a progress bar; returns their repository paths."""
    import huggingface_hub as hub

    rev = revision or "main"
    sizes = _hub_listing(model, revision)
    files = needed_files(sizes)
    if "model_index.json" not in files:
        raise BackendUnavailable(f"{model} (revision {rev}) has no model_index.json: not a diffusers model")
    try:
        index = Path(hub.hf_hub_download(model, "model_index.json", revision=revision))
        check_index(json.loads(index.read_text(encoding="utf-8")), model)
        log.info("fetching %d of %d files of %s (revision %s): %s of %s", len(files), len(sizes), model, rev,
                 _gigabytes(sum(sizes[f] for f in files)), _gigabytes(sum(sizes.values())))
        hub.snapshot_download(model, revision=revision, allow_patterns=files)
    except json.JSONDecodeError as exc:
        raise BackendUnavailable(f"{model}: model_index.json is not valid JSON ({exc})") from None
    except OSError as exc:
        raise BackendUnavailable(f"downloading {model} (revision {rev}) stopped: {exc}") from exc
    return files


def _hub_listing(model: str, revision: str | None) -> Mapping[str, int]:
    """Path → size of every file of the repository at ``revision``."""
    import httpx2
    import huggingface_hub as hub
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    try:
        info = hub.HfApi().model_info(model, revision=revision, files_metadata=True)
    except RevisionNotFoundError:
        raise BackendUnavailable(f"{model} has no revision {revision!r} on the hub") from None
    except RepositoryNotFoundError:
        raise BackendUnavailable(f"the hub has no model {model} (or it is private: log in with `hf auth login`)") \
            from None
    except (OSError, httpx2.TransportError) as exc:  # no network, HF_HUB_OFFLINE, the hub down
        raise HubUnreachable(f"the hub cannot be reached ({type(exc).__name__}: {exc})") from exc
    return {s.rfilename: s.size or 0 for s in info.siblings or ()}


def _gigabytes(size: int) -> str:
    return f"{size / 1e9:.1f} GB"


def resolve(model: str, revision: str | None = None, local_files_only: bool = False) -> ModelFiles:
    """A checked model folder: ``model`` itself, or the cached snapshot of a hub id, fetched first if allowed."""
    folder = Path(model).expanduser()
    if folder.is_dir():
        return inspect_folder(folder)
    if not HUB_ID.match(model):
        raise BackendUnavailable(f"model {model!r} is neither an existing folder nor a hub id like Intel/ldm3d-pano")
    if not local_files_only:
        try:
            fetch(model, revision)
        except HubUnreachable as exc:
            log.warning("%s; looking for %s in the Hugging Face cache", exc, model)
    return cached_snapshot(model, revision)


def download(model: str, revision: str | None = None) -> ModelFiles:
    """`python -m generator download`: fetch what the loader needs of hub id ``model``, then check it."""
    if not HUB_ID.match(model):
        raise BackendUnavailable(f"{model!r} is not a hub id like Intel/ldm3d-pano")
    fetch(model, revision)
    return cached_snapshot(model, revision)
