"""The GLSL MAT's shaders outside TouchDesigner: compiled by glslangValidator with a stand-in for
TouchDesigner's built-ins, and the displacement run on Mesa's llvmpipe (moderngl, EGL) against
td_bridge's numpy reference."""

import os
import re
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, require_tool
from generator.render.glsl import POSITION_ATTRIBUTES, pixel_header, vertex_header
from td_bridge import td_builds
from td_bridge.depth import DepthMapping
from td_bridge.geometry import Displacer, discontinuous_triangles, displace_blended, sphere_mesh
from td_bridge.protocol import Frame
from td_bridge.render_setup import shader_uniforms
from td_bridge.top_frames import to_top

sys.path.insert(0, str(ROOT / "touchdesigner"))
import shader_source  # noqa: E402

# What TouchDesigner declares in front of a GLSL MAT's code: the renderer's stand-in (generator/render/glsl.py),
# with the position input of each build (td_bridge.td_builds): P on 2023 builds, TDPos() on 2025 builds.
TD_VERSION = "#version 460\n"

# ------------------------------------------------------------------ glslangValidator


def validate(tmp_path, vertex, pixel, declared="TDPos()", options=()):
    """glslangValidator on both stages behind a header that declares the ``declared`` position input."""
    tool = require_tool("glslangValidator", "glslang-tools")
    (tmp_path / "df.vert").write_text(vertex_header(declared, TD_VERSION) + vertex, encoding="utf-8")
    (tmp_path / "df.frag").write_text(pixel_header(TD_VERSION) + pixel, encoding="utf-8")
    return subprocess.run([tool, "-l", *options, "df.vert", "df.frag"], cwd=tmp_path, capture_output=True, text=True)


@pytest.mark.parametrize("position", td_builds.POSITION_INPUTS)
def test_the_shaders_compile_and_link_for_each_builds_position_input(tmp_path, position):
    result = validate(tmp_path, shader_source.vertex_source(position), shader_source.pixel_source(), position)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "WARNING" not in result.stdout, result.stdout


@pytest.mark.parametrize("position, other, message", [("TDPos()", "P", "no matching overloaded function"),
                                                      ("P", "TDPos()", "undeclared identifier")])
def test_a_position_input_the_build_lacks_does_not_compile(tmp_path, position, other, message):
    result = validate(tmp_path, shader_source.vertex_source(position), shader_source.pixel_source(), other)
    assert result.returncode != 0 and message in result.stdout, result.stdout


def test_the_linked_stages_sample_both_frames_of_a_blend(tmp_path):
    """glslang's reflection of the linked program (stage bits: 1 vertex, 16 pixel): the previous frame's depth is
    live in the vertex stage, its colour in the pixel stage, the blend factor in both."""
    result = validate(tmp_path, shader_source.vertex_source(), shader_source.pixel_source(), options=("-q",))
    assert result.returncode == 0, result.stdout + result.stderr
    stages = {name: int(bits) for name, bits in re.findall(r"^(\w+): offset .* stages (\d+)$", result.stdout, re.M)}
    assert stages["sDepth"] & stages["sDepthPrev"] & 1 and stages["sColor"] & stages["sColorPrev"] & 16, stages
    assert stages["uBlend"] & 1 and stages["uBlend"] & 16 and stages["uPoles"] & 1, stages


def test_the_position_line_is_rewritten_not_duplicated():
    text = shader_source.vertex_source("P")
    assert td_builds.with_position(text, "TDPos()") == shader_source.vertex_source("TDPos()")
    assert text.count("#define DF_POSITION") == 1
    with pytest.raises(ValueError, match="one of TDPos\\(\\), P"):
        td_builds.with_position(text, "gl_Vertex")
    with pytest.raises(ValueError, match="does not start with"):
        td_builds.with_position(shader_source.pixel_source(), "P")


@pytest.mark.parametrize(
    "stage, old, new, message",
    [
        ("vertex", "TDWorldToProj(", "TDWorldToProjection(", "no matching overloaded function"),
        ("pixel", "iVert.keep", "iVert.fade", "no such field"),
        ("pixel", "} iVert;", "    float extra;\n} iVert;", "DepthFusionVertex"),
    ],
)
def test_the_validator_catches_mistakes(tmp_path, stage, old, new, message):
    vertex, pixel = shader_source.vertex_source(), shader_source.pixel_source()
    if stage == "vertex":
        vertex = vertex.replace(old, new)
    else:
        pixel = pixel.replace(old, new)
    result = validate(tmp_path, vertex, pixel)
    assert result.returncode != 0 and message in result.stdout, result.stdout


# ------------------------------------------------------------------ llvmpipe


HARNESS = """#version 450 core
in vec3 P;
out vec3 outPosition;
out float outKeep;
{common}
void main()
{{
    vec4 displaced = dfDisplace(normalize(P));
    outPosition = displaced.xyz;
    outKeep = displaced.w;
}}
"""


@pytest.fixture(scope="module")
def gl():
    import moderngl

    try:
        ctx = moderngl.create_standalone_context(backend="egl")
    except Exception as exc:  # no EGL / Mesa on this machine
        message = (f"no OpenGL context through EGL ({exc}); Debian: libegl1 libegl-mesa0 libgl1-mesa-dri, "
                   "installed by `python3 dev.py test` as root")
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    ctx.simple_framebuffer((4, 4)).use()  # transform feedback needs a bound framebuffer on Mesa
    yield ctx
    ctx.release()


def depth_texture(ctx, depth16):
    """The texture of a frame's depth as the component's Script TOP holds it, and the frame's pole depths."""
    top = to_top(Frame(np.zeros(depth16.shape + (3,), np.uint8), depth16, {"frame_id": "t", "seq": 1}))
    return ctx.texture((depth16.shape[1], depth16.shape[0]), 1, data=top.depth.tobytes(), dtype="nu2"), top.poles


def run_vertex_stage(ctx, mesh, depth16, mapping, cull_jump=0.0, previous16=None, blend=1.0):
    """(positions (N, 3), keep (N,)) from the shader for the mesh's directions; with ``previous16``, blended from
    that frame's depth at factor ``blend`` (without, the frame's own texture is bound as the previous one)."""
    import moderngl

    program = ctx.program(vertex_shader=HARNESS.format(common=shader_source.common_source()),
                          varyings=["outPosition", "outKeep"])
    texture, poles = depth_texture(ctx, depth16)
    before, previous_poles = (texture, poles) if previous16 is None else depth_texture(ctx, previous16)
    texture.use(0)
    before.use(1)
    display = {"mapping": mapping.mode, "radius": mapping.radius, "strength": mapping.strength,
               "near": mapping.near, "far": mapping.far, "cull_jump": cull_jump, "mesh_rows": mesh.rows,
               "mesh_cols": mesh.cols}
    uniforms = shader_uniforms(display, "keep", poles, previous_poles, blend)  # what the component gives the MAT
    for name, value in {"sDepth": 0, "sDepthPrev": 1, **uniforms}.items():
        if name in program:  # unused uniforms are compiled away
            program[name].value = value[:program[name].dimension] if isinstance(value, tuple) else value
    vbo = ctx.buffer(np.ascontiguousarray(mesh.directions, dtype="f4").tobytes())
    out = ctx.buffer(reserve=len(mesh.directions) * 16)
    vao = ctx.vertex_array(program, [(vbo, "3f", "P")])
    vao.transform(out, mode=moderngl.POINTS)
    result = np.frombuffer(out.read(), dtype="f4").reshape(-1, 4)
    for thing in {vao, out, vbo, texture, before, program}:
        thing.release()
    return result[:, :3], result[:, 3]


@pytest.mark.parametrize("position", td_builds.POSITION_INPUTS)
def test_the_component_vertex_stage_runs_for_each_position_input(gl, position):
    """The vertex shader DAT's own text (not a harness) behind each build's declarations, its gl_Position
    captured by transform feedback: identity TDDeform/TDWorldToProj give the displaced position."""
    import moderngl

    program = gl.program(vertex_shader=vertex_header(position) + shader_source.vertex_source(position),
                         varyings=["gl_Position"])
    mesh, mapping = sphere_mesh(12, 24), MAPPINGS[0]
    depth16 = np.round(smooth_depth(32, 64, 2) * 65535).astype(np.uint16)
    top = to_top(Frame(np.zeros(depth16.shape + (3,), np.uint8), depth16, {"frame_id": "t", "seq": 1}))
    texture = gl.texture((depth16.shape[1], depth16.shape[0]), 1, data=top.depth.tobytes(), dtype="nu2")
    texture.use(0)
    display = {"mapping": "linear", "radius": mapping.radius, "strength": mapping.strength, "near": 1.0,
               "far": 100.0, "cull_jump": 0.0, "mesh_rows": mesh.rows, "mesh_cols": mesh.cols}
    identity = tuple(np.eye(4).ravel())  # uTDWorldToProj: TDWorldToProj passes positions through
    for name, value in {"sDepth": 0, "uTDWorldToProj": identity, **shader_uniforms(display, "keep", top.poles)}.items():
        if name in program:
            program[name].value = value[:program[name].dimension] if isinstance(value, tuple) else value
    attribute = POSITION_ATTRIBUTES[position]
    vbo = gl.buffer(np.ascontiguousarray(mesh.directions, dtype="f4").tobytes())
    out = gl.buffer(reserve=len(mesh.directions) * 16)
    vao = gl.vertex_array(program, [(vbo, "3f", attribute)])
    vao.transform(out, mode=moderngl.POINTS)
    got = np.frombuffer(out.read(), dtype="f4").reshape(-1, 4)
    for thing in (vao, out, vbo, texture, program):
        thing.release()
    expected = Displacer(mesh, depth16.shape)(depth16, mapping)
    assert np.allclose(got[:, 3], 1.0) and relative_error(got[:, :3], expected).max() <= 1e-4


def smooth_depth(height, width, seed):
    rng = np.random.default_rng(seed)
    v, u = np.mgrid[0:height, 0:width] / np.array([height, width])[:, None, None]
    field = 0.5 + 0.3 * np.sin(2 * np.pi * (3 * u + rng.random())) * np.cos(np.pi * (2 * v + rng.random()))
    return np.clip(field + rng.normal(0, 0.05, field.shape), 0, 1)


MAPPINGS = [DepthMapping("linear", radius=1.0, strength=1.0), DepthMapping("linear", radius=3.0, strength=1.5),
            DepthMapping("metric", near=0.5, far=20.0)]
MAPPING_IDS = ["paper", "paper-strong", "metric"]


def relative_error(got, expected):
    return np.linalg.norm(got - expected, axis=1) / np.linalg.norm(expected, axis=1)


@pytest.mark.parametrize("mapping", MAPPINGS, ids=MAPPING_IDS)
def test_vertex_displacement_matches_numpy_on_smooth_depth(gl, mapping):
    mesh = sphere_mesh(48, 96)
    depth16 = np.round(smooth_depth(128, 256, 1) * 65535).astype(np.uint16)
    expected = Displacer(mesh, depth16.shape)(depth16, mapping)
    got, keep = run_vertex_stage(gl, mesh, depth16, mapping)
    error = relative_error(got, expected)
    assert error.max() <= 1e-4, f"max relative error {error.max():.2e} at vertex {error.argmax()}"
    assert (keep == 1).all()  # edge test off


@pytest.mark.parametrize("mapping", MAPPINGS, ids=MAPPING_IDS)
@pytest.mark.parametrize("prompt, seed", [("a room", 3), ("a landscape", 5)])
def test_vertex_displacement_matches_numpy_on_demo_scenes(gl, mapping, prompt, seed):
    """Full size: 1024×512 depth with hard object edges, the default 256×512 mesh. Away from depth
    edges the shader agrees to 1e-4; on the vertices of triangles that the default cull (0.1)
    removes, float32 texel positions (~1e-4 px) across a jump of up to 90 % of the depth range
    allow more."""
    from generator.backends.demo import DemoBackend
    from td_bridge.params import validate_generation

    params = validate_generation({"prompt": prompt, "seed": seed, "width": 1024, "height": 512})
    depth16 = DemoBackend().generate(params, lambda step, total: None, lambda: False).depth
    mesh = sphere_mesh(256, 512)
    expected = Displacer(mesh, depth16.shape)(depth16, mapping)
    got, _ = run_vertex_stage(gl, mesh, depth16, mapping)
    error = relative_error(got, expected)
    edge = np.zeros(len(error), bool)
    radii = np.linalg.norm(expected, axis=1)
    edge[mesh.triangles[discontinuous_triangles(mesh.triangles, radii, 0.1)].ravel()] = True
    assert edge.mean() < 0.05
    assert error[~edge].max() <= 1e-4, f"max relative error off the edges {error[~edge].max():.2e}"
    assert error.max() <= 1e-3, f"max relative error {error.max():.2e}"


def test_the_paper_rule_direction(gl):
    """Depth 1 pulls a vertex toward the viewer, 0 pushes it away, 0.5 leaves it on the sphere."""
    mesh = sphere_mesh(8, 16)
    for value, radius in ((65535, 0.5), (0, 1.5), (32768, 1.0)):
        got, _ = run_vertex_stage(gl, mesh, np.full((16, 32), value, np.uint16), DepthMapping("linear"))
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), radius, rtol=2e-5)


def test_depth_edges_are_flagged_where_numpy_culls(gl):
    mesh = sphere_mesh(48, 96)
    depth = np.full((128, 256), 0.2)
    depth[30:90, 60:140] = 0.9  # a near object in front of a far wall
    depth16 = np.round(depth * 65535).astype(np.uint16)
    mapping = DepthMapping("metric", near=1.0, far=10.0)
    _, keep = run_vertex_stage(gl, mesh, depth16, mapping, cull_jump=0.1)
    radii = np.linalg.norm(Displacer(mesh, depth16.shape)(depth16, mapping), axis=1)
    culled = discontinuous_triangles(mesh.triangles, radii, 0.1)
    assert culled.any()
    assert (keep[mesh.triangles[culled]] == 0).any(axis=1).all()  # every numpy-culled triangle is touched
    flagged = keep == 0
    assert flagged.sum() <= 3 * len(np.unique(mesh.triangles[culled]))  # and little else
    assert np.isin(keep, (0.0, 1.0)).all()


# ------------------------------------------------------------------ the frame blend (Blend Time)


def blend_pair():
    """Two frames' depth of different sizes, as an upscaled frame following a generated one."""
    previous = np.round(smooth_depth(128, 256, 7) * 65535).astype(np.uint16)
    new = np.round(smooth_depth(64, 128, 8) * 65535).astype(np.uint16)
    return previous, new


@pytest.mark.parametrize("mapping", MAPPINGS, ids=MAPPING_IDS)
@pytest.mark.parametrize("blend", [0.5, 0.25])
def test_a_blend_displaces_to_the_mapping_of_the_blended_depth(gl, mapping, blend):
    """td_bridge's definition (depth.blend_depth, geometry.displace_blended): each frame sampled on its own, the
    depths mixed, then mapped; halfway, the radius of the mean depth."""
    mesh = sphere_mesh(48, 96)
    previous, new = blend_pair()
    expected = displace_blended(mesh, previous, new, blend, mapping)
    got, keep = run_vertex_stage(gl, mesh, new, mapping, previous16=previous, blend=blend)
    error = relative_error(got, expected)
    assert error.max() <= 1e-4, f"max relative error {error.max():.2e} at vertex {error.argmax()}"
    assert (keep == 1).all()
    if mapping.mode == "metric":  # not the mean of the two radii: the metric mapping is not affine
        before = Displacer(mesh, previous.shape).sample(previous)
        after = Displacer(mesh, new.shape).sample(new)
        radii = (1 - blend) * mapping(before) + blend * mapping(after)
        assert relative_error(got, mesh.directions * radii[:, None]).max() > 1e-2


def test_blend_1_reads_nothing_of_the_previous_frame(gl):
    """The single-frame output, bit for bit, whatever the previous texture holds (and blend 0 is the previous
    frame's own output)."""
    mesh, mapping = sphere_mesh(48, 96), MAPPINGS[2]
    previous, new = blend_pair()
    alone = run_vertex_stage(gl, mesh, new, mapping, cull_jump=0.3)
    blended = run_vertex_stage(gl, mesh, new, mapping, cull_jump=0.3, previous16=previous, blend=1.0)
    assert all(np.array_equal(a, b) for a, b in zip(alone, blended))
    start = run_vertex_stage(gl, mesh, new, mapping, cull_jump=0.3, previous16=previous, blend=0.0)
    previous_alone = run_vertex_stage(gl, mesh, previous, mapping, cull_jump=0.3)
    assert relative_error(start[0], previous_alone[0]).max() <= 1e-6 and np.array_equal(start[1], previous_alone[1])


def test_the_edge_test_sees_the_blended_surface(gl):
    """A near box in the previous frame, a flat wall in the new one: halfway, the box stands out half as far in
    depth and a cull fraction between the two jumps flags its edges at the start only, as numpy does."""
    mesh = sphere_mesh(48, 96)
    previous = np.full((128, 256), 0.2)
    previous[30:90, 60:140] = 0.9
    previous16 = np.round(previous * 65535).astype(np.uint16)
    new16 = np.full((128, 256), round(0.2 * 65535), np.uint16)
    mapping = DepthMapping("metric", near=1.0, far=10.0)  # jumps: 2.25 at the start, 1.13 halfway
    for blend, flagged in ((0.0, True), (0.5, False)):
        _, keep = run_vertex_stage(gl, mesh, new16, mapping, cull_jump=1.5, previous16=previous16, blend=blend)
        radii = np.linalg.norm(displace_blended(mesh, previous16, new16, blend, mapping), axis=1)
        culled = discontinuous_triangles(mesh.triangles, radii, 1.5)
        assert bool(culled.any()) is flagged and bool((keep == 0).any()) is flagged, blend
        if flagged:
            assert (keep[mesh.triangles[culled]] == 0).any(axis=1).all()
