"""Export a frame as a displaced, textured sphere mesh: glTF binary (.glb), OBJ or PLY.

The geometry is td_bridge's (the same mesh, sampling and mappings the TouchDesigner shader
reproduces); trimesh writes the files. Triangles across depth edges are culled.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from td_bridge.depth import DepthMapping
from td_bridge.geometry import Displacer, discontinuous_triangles, sphere_mesh

FORMATS = (".glb", ".obj", ".ply")


@dataclass
class DisplacedMesh:
    positions: np.ndarray  # (N, 3) float32
    uvs: np.ndarray  # (N, 2) float32, image convention (v = 0 at the top)
    colors: np.ndarray  # (N, 3) uint8, RGB sampled at each vertex
    triangles: np.ndarray  # (M, 3) int32, culled triangles removed
    culled: int


def displaced_mesh(rgb: np.ndarray, depth: np.ndarray, mapping: DepthMapping, rows: int, cols: int,
                   cull_jump: float) -> DisplacedMesh:
    if rgb.shape[:2] != depth.shape:
        raise ValueError(f"rgb {rgb.shape[:2]} and depth {depth.shape} sizes differ")
    mesh = sphere_mesh(rows, cols)
    displacer = Displacer(mesh, depth.shape)
    positions = displacer(depth, mapping)
    colors = np.stack([displacer.sample(rgb[..., c].astype(np.float32)) for c in range(3)], axis=-1)
    triangles = mesh.triangles
    culled = 0
    if cull_jump > 0:
        keep = ~discontinuous_triangles(triangles, np.linalg.norm(positions, axis=1), cull_jump)
        culled = int(len(triangles) - keep.sum())
        triangles = triangles[keep]
    return DisplacedMesh(positions, mesh.uvs, np.clip(np.rint(colors), 0, 255).astype(np.uint8), triangles, culled)


def export_mesh(path: Path, rgb: np.ndarray, depth: np.ndarray, display: dict[str, Any],
                overwrite: bool = False) -> dict[str, Any]:
    """Write the displaced sphere to ``path`` (format from its suffix); returns a summary."""
    import trimesh
    from PIL import Image

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise ValueError(f"{path.name}: choose a file ending in {', '.join(FORMATS)}")
    written = [path] + ([path.with_suffix(".mtl"), path.parent / "material_0.png"] if suffix == ".obj" else [])
    existing = [str(p) for p in written if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{', '.join(existing)} already there; pass --overwrite or choose another name")
    result = displaced_mesh(rgb, depth, DepthMapping.from_params(display), display["mesh_rows"],
                            display["mesh_cols"], display["cull_jump"])
    if suffix == ".ply":
        visual = trimesh.visual.ColorVisuals(vertex_colors=result.colors)
    else:
        material = trimesh.visual.material.PBRMaterial(baseColorTexture=Image.fromarray(rgb), doubleSided=True)
        uv = np.column_stack([result.uvs[:, 0], 1.0 - result.uvs[:, 1]])  # trimesh: v = 0 at the bottom
        visual = trimesh.visual.TextureVisuals(uv=uv, material=material)
    mesh = trimesh.Trimesh(result.positions, result.triangles, visual=visual, process=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".obj":
        text, files = trimesh.exchange.obj.export_obj(mesh, return_texture=True, mtl_name=path.with_suffix(".mtl").name)
        path.write_text(text, encoding="utf-8")
        for name, data in files.items():
            (path.parent / name).write_bytes(data)
    else:
        mesh.export(path)
    return {"path": str(path), "vertices": len(result.positions), "triangles": len(result.triangles),
            "culled": result.culled}
