"""Export a frame as a displaced, textured sphere mesh: glTF binary (.glb), OBJ or PLY.

The geometry is td_bridge's (the same mesh, sampling and mappings the TouchDesigner shader
reproduces); trimesh writes the files. Triangles across depth edges are culled. The .glb has
unit vertex normals and an unlit material (KHR_materials_unlit; metallic 0 for viewers without
it), so it looks like the picture. An OBJ's side files are named after it: NAME.mtl, NAME.png.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from td_bridge.depth import DepthMapping
from td_bridge.geometry import Displacer, discontinuous_triangles, sphere_mesh

FORMATS = (".glb", ".obj", ".ply")
ARRAY_BUFFER, ELEMENT_ARRAY_BUFFER = 34962, 34963  # glTF bufferView targets


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


def vertex_normals(positions: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """(N, 3) float32 unit normals: area-weighted face normals (counter-clockwise winding is the
    front), the radial direction where a vertex has no triangle of any area (culled, or at a pole)."""
    corners = positions[triangles].astype(np.float64)
    faces = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    sums = np.zeros((len(positions), 3))
    for corner in range(3):
        np.add.at(sums, triangles[:, corner], faces)
    radial = positions / np.maximum(np.linalg.norm(positions, axis=1, keepdims=True), 1e-30)
    side = 1.0 if np.sum(sums * radial) >= 0 else -1.0  # radial fallbacks face the way the surface does
    lengths = np.linalg.norm(sums, axis=1, keepdims=True)
    usable = lengths > 1e-12 * float(lengths.max(initial=0.0))
    normals = np.where(usable, sums / np.where(usable, lengths, 1.0), side * radial)
    return normals.astype(np.float32)


def side_files(path: Path) -> list[Path]:
    """Every file an export to ``path`` writes: the mesh, and for OBJ its material and texture."""
    if path.suffix.lower() != ".obj":
        return [path]
    return [path, path.with_name(_material_name(path) + ".mtl"), path.with_name(_material_name(path) + ".png")]


def _material_name(path: Path) -> str:
    """The OBJ material and side-file name: the file's stem, whitespace as '_' (OBJ and MTL split on it)."""
    return re.sub(r"\s", "_", path.stem)


def _finish_gltf(tree: dict[str, Any]) -> None:
    """Unlit material with metallic 0 as the fallback, and bufferView targets (validator hints)."""
    for material in tree.get("materials", []):
        material.setdefault("extensions", {})["KHR_materials_unlit"] = {}
        material.setdefault("pbrMetallicRoughness", {}).update(metallicFactor=0.0, roughnessFactor=1.0)
    tree["extensionsUsed"] = sorted({*tree.get("extensionsUsed", []), "KHR_materials_unlit"})
    views, accessors = tree["bufferViews"], tree["accessors"]
    for mesh in tree["meshes"]:
        for primitive in mesh["primitives"]:
            for accessor in primitive["attributes"].values():
                views[accessors[accessor]["bufferView"]]["target"] = ARRAY_BUFFER
            if "indices" in primitive:
                views[accessors[primitive["indices"]]["bufferView"]]["target"] = ELEMENT_ARRAY_BUFFER


def export_mesh(path: Path, rgb: np.ndarray, depth: np.ndarray, display: dict[str, Any],
                overwrite: bool = False) -> dict[str, Any]:
    """Write the displaced sphere to ``path`` (format from its suffix); returns a summary whose
    ``files`` lists every file written."""
    import trimesh
    from PIL import Image

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise ValueError(f"{path.name}: choose a file ending in {', '.join(FORMATS)}")
    written = side_files(path)
    existing = [str(p) for p in written if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{', '.join(existing)} already there; pass --overwrite or choose another name")
    result = displaced_mesh(rgb, depth, DepthMapping.from_params(display), display["mesh_rows"],
                            display["mesh_cols"], display["cull_jump"])
    if suffix == ".ply":
        visual = trimesh.visual.ColorVisuals(vertex_colors=result.colors)
    else:
        materials = trimesh.visual.material
        image = Image.fromarray(rgb)
        material = (materials.SimpleMaterial(image=image, diffuse=(255, 255, 255), ambient=(255, 255, 255),
                                             specular=(0, 0, 0), name=_material_name(path)) if suffix == ".obj" else
                    materials.PBRMaterial(name=path.stem, baseColorTexture=image, metallicFactor=0.0,
                                          roughnessFactor=1.0, doubleSided=True))
        uv = np.column_stack([result.uvs[:, 0], 1.0 - result.uvs[:, 1]])  # trimesh: v = 0 at the bottom
        visual = trimesh.visual.TextureVisuals(uv=uv, material=material)
    mesh = trimesh.Trimesh(result.positions, result.triangles, visual=visual, process=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".obj":
        text, files = trimesh.exchange.obj.export_obj(mesh, return_texture=True, mtl_name=written[1].name)
        if sorted(files) != sorted(p.name for p in written[1:]):  # never write a file we did not check
            raise RuntimeError(f"trimesh wrote {sorted(files)}, expected {[p.name for p in written[1:]]}")
        path.write_text(text, encoding="utf-8")
        for name, data in files.items():
            (path.parent / name).write_bytes(data)
    elif suffix == ".glb":
        mesh.vertex_normals = vertex_normals(result.positions, result.triangles)
        path.write_bytes(trimesh.exchange.gltf.export_glb(mesh, include_normals=True, tree_postprocessor=_finish_gltf))
    else:
        mesh.export(path)
    return {"path": str(path), "files": [str(p) for p in written], "vertices": len(result.positions),
            "triangles": len(result.triangles), "culled": result.culled}
