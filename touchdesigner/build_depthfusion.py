"""Build the DepthFusion component inside TouchDesigner from the files in this folder.

In TouchDesigner's Textport (Alt+T):

    import runpy; runpy.run_path(r'C:/path/to/depthfusion/touchdesigner/build_depthfusion.py', run_name='__main__')

builds ``/project1/DepthFusion`` (the root's ``DepthFusion`` where the project has no ``/project1``) and saves
``DepthFusion.tox`` next to this file. Safe to repeat in one TouchDesigner session, also after a ``git pull``:
``runpy`` reads this file afresh and the builder drops the repository's modules Python has cached
(:data:`REPOSITORY_MODULES`) before importing them. The same ``build(td, parent, folder)`` runs in the tests
against a stand-in for TouchDesigner's ``td`` module (tests/tdstub/td.py), which checks operator types,
parameter names and signatures.

The network: custom parameters (parameters.py); the extension and the callback DATs; the frame
Script TOPs ``rgb`` and ``depth`` and, for the crossfade from one frame to the next (Blend Time), ``rgb_prev`` and
``depth_prev`` holding the previous frame; the sphere (Sphere SOP in a Geometry COMP) with the GLSL MAT
``displace``; left/right eye cameras and renders, side-by-side and top-bottom layouts; 360° stereo
(Render TOP ``cubemapods`` → Render Select TOPs → Projection TOPs, equirectangular); a 180° dome
fisheye (cube map → Projection TOP); Out TOPs (named so that TouchDesigner's alphanumeric connector
order is docs/touchdesigner.md's order); an OSC In DAT (saved inactive, on 127.0.0.1, at the OSC page's port: no port opens
until the component's settings say so); the ``diagnostics`` Text DAT and the ``shader_info`` Info DAT on the
GLSL MAT; td_bridge embedded as Text DATs in ``bridge_source`` with a version stamp (td_bridge.stamp): the
component always uses this copy, whatever else is on TouchDesigner's path. Values derived from the custom
parameters (mesh size, cameras, resolutions, uniforms, the shader's position input) are written by
DepthFusionExt.ApplySettings. Building again replaces an existing ``DepthFusion`` (its extension is
closed first) instead of making ``DepthFusion1``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
COMPONENT = "DepthFusion"
PULSES = ["Connect", "Disconnect", "Generate", "Cancel", "Recall", "Depthfromtop", "Upscale", "Diagnose",
          "Applyfixes", "Keep", "Take", "Remix"]
OUTPUTS = ["left", "right", "side_by_side", "top_bottom", "ods", "dome", "rgb", "depth"]  # Out TOPs, in order
EXTENSION = "op('./DepthFusionExt').module.DepthFusionExt(me)"
# Script TOPs: the newest frame and the previous one (read by the shader only while a frame blend runs); 16-bit
# depth stays 16-bit
PIXEL_FORMATS = {"rgb": "rgba8fixed", "depth": "mono16fixed", "rgb_prev": "rgba8fixed", "depth_prev": "mono16fixed"}
BRIDGE_SOURCE, STAMP = "bridge_source", "VERSION_STAMP"  # as DepthFusionExt reads them (upper case: no module's name); not 'td_bridge', which
# TouchDesigner's DAT import would find before the package
# Cached by Python from this repository; dropped before a build imports them, so a rebuild sees edited files.
REPOSITORY_MODULES = ("build_depthfusion", "parameters", "shader_source", "td_bridge")


def out_name(index: int, output: str) -> str:
    """Out TOP name; TouchDesigner orders a component's outputs alphanumerically by name."""
    return f"out{index + 1}_{output}"
UNIFORMS = ["uMapping", "uRange", "uPoles", "uMeshStep", "uBlend"]  # the GLSL MAT's vector uniforms
SAMPLERS = [("sDepth", "depth", "nearest"), ("sColor", "rgb", "linear"),  # name, TOP, filter
            ("sDepthPrev", "depth_prev", "nearest"), ("sColorPrev", "rgb_prev", "linear")]
NO_BLEND = {"uBlend": 1.0}  # the x value a uniform starts with (the rest start at 0; ApplySettings writes them all)


def _at(node: Any, x: int, y: int) -> Any:
    node.nodeX, node.nodeY = x, y
    return node


def _dat(parent: Any, kind: type, name: str, text: str, x: int, y: int) -> Any:
    dat = _at(parent.create(kind, name), x, y)
    dat.text = text
    return dat


def _wire(source: Any, target: Any) -> None:
    source.outputConnectors[0].connect(target.inputConnectors[0])


def forget_repository_modules() -> None:
    """Drop REPOSITORY_MODULES (td_bridge with its submodules) from Python's module cache."""
    for name in list(sys.modules):
        if name.split(".")[0] in REPOSITORY_MODULES and name != __name__:
            del sys.modules[name]


def _imports(folder: Path) -> tuple[Any, Any, Any, Any, Any]:
    """parameters.py, shader_source.py, td_bridge.render_setup, td_bridge.td_builds and td_bridge.stamp, read
    afresh from the repository holding ``folder``."""
    forget_repository_modules()
    repo = folder.parent
    for path in (str(folder), str(repo)):  # parameters.py imports td_bridge's schema: this repository's
        if path in sys.path:
            sys.path.remove(path)
    sys.path.insert(0, str(repo))
    sys.path.insert(0, str(folder))
    try:
        import parameters
        import shader_source
    finally:
        sys.path.remove(str(folder))
    from td_bridge import render_setup, stamp, td_builds

    return parameters, shader_source, render_setup, td_builds, stamp


def _frames(td: Any, comp: Any, read) -> None:
    """Script TOPs for the newest frame and the previous one, and the per-frame Execute DAT."""
    for row, name in enumerate(PIXEL_FORMATS):
        script = _dat(comp, td.textDAT, f"{name}_top", read(f"callbacks/{name}_top.py"), 0, 300 - 150 * row)
        top = _at(comp.create(td.scriptTOP, name), 200, 300 - 150 * row)
        top.par.callbacks = script.name
        top.par.format = PIXEL_FORMATS[name]
    execute = _dat(comp, td.executeDAT, "frames", read("callbacks/execute.py"), -200, -300)
    execute.par.framestart = True
    execute.par.active = True


def _scene(td: Any, comp: Any, shader_source: Any, rs: Any, position: str) -> None:
    """The sphere: Sphere SOP in a Geometry COMP, displaced and coloured by the GLSL MAT."""
    vertex = _dat(comp, td.textDAT, "vertex", shader_source.vertex_source(position), 400, 150)
    pixel = _dat(comp, td.textDAT, "pixel", shader_source.pixel_source(), 400, 0)
    for dat in (vertex, pixel):
        dat.par.extension, dat.par.customext = "custom", "glsl"  # for external editors
    mat = _at(comp.create(td.glslMAT, rs.MATERIAL), 600, 100)
    mat.par.glslversion = "glsl460"
    mat.par.vdat, mat.par.pdat = vertex.name, pixel.name
    mat.seq.sampler.numBlocks = len(SAMPLERS)
    for index, (uniform, top, filtering) in enumerate(SAMPLERS):
        mat.par[f"sampler{index}name"].val = uniform
        mat.par[f"sampler{index}top"].val = top
        mat.par[f"sampler{index}extendu"].val = "repeat"  # longitude wraps around
        mat.par[f"sampler{index}extendv"].val = "hold"
        mat.par[f"sampler{index}filter"].val = filtering
    mat.seq.vec.numBlocks = len(UNIFORMS)
    for index, uniform in enumerate(UNIFORMS):
        mat.par[f"vec{index}name"].val = uniform
        if uniform in NO_BLEND:
            mat.par[f"vec{index}valuex"].val = NO_BLEND[uniform]

    geo = _at(comp.create(td.geometryCOMP, rs.GEOMETRY), 800, 100)
    for child in geo.findChildren(depth=1):  # a new Geometry COMP holds a torus
        child.destroy()
    geo.par.material.expr = f"parent.{COMPONENT}.op('{rs.MATERIAL}')"
    mesh = geo.create(td.sphereSOP, rs.MESH)
    mesh.par.type = "mesh"
    mesh.par.surftype = "triangles"
    mesh.par.orient = "y"
    mesh.par.upole = True  # each column its own pole point, like td_bridge.geometry.sphere_mesh
    mesh.par.texture = "equirectangularin"
    mesh.par.radx = mesh.par.rady = mesh.par.radz = 1.0  # unit directions; the shader sets the radius
    mesh.display = mesh.render = True


def _render(td: Any, comp: Any, rs: Any, name: str, camera: str, mode: str, x: int, y: int) -> Any:
    cam = _at(comp.create(td.cameraCOMP, camera), x - 200, y)
    cam.par.rord = "xyz"
    top = _at(comp.create(td.renderTOP, name), x, y)
    top.par.camera, top.par.geometry = cam.name, rs.GEOMETRY
    top.par.rendermode = mode
    top.par.cullface = "neither"  # the cameras are inside the sphere
    top.par.outputresolution = "custom"
    return top


def _layout(td: Any, comp: Any, name: str, tops: list[Any], align: str, x: int, y: int) -> Any:
    """A Layout TOP of ``tops`` at the size ApplySettings gives it (each input fills its cell)."""
    layout = _at(comp.create(td.layoutTOP, name), x, y)
    layout.par.top = " ".join(top.name for top in tops)
    layout.par.align = align
    layout.par.scaleres = False
    layout.par.fit = "fill"
    layout.par.outputresolution = "custom"
    return layout


def _projection(td: Any, comp: Any, name: str, source: Any, output: str, x: int, y: int) -> Any:
    top = _at(comp.create(td.projectionTOP, name), x, y)
    _wire(source, top)
    top.par.input = "cubemap"
    top.par.output = output
    top.par.outputresolution = "custom"
    return top


def _outputs(td: Any, comp: Any, rs: Any) -> None:
    """Stereo pair, its layouts, 360° stereo and the dome fisheye, each into an Out TOP."""
    eyes = [_render(td, comp, rs, rs.render(eye), rs.camera(eye), "render2d", 1200, 300 - 150 * i)
            for i, eye in enumerate(rs.EYES)]
    final = dict(zip(rs.EYES, eyes))
    final["side_by_side"] = _layout(td, comp, rs.SIDE_BY_SIDE, eyes, "horizlr", 1400, 300)
    final["top_bottom"] = _layout(td, comp, rs.TOP_BOTTOM, eyes, "verttb", 1400, 150)

    _render(td, comp, rs, rs.ODS_RENDER, rs.ODS_CAMERA, "cubemapods", 1200, -100)
    ods = []
    for index, eye in enumerate(rs.EYES):
        select = _at(comp.create(td.renderselectTOP, rs.ods_select(eye)), 1400, -100 - 150 * index)
        select.par.top = rs.ODS_RENDER
        select.par.cameraindex = index  # the Render TOP's second eye is camera index 1 (Ods Left Index: 0)
        projection = _projection(td, comp, rs.ods(eye), select, "equirectangular", 1600, -100 - 150 * index)
        flip = _at(comp.create(td.flipTOP, rs.ods_flip(eye)), 1700, -100 - 150 * index)  # Equirect Mirror
        _wire(projection, flip)
        ods.append(flip)
    final["ods"] = _layout(td, comp, rs.ODS_TOP_BOTTOM, ods, "verttb", 1800, -100)

    dome = _render(td, comp, rs, rs.DOME_RENDER, rs.DOME_CAMERA, "cubemap", 1200, -450)
    final["dome"] = _projection(td, comp, rs.DOME, dome, "fisheye", 1400, -450)
    final["rgb"], final["depth"] = comp.op("rgb"), comp.op("depth")
    for index, name in enumerate(OUTPUTS):
        _wire(final[name], _at(comp.create(td.outTOP, out_name(index, name)), 2000, 300 - 120 * index))


def _remove_old(parent: Any) -> None:
    """Close and delete an earlier build, so the new one gets the name ``DepthFusion``. Whatever a broken old
    build raises while it closes is reported in the Textport; it is deleted all the same."""
    old = parent.op(COMPONENT)
    if old is None:
        return
    try:
        extension = getattr(old.ext, "DepthFusionExt", None)
        if extension is not None:
            extension.onDestroyTD()
    except Exception as exc:  # noqa: BLE001 - an old extension must not stop the rebuild
        print(f"build_depthfusion: closing the old {old.path} failed ({type(exc).__name__}: {exc}); deleting it")
    old.destroy()


def build(td: Any, parent: Any, folder: Path) -> Any:
    """Create ``parent/DepthFusion`` from ``folder`` (this touchdesigner/ folder) and return it."""
    folder = Path(folder)
    parameters, shader_source, render_setup, td_builds, stamp = _imports(folder)

    def read(name: str) -> str:
        return (folder / name).read_text(encoding="utf-8")

    position = td_builds.vertex_position_input(td_builds.parse_build(td.app.version, td.app.build))
    _remove_old(parent)
    comp = parent.create(td.baseCOMP, COMPONENT)
    if comp.name != COMPONENT:
        raise RuntimeError(f"could not name the component {COMPONENT}: {comp.path} exists")
    comp.par.parentshortcut = COMPONENT  # lets operators inside find the component: parent.DepthFusion
    parameters.create_parameters(comp)

    bridge = _at(comp.create(td.baseCOMP, BRIDGE_SOURCE), -400, -200)  # the td_bridge this component uses
    sources = stamp.folder_sources(folder.parent / "td_bridge")
    for index, (name, text) in enumerate(sources.items()):
        _dat(bridge, td.textDAT, name, text, 0, -120 * index)
    _dat(bridge, td.textDAT, STAMP, stamp.source_stamp(sources), 200, 0)

    _dat(comp, td.textDAT, "DepthFusionExt", read("DepthFusionExt.py"), -400, 0)
    _frames(td, comp, read)
    _scene(td, comp, shader_source, render_setup, position)
    _outputs(td, comp, render_setup)

    changes = _dat(comp, td.parameterexecuteDAT, "parameters", read("callbacks/parexec.py"), 0, -300)
    changes.par.op = ".."
    changes.par.custom = True
    changes.par.onpulse = changes.par.valuechange = True
    changes.par.pars = " ".join(PULSES + parameters.SETTINGS_PARS + parameters.LIVE_PARS)
    changes.par.active = True
    osc = _dat(comp, td.textDAT, "osc_callbacks", read("callbacks/osc_in.py"), -200, -450)
    osc_in = _at(comp.create(td.oscinDAT, "osc_in"), 0, -450)
    osc_in.par.callbacks = osc.name  # then Active, Port and Local Address follow the OSC page (ApplySettings)
    osc_in.par.active = False  # saved closed: no UDP port opens before the settings (or if the start fails)
    osc_in.par.port = parameters.OSC_PORT
    osc_in.par.localaddress = "127.0.0.1"
    _at(comp.create(td.textDAT, "diagnostics"), 200, -450)  # written by the Diagnose pulse
    info = _at(comp.create(td.infoDAT, "shader_info"), 800, 250)  # the GLSL MAT's compile log, for Diagnose
    info.par.op = render_setup.MATERIAL

    comp.seq.ext.numBlocks = 1  # the Extensions page's sequence (TouchDesigner 2023.11290 and later)
    comp.par.ext0object = EXTENSION
    comp.par.ext0name = "DepthFusionExt"
    comp.par.ext0promote = True
    comp.initializeExtensions()
    return comp


def main(folder: Path = HERE) -> Any:
    """Inside TouchDesigner: build into /project1 (the root where there is none) and save DepthFusion.tox beside
    this file."""
    import td  # TouchDesigner's own module; not importable elsewhere

    parent = td.op("/project1") or td.op("/")
    comp = build(td, parent, folder)
    target = comp.save(str(Path(folder) / "DepthFusion.tox"), createFolders=True)
    print(f"saved {target}")
    return comp


if __name__ == "__main__":
    main()
