import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from td_bridge import geometry as g
from td_bridge.depth import DepthMapping, from_uint16

unit = st.floats(-1, 1, allow_nan=False)


@given(st.tuples(unit, unit, unit).filter(lambda d: np.linalg.norm(d) > 1e-3))
def test_direction_uv_direction_round_trip(d):
    d = np.asarray(d) / np.linalg.norm(d)
    u, v = g.direction_to_uv(d)
    assert 0 <= u < 1 and 0 <= v <= 1
    np.testing.assert_allclose(g.uv_to_direction(u, v), d, atol=1e-9)


def test_convention_landmarks():
    np.testing.assert_allclose(g.uv_to_direction(0.5, 0.5), [0, 0, -1], atol=1e-12)  # ahead
    np.testing.assert_allclose(g.uv_to_direction(0.75, 0.5), [1, 0, 0], atol=1e-12)  # right
    np.testing.assert_allclose(g.uv_to_direction(0.3, 0.0), [0, 1, 0], atol=1e-12)  # up
    np.testing.assert_allclose(g.uv_to_direction(0.0, 0.5), g.uv_to_direction(1.0, 0.5), atol=1e-12)


@pytest.mark.parametrize("rows, cols", [(2, 3), (7, 12), (64, 128)])
def test_sphere_mesh_structure(rows, cols):
    mesh = g.sphere_mesh(rows, cols)
    n = (rows + 1) * (cols + 1)
    assert mesh.directions.shape == (n, 3) and mesh.uvs.shape == (n, 2) and mesh.normals.shape == (n, 3)
    assert len(mesh.triangles) == 2 * cols * (rows - 1)  # one triangle per pole segment
    np.testing.assert_allclose(np.linalg.norm(mesh.directions, axis=1), 1, atol=1e-6)
    grid = mesh.directions.reshape(rows + 1, cols + 1, 3)
    np.testing.assert_allclose(grid[:, 0], grid[:, -1], atol=1e-6)  # seam vertices coincide
    uv = mesh.uvs.reshape(rows + 1, cols + 1, 2)
    assert (uv[1:-1, 0, 0] == 0).all() and (uv[1:-1, -1, 0] == 1).all()  # seam UVs do not wrap
    np.testing.assert_allclose(uv[0, :-1, 0], (np.arange(cols) + 0.5) / cols, rtol=1e-6)  # distinct, mid-segment
    p = mesh.directions.astype(np.float64)
    t = mesh.triangles
    normal = np.cross(p[t[:, 1]] - p[t[:, 0]], p[t[:, 2]] - p[t[:, 0]])
    area = np.linalg.norm(normal, axis=1)
    assert area.min() > 0  # no degenerate triangle, poles included
    assert (np.einsum("ij,ij->i", normal, p[t].sum(axis=1)) < 0).all()  # all face the origin
    unused = set(range(n)) - set(np.unique(t).tolist())
    assert unused == {cols, n - 1}  # only the last vertex of each pole row (u = 1) is spare


def test_mesh_size_is_validated():
    with pytest.raises(ValueError):
        g.sphere_mesh(1, 8)
    with pytest.raises(ValueError):
        g.sphere_mesh(8, 2)


def test_depth_half_everywhere_gives_radius_exactly():
    mesh = g.sphere_mesh(16, 32)
    displacer = g.Displacer(mesh, (32, 64))
    positions = displacer(np.full((32, 64), 0.5, np.float32), DepthMapping("linear", radius=3.0, strength=1.0))
    np.testing.assert_allclose(np.linalg.norm(positions, axis=1), 3.0, rtol=1e-6)


def test_sampling_is_bilinear_wraps_across_the_seam_and_keeps_poles_single_points():
    width, height = 8, 4
    depth = np.zeros((height, width), np.float32)
    depth[:, 0] = 1.0  # only the first column is near
    mesh = g.sphere_mesh(4, 8)
    d = g.Displacer(mesh, (height, width)).sample(depth).reshape(5, 9)
    # vertex u = 0 sits on the seam, half-way between the centres of columns 7 and 0
    np.testing.assert_allclose(d[1:-1, 0], 0.5, atol=1e-6)
    np.testing.assert_allclose(d[1:-1, -1], 0.5, atol=1e-6)
    np.testing.assert_allclose(d[1:-1, 4], 0.0, atol=1e-6)
    assert np.ptp(d[0]) == 0 and np.ptp(d[-1]) == 0  # each pole one radius
    with pytest.raises(ValueError, match="built for"):
        g.Displacer(mesh, (height, width)).sample(np.zeros((5, 8)))


def test_uint16_and_float_depth_agree():
    rng = np.random.default_rng(3)
    depth16 = rng.integers(0, 65536, (16, 32), dtype=np.uint16)
    displacer = g.Displacer(g.sphere_mesh(8, 16), (16, 32))
    np.testing.assert_allclose(displacer.sample(depth16), displacer.sample(from_uint16(depth16)), atol=1e-6)


@pytest.mark.parametrize("prompt", ["a gallery interior", "a mountain landscape"])
def test_metric_mapping_puts_vertices_on_the_demo_scenes_true_surfaces(prompt):
    from generator.backends.demo import DemoBackend, scene_for

    width, height = 512, 256
    out = DemoBackend().generate({"prompt": prompt, "seed": 4, "width": width, "height": height, "steps": 1},
                                 lambda s, n: None, lambda: False)
    scene = scene_for(prompt, 4)
    mesh = g.sphere_mesh(64, 128)
    positions = g.Displacer(mesh, (height, width))(out.depth, DepthMapping("metric", near=out.near, far=out.far))
    radii = np.linalg.norm(positions, axis=1)
    truth = scene.distance(mesh.directions.astype(np.float64))
    # away from depth edges (where bilinear sampling blends two surfaces) vertices land on the
    # analytic surface; flag triangles that straddle edges and look at vertices of the rest
    inner = ~g.discontinuous_triangles(mesh.triangles, truth, max_jump=0.1)
    vertices = np.unique(mesh.triangles[inner])
    vertices = vertices[(vertices > mesh.cols) & (vertices < mesh.vertex_count - mesh.cols - 1)]
    rel = np.abs(radii[vertices] - truth[vertices]) / truth[vertices]
    assert len(vertices) > 0.8 * mesh.vertex_count
    assert np.percentile(rel, 99) < 0.005 and np.median(rel) < 1e-4


def test_discontinuous_triangles_flags_only_depth_edges():
    triangles = np.array([[0, 1, 2], [1, 2, 3]])
    radii = np.array([1.0, 1.02, 1.05, 3.0])
    np.testing.assert_array_equal(g.discontinuous_triangles(triangles, radii, 0.1), [False, True])
    with pytest.raises(ValueError):
        g.discontinuous_triangles(triangles, radii, 0)


@given(ipd=st.floats(0, 0.2), yaw=st.floats(-180, 180), pitch=st.floats(-89, 89), roll=st.floats(-90, 90))
def test_eye_separation_equals_ipd_and_is_centred_on_the_head(ipd, yaw, pitch, roll):
    head = np.array([0.3, 1.6, -0.2])
    left, right = g.eye_positions(ipd, head, g.rotation_matrix(yaw, pitch, roll))
    assert np.linalg.norm(right - left) == pytest.approx(ipd, abs=1e-12)
    np.testing.assert_allclose((left + right) / 2, head, atol=1e-12)


def test_right_eye_is_to_the_right():
    left, right = g.eye_positions(0.064, head_rotation=g.rotation_matrix(yaw_deg=90))
    # yawed 90° left (counter-clockwise seen from above): facing −X, so right is −Z
    np.testing.assert_allclose(g.rotation_matrix(yaw_deg=90) @ [0, 0, -1], [-1, 0, 0], atol=1e-12)
    np.testing.assert_allclose(right - left, [0, 0, -0.064], atol=1e-12)


def project(projection, view, point):
    clip = projection @ view @ np.append(point, 1.0)
    return clip[:3] / clip[3]


@settings(max_examples=40)
@given(convergence=st.floats(0.5, 20), ipd=st.floats(0.01, 0.1), x=st.floats(-1, 1), y=st.floats(-1, 1))
def test_off_axis_frusta_converge_at_the_convergence_distance(convergence, ipd, x, y):
    left, right = g.eye_positions(ipd)
    pl = g.off_axis_projection(-ipd / 2, convergence, 60, 16 / 9)
    pr = g.off_axis_projection(+ipd / 2, convergence, 60, 16 / 9)
    on_plane = np.array([x, y, -convergence])
    a = project(pl, g.view_matrix(left), on_plane)
    b = project(pr, g.view_matrix(right), on_plane)
    np.testing.assert_allclose(a[:2], b[:2], atol=1e-9)  # zero parallax
    nearer = np.array([x, y, -convergence / 2])
    a, b = project(pl, g.view_matrix(left), nearer), project(pr, g.view_matrix(right), nearer)
    assert a[0] > b[0]  # crossed (negative) parallax: in front of the screen


def test_frustum_matches_a_symmetric_perspective():
    p = g.off_axis_projection(0.0, 5.0, 90, 1.0, near=1.0, far=10.0)
    np.testing.assert_allclose(project(p, np.eye(4), [1, 1, -1]), [1, 1, -1], atol=1e-12)
    np.testing.assert_allclose(project(p, np.eye(4), [0, 0, -10])[2], 1.0)
    with pytest.raises(ValueError):
        g.off_axis_projection(0.0, 0.0, 60, 1.0)


def test_stereo_layouts():
    left, right = np.zeros((2, 3, 3)), np.ones((2, 3, 3))
    assert g.side_by_side(left, right).shape == (2, 6, 3) and g.side_by_side(left, right)[0, 3, 0] == 1
    assert g.top_bottom(left, right).shape == (4, 3, 3) and g.top_bottom(left, right)[2, 0, 0] == 1


def test_ods_eyes_lie_on_the_ipd_circle_tangent_to_the_ray_and_collapse_at_the_poles():
    ipd = 0.064
    left, right, directions = g.ods_rays(64, 32, ipd, pole_fade_start_deg=60)
    phi = 90 - 180 * (np.arange(32) + 0.5) / 32
    equator = np.abs(phi) <= 60
    np.testing.assert_allclose(np.linalg.norm(left[equator], axis=-1), ipd / 2, rtol=1e-9)
    np.testing.assert_allclose(left, -right)
    np.testing.assert_allclose(np.einsum("...k,...k->...", right, directions), 0, atol=1e-12)  # tangent
    assert (left[..., 1] == 0).all()
    radius = np.linalg.norm(right, axis=-1)[:, 0]
    assert np.all(np.diff(radius[:6]) > 0) and radius[0] < 0.05 * ipd / 2  # fades toward the pole
    # at the front pixel (looking −Z) the right eye is at +X
    front = right[16, 32] / np.linalg.norm(right[16, 32])
    np.testing.assert_allclose(front, [1, 0, 0], atol=0.06)


@given(st.floats(0, 1), st.floats(0, 1))
def test_fisheye_round_trip_inside_the_circle(u, v):
    d, inside = g.fisheye_uv_to_direction(u, v)
    if not inside or np.hypot(2 * u - 1, 1 - 2 * v) < 1e-9:
        return
    u2, v2, inside2 = g.direction_to_fisheye_uv(d)
    assert inside2
    assert u2 == pytest.approx(u, abs=1e-9) and v2 == pytest.approx(v, abs=1e-9)


def test_domemaster_landmarks():
    d, _ = g.fisheye_uv_to_direction(np.array([0.5, 0.5, 1.0]), np.array([0.5, 1.0, 0.5]))
    np.testing.assert_allclose(d, [[0, 1, 0], [0, 0, -1], [1, 0, 0]], atol=1e-12)  # zenith, front, right
    assert not g.direction_to_fisheye_uv(np.array([0, -1.0, 0]))[2]  # nadir is outside 180°


@given(st.tuples(unit, unit, unit).filter(lambda d: np.linalg.norm(d) > 1e-3))
def test_cube_round_trip(d):
    d = np.asarray(d) / np.linalg.norm(d)
    face, s, t = g.direction_to_cube(d)
    assert 0 <= s <= 1 and 0 <= t <= 1
    np.testing.assert_allclose(g.cube_to_direction(face, s, t), d, atol=1e-9)


def test_cube_faces_follow_opengl():
    faces, s, t = g.direction_to_cube(np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1.0]]))
    assert [g.CUBE_FACES[f] for f in faces] == ["+X", "-X", "+Y", "-Y", "+Z", "-Z"]
    np.testing.assert_allclose(s, 0.5) and np.testing.assert_allclose(t, 0.5)
    face, s, t = g.direction_to_cube(np.array([1.0, 0.5, 0.5]))  # +X face: sc = −z, tc = −y
    assert face == 0 and s == pytest.approx(0.25) and t == pytest.approx(0.25)


# ------------------------------------------------------------------ perspective views


@settings(max_examples=60, deadline=None)
@given(st.floats(-180, 180), st.floats(-90, 90), st.floats(10, 170), st.floats(0, 1), st.floats(0, 1))
def test_perspective_round_trip(yaw, pitch, fov, u, v):
    rotation = g.rotation_matrix(yaw, pitch)
    d = g.perspective_uv_to_direction(u, v, fov, rotation)
    np.testing.assert_allclose(np.linalg.norm(d), 1.0, atol=1e-12)
    u2, v2, inside = g.direction_to_perspective_uv(d, fov, rotation)
    assert inside
    np.testing.assert_allclose([u2, v2], [u, v], atol=1e-9)


def test_perspective_view_follows_the_conventions():
    # centre of an unrotated view looks down −Z; u = 1 at 90° fov is 45° to the right (+X), v = 0 is up
    np.testing.assert_allclose(g.perspective_uv_to_direction(0.5, 0.5, 90.0), [0, 0, -1], atol=1e-12)
    np.testing.assert_allclose(g.perspective_uv_to_direction(1.0, 0.5, 90.0), [2**-0.5, 0, -(2**-0.5)], atol=1e-12)
    np.testing.assert_allclose(g.perspective_uv_to_direction(0.5, 0.0, 90.0), [0, 2**-0.5, -(2**-0.5)], atol=1e-12)
    # a view turned by yaw 90 (head turn to the left) looks at −X; pitch 90 looks up
    np.testing.assert_allclose(g.perspective_uv_to_direction(0.5, 0.5, 60.0, g.rotation_matrix(90, 0)), [-1, 0, 0],
                               atol=1e-12)
    np.testing.assert_allclose(g.perspective_uv_to_direction(0.5, 0.5, 60.0, g.rotation_matrix(0, 90)), [0, 1, 0],
                               atol=1e-12)
    _, _, inside = g.direction_to_perspective_uv(np.array([[0, 0, 1.0], [1.0, 0, -0.5], [0.3, 0.2, -1]]), 90.0)
    assert inside.tolist() == [False, False, True]  # behind, outside the 90° view, inside
    with pytest.raises(ValueError, match="fov"):
        g.perspective_uv_to_direction(0.5, 0.5, 180.0)
