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

MAX_VERTICES = 4_000_000  # drawn, counting every node's instance of a mesh
MAX_TEXTURE_SIDE = 16384
MAX_RADIUS = 1e6  # m
NEAR = 0.01  # m: the camera sits inside the mesh
GLB_MAGIC, GLB_JSON = b"glTF", 0x4E4F534A
COMPONENT_BYTES = {5120: 1, 5121: 1, 5122: 2, 5123: 2, 5125: 4, 5126: 4}  # glTF 2.0 accessor componentType
TYPE_COMPONENTS = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4, "MAT2": 4, "MAT3": 9, "MAT4": 16}


@dataclass(frozen=True)
class Model:
    positions: np.ndarray  # (N, 3) float32
    uvs: np.ndarray  # (N, 2) float32, v = 0 at the bottom
    colors: np.ndarray  # (N, 3) uint8
    triangles: np.ndarray  # (M, 3) uint32
    texture: np.ndarray  # (H, W, 3) uint8, row 0 at the top

    @property
    def radius(self) -> float:
        return float(np.linalg.norm(self.positions.astype(np.float64), axis=1).max())


def load_model(path: Path) -> Model:
    """The meshes in ``path`` (.glb) joined into one as its nodes place them; ValueError saying what is wrong with
    a file it cannot show."""
    import trimesh

    path = Path(path)
    if path.suffix.lower() != ".glb":
        raise ValueError(f"{path.name}: the viewer shows glTF binary meshes (.glb), as `export` writes them")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        _check_glb(path)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
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
    if triangles.min() < 0 or triangles.max() >= len(positions):
        raise ValueError(f"{path}: triangles name vertices the mesh does not have")
    if not np.isfinite(positions).all():
        raise ValueError(f"{path}: vertex positions that are not finite numbers")
    uvs, colors, texture = _appearance(mesh, len(positions))
    model = Model(positions, uvs, colors, triangles.astype(np.uint32), texture)
    if model.radius > MAX_RADIUS:
        raise ValueError(f"{path}: a vertex {model.radius:.3g} m away; the viewer shows meshes within {MAX_RADIUS:g} m")
    return model


def _check_glb(path: Path) -> None:
    """ValueError unless ``path`` is a glTF 2.0 binary whose accessors lie inside its buffers and whose meshes, as
    its nodes instance them, stay within MAX_VERTICES: checked from its header and JSON chunk (the binary chunk is
    not read) before trimesh, which allocates what a file declares."""
    size = path.stat().st_size
    with path.open("rb") as file:
        header = file.read(20)
        if len(header) < 20 or header[:4] != GLB_MAGIC:
            raise ValueError("not a glTF binary (no glTF header)")
        version, length, json_length, json_type = struct.unpack_from("<4I", header, 4)
        if version != 2 or length > size or json_type != GLB_JSON or 20 + json_length > length:
            raise ValueError("not a glTF 2.0 binary this viewer reads (header or JSON chunk)")
        text = file.read(json_length)
    try:
        gltf = json.loads(text)
        buffers = [int(b.get("byteLength", 0)) for b in gltf.get("buffers", [])]
        views = gltf.get("bufferViews", [])
        accessors = gltf.get("accessors", [])
        for accessor in accessors:
            _check_accessor(accessor, views, buffers, size)
        vertices = [sum(accessors[int(p["attributes"]["POSITION"])]["count"] for p in m.get("primitives", []))
                    for m in gltf.get("meshes", [])]
        placed = sum(vertices[int(node["mesh"])] for node in gltf.get("nodes", []) if "mesh" in node)
        drawn = max(placed, sum(vertices))
    except (TypeError, KeyError, IndexError, AttributeError, json.JSONDecodeError) as exc:
        raise ValueError(f"not a readable glTF binary ({type(exc).__name__}: {exc})") from None
    if drawn > MAX_VERTICES:
        raise ValueError(f"{drawn} vertices as its nodes place them; the viewer takes at most {MAX_VERTICES}")


def _check_accessor(accessor: dict, views: list, buffers: list[int], size: int) -> None:
    """ValueError unless ``accessor`` reads only bytes its buffer view has, inside a buffer of at most ``size``."""
    count, offset = int(accessor["count"]), int(accessor.get("byteOffset", 0))
    if accessor.get("bufferView") is None or "sparse" in accessor:
        raise ValueError("an accessor without a buffer view (or sparse): not what `export` writes")
    view = views[int(accessor["bufferView"])]
    buffer = buffers[int(view.get("buffer", 0))]
    element = COMPONENT_BYTES[int(accessor["componentType"])] * TYPE_COMPONENTS[str(accessor["type"])]
    stride = int(view.get("byteStride", element))
    start, length = int(view.get("byteOffset", 0)), int(view["byteLength"])
    if count < 1 or offset < 0 or stride < element or start < 0 or start + length > min(buffer, size) or \
            offset + (count - 1) * stride + element > length:
        raise ValueError(f"an accessor of {count} elements reads past its buffer view")


def _appearance(mesh: object, count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(uvs, vertex colours, texture) of a trimesh mesh: its base colour texture, else its vertex colours."""
    visual = getattr(mesh, "visual", None)
    material = getattr(visual, "material", None)
    image = getattr(material, "baseColorTexture", None) or getattr(material, "image", None)
    uv = getattr(visual, "uv", None)
    white = np.full((count, 3), 255, np.uint8)
    if image is not None and uv is not None and len(uv) == count:
        if max(image.size) > MAX_TEXTURE_SIDE:  # before it is decoded
            raise ValueError(f"texture {image.size[0]}x{image.size[1]} is larger than {MAX_TEXTURE_SIDE}")
        return np.asarray(uv, np.float32), white, np.asarray(image.convert("RGB"), np.uint8)
    colors = getattr(visual, "vertex_colors", None)
    vertex = np.asarray(colors, np.uint8)[:, :3] if colors is not None and len(colors) == count else white
    return np.zeros((count, 2), np.float32), vertex, np.full((1, 1, 3), 255, np.uint8)


def pack_model(model: Model) -> bytes:
    """The page's ``/model.bin`` (module docstring)."""
    height, width = model.texture.shape[:2]
    header = json.dumps({"vertices": len(model.positions), "indices": model.triangles.size, "width": width,
                         "height": height, "radius": model.radius,
                         "clip": [NEAR, 2.0 * model.radius + 1.0]}, allow_nan=False).encode()
    return b"".join([struct.pack("<I", len(header)), header, model.positions.astype("<f4").tobytes(),
                     model.uvs.astype("<f4").tobytes(), model.colors.tobytes(),
                     model.triangles.astype("<u4").tobytes(), np.ascontiguousarray(model.texture[::-1]).tobytes()])
