"""A mesh file (glTF binary, as ``export`` writes it) for the page: read with trimesh, checked, packed.

Binary layout of ``/model.bin``: a little-endian uint32 header length, the header JSON (vertex and index counts,
texture size, the mesh's radius, the clip planes to draw it with), positions (N·3 float32, td_bridge's world
frame: what ``export`` writes), texture coordinates (N·2 float32, v = 0 at the bottom as WebGL samples), vertex
colours (N·3 uint8), triangle indices (M·3 uint32) and the base colour texture (H·W·3 bytes, row 0 at the bottom).
A mesh with vertex colours only gets a 1×1 white texture; one with a texture only, white vertex colours.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MAX_VERTICES = 4_000_000
MAX_TEXTURE_SIDE = 16384
NEAR = 0.01  # m: the camera sits inside the mesh


@dataclass(frozen=True)
class Model:
    positions: np.ndarray  # (N, 3) float32
    uvs: np.ndarray  # (N, 2) float32, v = 0 at the bottom
    colors: np.ndarray  # (N, 3) uint8
    triangles: np.ndarray  # (M, 3) uint32
    texture: np.ndarray  # (H, W, 3) uint8, row 0 at the top

    @property
    def radius(self) -> float:
        return float(np.linalg.norm(self.positions, axis=1).max())


def load_model(path: Path) -> Model:
    """The one mesh in ``path`` (.glb); ValueError saying what is wrong with a file it cannot show."""
    import trimesh

    path = Path(path)
    if path.suffix.lower() != ".glb":
        raise ValueError(f"{path.name}: the viewer shows glTF binary meshes (.glb), as `export` writes them")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        mesh = trimesh.load(path, file_type="glb", force="mesh", process=False)
    except Exception as exc:  # trimesh raises many kinds for a broken file  # noqa: BLE001
        raise ValueError(f"{path}: not a readable glTF binary ({type(exc).__name__}: {exc})") from None
    positions = np.asarray(mesh.vertices, np.float32)
    triangles = np.asarray(mesh.faces, np.int64)
    if len(triangles) == 0 or positions.ndim != 2 or positions.shape[1] != 3:
        raise ValueError(f"{path}: no triangles to show")
    if len(positions) > MAX_VERTICES:
        raise ValueError(f"{path}: {len(positions)} vertices; the viewer takes at most {MAX_VERTICES}")
    if not np.isfinite(positions).all():
        raise ValueError(f"{path}: vertex positions that are not finite numbers")
    uvs, colors, texture = _appearance(mesh, len(positions))
    return Model(positions, uvs, colors, triangles.astype(np.uint32), texture)


def _appearance(mesh: object, count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(uvs, vertex colours, texture) of a trimesh mesh: its base colour texture, else its vertex colours."""
    visual = getattr(mesh, "visual", None)
    material = getattr(visual, "material", None)
    image = getattr(material, "baseColorTexture", None) or getattr(material, "image", None)
    uv = getattr(visual, "uv", None)
    white = np.full((count, 3), 255, np.uint8)
    if image is not None and uv is not None and len(uv) == count:
        texture = np.asarray(image.convert("RGB"), np.uint8)
        if max(texture.shape[:2]) > MAX_TEXTURE_SIDE:
            raise ValueError(f"texture {texture.shape[1]}x{texture.shape[0]} is larger than {MAX_TEXTURE_SIDE}")
        return np.asarray(uv, np.float32), white, texture
    colors = getattr(visual, "vertex_colors", None)
    vertex = np.asarray(colors, np.uint8)[:, :3] if colors is not None and len(colors) == count else white
    return np.zeros((count, 2), np.float32), vertex, np.full((1, 1, 3), 255, np.uint8)


def pack_model(model: Model) -> bytes:
    """The page's ``/model.bin`` (module docstring)."""
    height, width = model.texture.shape[:2]
    header = json.dumps({"vertices": len(model.positions), "indices": model.triangles.size, "width": width,
                         "height": height, "radius": model.radius,
                         "clip": [NEAR, 2.0 * model.radius + 1.0]}).encode()
    return b"".join([struct.pack("<I", len(header)), header, model.positions.astype("<f4").tobytes(),
                     model.uvs.astype("<f4").tobytes(), model.colors.tobytes(),
                     model.triangles.astype("<u4").tobytes(), np.ascontiguousarray(model.texture[::-1]).tobytes()])
