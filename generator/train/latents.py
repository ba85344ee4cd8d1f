"""Latents for the trainers that learn from a model's own samples (``train tiny-decoder --from-model``, ``train
lcm-lora --from-teacher``): a prompts file, the samples made once into a folder (records in each file's metadata,
so a run resumes and both trainers share a cache), the dataset over them and the crop-and-roll augmentation."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from .options import ConfigError

log = logging.getLogger("depthfusion.train.latents")

SEED_LIMIT = 2**31  # generation seeds are int32
VAL_SEED_OFFSET = 1_000_000_000
SAMPLED = ("prompt", "seed", "steps", "width", "height", "guidance", "seamless")  # a record's generation params


def read_prompts(path: str | Path) -> list[str]:
    """The prompts of a text file, one a line (blank lines and lines starting with # skipped)."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the prompts file {path}: {exc}") from None
    prompts = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not prompts:
        raise ConfigError(f"{path} holds no prompts (one a line)")
    return prompts


class LatentSet(torch.utils.data.Dataset):
    """Latents made by :func:`sample_latents`: ``{"latents": (C, h, w), "caption": prompt}``."""

    def __init__(self, files: list[Path], captions: list[str]) -> None:
        self.files, self.captions = files, captions

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> dict[str, Any]:
        from safetensors.torch import load_file

        return {"latents": load_file(str(self.files[i]))["latents"], "caption": self.captions[i]}


class KeepLatents:
    """A decoder for LDM3DBackend that keeps the final latents instead of decoding them (the frame it hands back
    is a 1×1 placeholder): sampling for ``--from-model`` costs no full VAE decode."""

    name = "latents"

    def __init__(self, channels: int) -> None:
        self.channels, self.latents = channels, None

    def set_seamless(self, enabled: bool) -> None:
        pass

    def decode(self, latents: torch.Tensor) -> np.ndarray:
        self.latents = latents[0].detach().float().cpu().contiguous()
        return np.zeros((1, 1, self.channels), np.float32)


def record_of(path: Path) -> dict[str, Any] | None:
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            return json.loads((f.metadata() or {}).get("depthfusion", "null"))
    except Exception:  # a file cut short by a crash is simply made again
        return None


def latent_jobs(config: SimpleNamespace, prompts: list[str], split: str, seamless: bool,
                folder: Path) -> list[tuple[Path, dict[str, Any]]]:
    """(file, record) for ``prompts`` × ``samples_per_prompt`` seeds of ``split`` (train, or val's own seeds)."""
    offset = VAL_SEED_OFFSET if split == "val" else 0
    jobs = []
    for number, prompt in enumerate(prompts):
        for sample in range(config.samples_per_prompt):
            index = number * config.samples_per_prompt + sample
            record = {"model": config.model, "prompt": prompt, "seed": (config.seed + offset + index) % SEED_LIMIT,
                      "steps": config.sample_steps, "width": config.sample_width, "height": config.sample_height,
                      "guidance": config.sample_guidance, "seamless": seamless}
            jobs.append((folder / f"{split}-{number:06d}-{sample:03d}.safetensors", record))
    return jobs


def pending(jobs: list[tuple[Path, dict[str, Any]]], accelerator: Any) -> list[tuple[Path, dict[str, Any]]]:
    """This process's share of the jobs whose file is missing or made with other settings."""
    return [(path, record) for n, (path, record) in enumerate(jobs)
            if n % accelerator.num_processes == accelerator.process_index and record_of(path) != record]


def sample_into(backend: Any, jobs: list[tuple[Path, dict[str, Any]]], accelerator: Any, desc: str) -> None:
    """Sample each job's final latents with ``backend`` (an LDM3DBackend; its decoder is set aside meanwhile) into
    its file, written whole or not at all."""
    from safetensors.torch import save_file
    from tqdm import tqdm

    from td_bridge.params import validate_generation

    keep, decoder = KeepLatents(backend.variant.channels), backend.decoder
    backend.decoder = keep
    log.info("sampling %d %s with %s", len(jobs), desc, backend.model)
    try:
        for path, record in tqdm(jobs, desc=desc, unit="sample", disable=not accelerator.is_local_main_process):
            backend.generate(validate_generation({k: record[k] for k in SAMPLED}), lambda step, total: None,
                             lambda: False)
            partial = path.with_suffix(".tmp")
            save_file({"latents": keep.latents}, str(partial), metadata={"depthfusion": json.dumps(record)})
            partial.replace(path)
    finally:
        backend.decoder = decoder


def latent_set(jobs: list[tuple[Path, dict[str, Any]]]) -> LatentSet:
    return LatentSet([path for path, _ in jobs], [record["prompt"] for _, record in jobs])


def roll_and_crop(latents: torch.Tensor, crop: tuple[int, int], seamless: bool) -> torch.Tensor:
    """Per item: a random roll across the width (seamless: the seam moves), then a random crop to ``crop``."""
    height, width = crop
    out = []
    for item in latents:
        if seamless:
            item = torch.roll(item, int(torch.randint(item.shape[-1], ())), dims=-1)
        top = int(torch.randint(item.shape[-2] - height + 1, ()))
        left = int(torch.randint(item.shape[-1] - width + 1, ()))
        out.append(item[:, top:top + height, left:left + width])
    return torch.stack(out)
