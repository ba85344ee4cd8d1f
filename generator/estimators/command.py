"""``python -m generator depth IMAGE... -o DIR``: image files → frame folders like ``generate`` writes.

Everything that can be checked is checked before the model loads: every image is decoded once, every output
folder is free (or ``--overwrite``). Each file is written under a temporary name, flushed, then renamed into
place (metadata.json last), so an interrupted run never leaves a half-written file. Over several processes
(accelerate launch, torchrun) each checks every image and output, waits for the others to finish checking, then
estimates its share (image i: process i % processes); outputs are named by the images' file names.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
from pathlib import Path
from typing import Any

from td_bridge.depth import write_depth_png

from ..images import write_rgb_png
from ..sharding import Shard
from .checkpoints import NON_COMMERCIAL, licence_notice
from .frame import estimated_frame
from .inputs import ImageError, read_image

log = logging.getLogger("depthfusion.depth")

FILES = ("rgb.png", "depth.png", "metadata.json")


def plan_outputs(images: list[Path], output: Path, overwrite: bool) -> list[Path]:
    """The folder each image goes to: ``output`` itself for one image, ``output/<name>`` for several."""
    if len(images) == 1:
        folders = [output]
    else:
        folders, seen = [], {}
        for image in images:
            key = image.stem.lower()  # Windows and macOS folders ignore case
            if key in seen:
                raise ImageError(f"{seen[key]} and {image} would both write {output / image.stem}; rename one")
            seen[key] = image
            folders.append(output / image.stem)
    if not overwrite:
        taken = [str(folder / name) for folder in folders for name in FILES if (folder / name).exists()]
        if taken:
            raise FileExistsError(f"{', '.join(taken[:5])}{' ...' if len(taken) > 5 else ''} already there; "
                                  "pass --overwrite or choose another folder")
    return folders


def write_frame_folder(folder: Path, header: dict[str, Any], rgb: Any, depth: Any) -> None:
    """rgb.png, depth.png and metadata.json into ``folder``, each complete or not there at all."""
    folder.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(4)
    temps = {name: folder / f".{name}.{token}.partial" for name in FILES}
    try:
        write_rgb_png(temps["rgb.png"], rgb)
        write_depth_png(temps["depth.png"], depth)
        temps["metadata.json"].write_text(json.dumps(header, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        for temp in temps.values():
            with open(temp, "rb+") as f:
                os.fsync(f.fileno())
        for name in FILES:
            os.replace(temps[name], folder / name)
    finally:
        for temp in temps.values():
            temp.unlink(missing_ok=True)


def run(images: list[Path], output: Path, params: dict[str, Any], *, overwrite: bool, library: Any,
        model: str, device: str, revision: str | None, offline: bool, shard: Shard = Shard()) -> int:
    """Estimate every image (this process's share of them); returns the exit status (0)."""
    from tqdm import tqdm

    from .model import DepthModel

    folders = plan_outputs(images, output, overwrite)
    problems = []
    for image in images:  # decode each once now: a bad file stops the run before anything is written
        try:
            read_image(image)
        except ImageError as exc:
            problems.append(str(exc))
    if problems:
        raise ImageError("; ".join(problems))
    notice = licence_notice(model)
    if notice:
        (log.warning if NON_COMMERCIAL in notice else log.info)("%s", notice)
    depth_model = DepthModel.load(model, device=device, revision=revision, local_files_only=offline)
    shard.barrier()  # no process writes before every one has checked every output
    for image, folder in shard.mine(list(zip(images, folders))):
        rgb, source = read_image(image)
        with tqdm(desc=image.name[:30], unit="view", leave=False) as bar:
            def progress(step: int, total: int) -> None:
                bar.total = total
                bar.update(step - bar.n)

            header, result = estimated_frame(depth_model, rgb, params, source, progress)
        write_frame_folder(folder, header, result.rgb, result.depth)
        if library is not None:
            library.save(header, result.rgb, result.depth)
        metric = f", {result.near:.2f}-{result.far:.2f} m" if result.near is not None else ""
        print(f"wrote {folder} (frame {header['frame_id']}, {result.info['projection']}{metric}, "
              f"{header['timings']['generate_s']:.2f} s)")
    return 0
