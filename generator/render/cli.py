"""``python -m generator render``: a frame folder or library frame → a still image or a video of one view."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from td_bridge.depth import read_depth_png
from td_bridge.params import VIEW_PARAMS, validate

from ..images import read_rgb_png
from . import video
from .views import VIEWS, Renderer

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
VIDEO_SUFFIXES = (".mp4",)
# Stereo metadata for video views (Spherical Video V2): (stereo mode, equirectangular)
VIDEO_METADATA = {"ods": ("top-bottom", True), "tb": ("top-bottom", False), "sbs": ("left-right", False)}
PLAYER_TAGS = ("_360_TB", "_TB", "_OU")  # what headset players look for in a 360° top-bottom file's name


def load_frame(source: str, library: Any) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """(metadata, rgb, depth) of a frame folder (rgb.png, depth.png, metadata.json) or a library frame id."""
    folder = Path(source)
    if folder.is_dir():
        meta_file = folder / "metadata.json"
        meta: dict[str, Any] = {}
        if meta_file.exists():
            try:
                meta = json.loads(meta_file.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise ValueError(f"{meta_file}: not valid JSON ({exc})") from None
            if not isinstance(meta, dict):
                raise ValueError(f"{meta_file}: expected a JSON object")
        missing = [name for name in ("rgb.png", "depth.png") if not (folder / name).is_file()]
        if missing:
            raise FileNotFoundError(f"{folder}: no {' or '.join(missing)} (a frame folder from generate or depth)")
        rgb, depth = read_rgb_png(folder / "rgb.png"), read_depth_png(folder / "depth.png")
        if rgb.shape[:2] != depth.shape:
            raise ValueError(f"{folder}: rgb {rgb.shape[1]}x{rgb.shape[0]} and depth {depth.shape[1]}x"
                             f"{depth.shape[0]} sizes differ")
        return meta, rgb, depth
    if library is not None and library.get(source) is not None:
        return library.load(source)
    where = f" nor a frame id in the library {library.root}" if library is not None else " (and --no-library)"
    raise FileNotFoundError(f"{source!r} is neither a frame folder{where}")


def _check_output(path: Path, suffixes: tuple[str, ...], overwrite: bool) -> None:
    if path.suffix.lower() not in suffixes:
        raise ValueError(f"{path.name}: choose a file ending in {', '.join(suffixes)}")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already there; pass --overwrite or choose another name")


def player_name_hint(path: Path, view_name: str) -> str | None:
    """A note for a 360° top-bottom still whose name players will not recognise, else None."""
    if view_name != "ods" or any(path.stem.upper().endswith(tag) for tag in PLAYER_TAGS):
        return None
    return (f"players recognise 360° top-bottom stereo images by name: consider "
            f"{path.with_name(path.stem + '_360_TB' + path.suffix)}")


def write_image(path: Path, image: np.ndarray) -> None:
    from PIL import Image

    options = {} if path.suffix.lower() == ".png" else {"quality": 95}
    Image.fromarray(image).save(path, **options)


def default_amplitude(renderer: Renderer, view: Mapping[str, Any]) -> float:
    """A fifth of the way from the head to the nearest surface, less half the IPD."""
    head = math.dist((view["head_x"], view["head_y"], view["head_z"]), (0, 0, 0))
    return max(0.0, 0.2 * (renderer.scene.radii[0] - head) - view["ipd"] / 2)


def render_video(renderer: Renderer, args: Any, view: dict[str, Any]) -> int:
    from tqdm import tqdm

    from .spherical import add_spherical_metadata

    frames = video.check_timing(args.seconds, args.fps)
    amplitude = default_amplitude(renderer, view) if args.amplitude is None else args.amplitude
    positions = video.head_positions(args.path, frames, amplitude, view)
    reach = float(np.linalg.norm(positions, axis=1).max()) + view["ipd"] / 2
    if args.view == "ods" and reach >= renderer.scene.radii[0]:
        raise ValueError(f"--amplitude {amplitude:g} takes the ODS eyes {reach:g} m from the centre, beyond the "
                         f"nearest surface ({renderer.scene.radii[0]:g} m); choose a smaller one")

    def images():
        for x, y, z in positions:
            yield renderer.render(args.view, {**view, "head_x": x, "head_y": y, "head_z": z})

    partial = args.video.with_name(args.video.name + ".partial.mp4")  # the file appears whole or not at all
    try:
        with tqdm(total=frames, unit="frame", desc=f"{args.view} {args.path}", leave=False) as bar:
            video.write_video(partial, images(), args.fps, on_frame=lambda: bar.update(1))
        if args.view in VIDEO_METADATA:
            add_spherical_metadata(partial, *VIDEO_METADATA[args.view])
        partial.replace(args.video)
    finally:
        partial.unlink(missing_ok=True)
    return frames


def run(args: Any, rgb: np.ndarray, depth: np.ndarray, display: dict[str, Any], view_given: Mapping[str, Any]) -> int:
    """The render command for parsed ``args``, a loaded frame and validated display parameters."""
    if args.view not in VIEWS:
        raise ValueError(f"--view must be one of {', '.join(VIEWS)}")
    view = validate(view_given, VIEW_PARAMS)
    out = args.video if args.video is not None else args.output
    _check_output(out, VIDEO_SUFFIXES if args.video is not None else IMAGE_SUFFIXES, args.overwrite)
    with Renderer(rgb, depth, display, view["edges"], samples=args.samples) as renderer:
        if args.video is not None:
            frames = render_video(renderer, args, view)
            print(f"wrote {out}: {frames} frames at {args.fps} frames/s ({args.view}, {args.path})")
            return 0
        image = renderer.render(args.view, view)
    write_image(out, image)
    print(f"wrote {out}: {image.shape[1]}x{image.shape[0]} ({args.view})")
    hint = player_name_hint(out, args.view)
    if hint:
        print(hint)
    return 0
