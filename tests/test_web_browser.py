"""The web viewer in a real browser: Debian's Chromium driven by Selenium, WebGL 2 on SwiftShader (headless).

The page loads without console errors, shows a frame, draws a fixed view — mono and each eye of side by side — that
matches the project's renderer (generator/render, the same GLSL on Mesa's llvmpipe) within the TOLERANCE below, and
a prompt typed and generated on the page arrives as a new frame. WebXR: an emulated headset (Meta's Immersive Web
Emulation Runtime, npm package iwer, installed by `dev.py test`) is installed into the page before its scripts run;
*Enter VR* starts an immersive-vr session and each eye, drawn with the emulated device's projection and pose,
matches the renderer through the same matrix. Without Chromium, chromedriver or iwer it skips (fails under CI=true:
`dev.py test` installs them).
"""

from __future__ import annotations

import base64
import os
import shutil
import time
from typing import Any, Iterator

import numpy as np
import pytest

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.support.select import Select  # noqa: E402
pytest.importorskip("aiohttp")

from conftest import SMALL, require_node_module, wait_for  # noqa: E402
from generator.frames import display_for_frame  # noqa: E402
from generator.render.cameras import eye_matrix  # noqa: E402
from generator.render.scene import Scene  # noqa: E402
from generator.web.server import WebServer  # noqa: E402
from generator.web.sources import GeneratorLink  # noqa: E402
from td_bridge import geometry as g  # noqa: E402
from td_bridge.params import VIEW_PARAMS, validate  # noqa: E402
from td_bridge.receiver import CommandClient  # noqa: E402

# The readback against generator/render: mean absolute difference per channel (0-255), and the share of pixels
# off by more than 16 levels anywhere (a triangle edge or a culled sheet rasterised a pixel apart). Measured with
# SwiftShader against llvmpipe: mean 0.084, 0.02 % of pixels (3 of 15,360) beyond 16, the rest within 2 levels.
TOLERANCE_MEAN = 0.5
TOLERANCE_OUTLIERS = 0.002
# An exported mesh against the frame it was made from: its triangles across depth edges are culled by `export`, the
# shader culls per pixel, so outlines sit a pixel or two apart. Measured: mean 2.4, 2.3 % of pixels off by > 16, all
# along the depth edges.
MESH_TOLERANCE_MEAN = 4.0
VIEW = {"yaw": 30.0, "pitch": 10.0, "eye_width": 160, "eye_height": 96}


def _tool(names: tuple[str, ...], package: str) -> str:
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    message = f"{names[0]} is not installed (Debian: {package}); `python3 dev.py test` installs it as root"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = _tool(("chromium", "chromium-browser"), "chromium")
    for flag in ("--headless=new", "--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--no-sandbox",
                 "--disable-dev-shm-usage", "--window-size=640,480", "--disable-gpu-sandbox"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(_tool(("chromedriver",), "chromium-driver")), options=options)
    driver.set_script_timeout(60)
    yield driver
    driver.quit()


@pytest.fixture
def web(server) -> Iterator[WebServer]:
    web = WebServer(GeneratorLink(server.frames, server.commands), "127.0.0.1", 0)
    web.start()
    yield web
    web.stop()


def _page_frames(driver: Any) -> int:
    return driver.execute_script("return window.depthfusion && window.depthfusion.ready() ? "
                                 "window.depthfusion.frames() : 0")


BASE64 = ("let s = ''; for (let i = 0; i < p.length; i += 8192) s += String.fromCharCode(...p.subarray(i, i + 8192));"
          "return btoa(s);")


def _snapshot(driver: Any, eye: str) -> np.ndarray:
    data = driver.execute_script(
        "const p = window.depthfusion.snapshot(arguments[0], arguments[1], arguments[2], arguments[3], arguments[4]);"
        + BASE64, eye, VIEW["yaw"], VIEW["pitch"], VIEW["eye_width"], VIEW["eye_height"])
    pixels = np.frombuffer(base64.b64decode(data), np.uint8)
    return pixels.reshape(VIEW["eye_height"], VIEW["eye_width"], 4)[..., :3]


def _canvas(driver: Any) -> np.ndarray:
    """The page's canvas as drawn last (its context keeps the drawing buffer), RGB, row 0 on top."""
    width, height, data = driver.execute_script(
        "const gl = document.getElementById('view').getContext('webgl2');"
        "gl.bindFramebuffer(gl.FRAMEBUFFER, null);"
        "const [w, h] = [gl.drawingBufferWidth, gl.drawingBufferHeight];"
        "const p = new Uint8Array(w * h * 4); gl.readPixels(0, 0, w, h, gl.RGBA, gl.UNSIGNED_BYTE, p);"
        "return [w, h, (() => {" + BASE64 + "})()];")
    pixels = np.frombuffer(base64.b64decode(data), np.uint8).reshape(height, width, 4)
    return pixels[::-1, :, :3]


def _screenshot(driver: Any, name: str) -> None:
    """The browser window as a person sees it, into $DEPTHFUSION_SCREENSHOTS/NAME where that is set (docs/web.md's
    pictures: `DEPTHFUSION_SCREENSHOTS=docs/screens python3 dev.py test tests/test_web_browser.py`)."""
    folder = os.environ.get("DEPTHFUSION_SCREENSHOTS")
    if folder:
        os.makedirs(folder, exist_ok=True)
        driver.save_screenshot(os.path.join(folder, name))


def _compare(page: np.ndarray, reference: np.ndarray, what: str) -> None:
    difference = np.abs(page.astype(np.int16) - reference.astype(np.int16))
    mean, outliers = float(difference.mean()), float((difference.max(axis=2) > 16).mean())
    print(f"{what} vs generator/render: mean |difference| {mean:.3f}, share of pixels off by > 16: {outliers:.4f}")
    assert reference.mean() > 10  # the view shows the scene, not the clear colour
    assert mean <= TOLERANCE_MEAN and outliers <= TOLERANCE_OUTLIERS, what


def _draw(ctx: Any, frame: Any, view: dict[str, Any], matrices: list[tuple[np.ndarray, int, int]]) -> list[np.ndarray]:
    """generator/render's pictures of ``frame`` through each (world → clip matrix, width, height)."""
    display = display_for_frame({}, frame.meta)
    scene = Scene(ctx, frame.rgb, frame.depth, display, view["edges"], samples=1)
    try:
        return [scene.draw(matrix, width, height) for matrix, width, height in matrices]
    finally:
        scene.release()


def _errors(driver: Any) -> list[str]:
    """Console errors, and WebGL's warnings (a wrong uniform call is only a warning)."""
    return [entry["message"] for entry in driver.get_log("browser")
            if entry["level"] == "SEVERE" or "WebGL" in entry["message"]]


def test_the_page_shows_the_frame_as_the_renderer_draws_it(browser, web, server, ctx) -> None:
    with CommandClient(server.commands) as client:
        client.generate(**SMALL, prompt="a hall", seed=11)
        browser.get(web.url)
        wait_for(lambda: _page_frames(browser) >= 1, 60, "the page to show a frame")
        frame = client.get_frame()
    assert browser.execute_script("return window.depthfusion.frame().frame_id") == frame.frame_id
    eyes = ("mono", "left", "right")
    pages = [_snapshot(browser, eye) for eye in eyes]
    assert _errors(browser) == []
    _screenshot(browser, "web-viewer.png")
    Select(browser.find_element("id", "mode")).select_by_value("sbs")  # the canvas itself, side by side
    wait_for(lambda: browser.execute_script("return window.depthfusion.drawn()") == "sbs", 10, "a side-by-side draw")
    canvas = _canvas(browser)

    view = validate(VIEW, VIEW_PARAMS)
    display = display_for_frame({}, frame.meta)
    half, height = canvas.shape[1] // 2, canvas.shape[0]
    start = validate({"eye_width": half, "eye_height": height}, VIEW_PARAMS)  # where the page starts: yaw 0
    references = _draw(ctx, frame, view, [(eye_matrix(view, display, eye), view["eye_width"], view["eye_height"])
                                          for eye in eyes] +
                       [(eye_matrix(start, display, eye), half, height) for eye in ("left", "right")])
    for eye, page, reference in zip(eyes, pages, references):
        _compare(page, reference, f"the page's {eye} eye")
    for eye, page, reference in zip(("left", "right"), (canvas[:, :half], canvas[:, half:2 * half]), references[3:]):
        _compare(page, reference, f"the side-by-side canvas's {eye} half")
    assert np.abs(pages[1].astype(np.int16) - pages[2]).mean() > 1  # the eyes see the scene from two places


IWER = {"ipd": 0.07, "fovy_deg": 80.0, "near": 0.1, "far": 1000.0}  # the headset's own (WebXR's default clip)


def _headset_matrix(eye: str, aspect: float) -> np.ndarray:
    """World → clip of an emulated headset's eye at the session's start, worked out here from the device's
    documented set-up (symmetric perspective of vertical field fovy; eyes ±IPD/2 from the head, which the
    'local' space puts at its origin) with td_bridge's geometry, independently of the page's WebXR code."""
    left, right = g.eye_positions(IWER["ipd"])
    projection = g.off_axis_projection(0.0, 1.0, IWER["fovy_deg"], aspect, IWER["near"], IWER["far"])
    return projection @ g.view_matrix(left if eye == "left" else right)


def test_enter_vr_draws_each_eye_with_the_headsets_view(browser, web, server, ctx) -> None:
    """An emulated Meta Quest 3 (iwer) stands in for a headset: the page offers *Enter VR*, the immersive-vr
    session starts, and each half of the canvas is its eye as generator/render draws it through the camera the
    device defines (worked out here, not read from the page)."""
    runtime = (require_node_module("iwer") / "build" / "iwer.js").read_text(encoding="utf-8")
    install = (f"new IWER.XRDevice(IWER.metaQuest3, {{ stereoEnabled: true, ipd: {IWER['ipd']}, "
               f"fovy: {np.radians(IWER['fovy_deg'])} }}).installRuntime({{ forceInstall: true }});")
    script = browser.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": f"{runtime}\n{install}"})
    try:
        with CommandClient(server.commands) as client:
            client.generate(**SMALL, prompt="a hall", seed=11)
            browser.get(web.url)
            wait_for(lambda: _page_frames(browser) >= 1, 60, "the page to show a frame")
            frame = client.get_frame()
        vr = browser.find_element("id", "vr")
        wait_for(vr.is_displayed, 10, "the Enter VR button (immersive-vr offered)")
        vr.click()
        wait_for(lambda: len(browser.execute_script("return window.depthfusion.xrViews()")) == 2, 30,
                 "the session's first stereo frame")
        time.sleep(0.3)
        views = browser.execute_script("return window.depthfusion.xrViews()")
        canvas = _canvas(browser)
        assert browser.execute_script("return window.depthfusion.xr()") and _errors(browser) == []
        _screenshot(browser, "web-viewer-webxr.png")
    finally:
        browser.execute_cdp_cmd("Page.removeScriptToEvaluateOnNewDocument", {"identifier": script["identifier"]})
        browser.get("about:blank")

    height, width = canvas.shape[0], canvas.shape[1] // 2
    assert [v["eye"] for v in views] == ["left", "right"]
    assert [v["viewport"] for v in views] == [[0, 0, width, height], [width, 0, width, height]]
    expected = [_headset_matrix(eye, width / height) for eye in ("left", "right")]
    for view, matrix in zip(views, expected):
        np.testing.assert_allclose(np.array(view["matrix"]).reshape(4, 4), matrix, rtol=1e-5, atol=1e-6)
    references = _draw(ctx, frame, validate({}, VIEW_PARAMS), [(m, width, height) for m in expected])
    halves = [canvas[:, :width], canvas[:, width:2 * width]]
    for eye, half, reference in zip(("left", "right"), halves, references):
        _compare(half, reference, f"WebXR {eye} eye")
    assert np.abs(halves[0].astype(np.int16) - halves[1]).mean() > 1  # two eyes, two places


def test_a_prompt_typed_on_the_page_makes_a_new_frame(browser, web) -> None:
    browser.get(web.url)
    wait_for(lambda: browser.execute_script("return Boolean(window.depthfusion && window.depthfusion.connected())"),
             60, "the page to connect")
    before = _page_frames(browser)
    browser.find_element("id", "prompt").send_keys("a misty forest")
    browser.find_element("id", "go").click()
    wait_for(lambda: _page_frames(browser) > before, 60, "the generated frame")
    time.sleep(0.2)
    assert browser.execute_script("return window.depthfusion.frame().prompt") == "a misty forest"
    assert _errors(browser) == []


def test_the_page_survives_the_generator_restarting(browser, make_server) -> None:
    """`serve --web` restarted: the generator and the web server go down and come back on the same ports; the open
    page reconnects by itself and shows the new generator's frames."""
    from conftest import free_port

    frames, commands, port = (f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}", free_port())

    def start() -> tuple[Any, WebServer]:
        generator = make_server(frames=frames, commands=commands)
        web = WebServer(GeneratorLink(generator.frames, generator.commands), "127.0.0.1", port)
        web.start()
        return generator, web

    generator, web = start()
    with CommandClient(generator.commands) as client:
        client.generate(**SMALL, prompt="a hall", seed=1)
        browser.get(web.url)
        wait_for(lambda: _page_frames(browser) >= 1, 60, "the page to show a frame")
    web.stop()
    generator.close()
    wait_for(lambda: not browser.execute_script("return window.depthfusion.connected()"), 10, "the page to notice")
    generator, web = start()
    try:
        wait_for(lambda: browser.execute_script("return window.depthfusion.connected()"), 30, "the page to reconnect")
        with CommandClient(generator.commands) as client:
            client.generate(**SMALL, prompt="a misty forest", seed=2)
        wait_for(lambda: browser.execute_script("return window.depthfusion.frame().prompt") == "a misty forest", 60,
                 "the new generator's frame on the page")
        assert [e for e in _errors(browser) if "WebSocket" not in e] == []  # the refused reconnects are expected
    finally:
        web.stop()


def _foreign_site(target: str) -> Any:
    """Another site on this machine (its own port, so its own Origin) whose page opens a WebSocket to ``target``
    and records how that ended in ``window.outcome``."""
    import http.server
    import threading

    page = ("<!doctype html><script>window.outcome = 'pending';"
            f"const ws = new WebSocket({target!r}); ws.onopen = () => {{ window.outcome = 'open'; }};"
            "ws.onclose = (e) => { if (window.outcome === 'pending') window.outcome = `closed ${e.code}`; };"
            "</script>").encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, *_: Any) -> None:
            pass

    site = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=site.serve_forever, daemon=True).start()
    return site


def test_a_wrong_token_a_foreign_site_and_malformed_messages_are_refused(browser, server, caplog) -> None:
    """On a LAN address (token needed): the page opened with a wrong token says so and stops retrying; another site
    open in the same browser, even knowing the token, cannot open the WebSocket (Origin); a malformed message from
    the page's own origin gets a bad_request reply. Each refusal is logged."""
    web = WebServer(GeneratorLink(server.frames, server.commands), "0.0.0.0", 0, allow_lan=True)
    web.start()
    base = f"http://127.0.0.1:{web.port}/"
    site = None
    try:
        browser.get(f"{base}?token=wrong")
        wait_for(lambda: browser.execute_script("return Boolean(window.depthfusion && window.depthfusion.refused())"),
                 30, "the page to learn that its token is refused")
        assert "access token" in browser.find_element("id", "status").text
        assert not browser.execute_script("return window.depthfusion.connected()")

        socket = f"ws://127.0.0.1:{web.port}/ws?token={web.token}"
        site = _foreign_site(socket)
        browser.get(f"http://127.0.0.1:{site.server_address[1]}/")
        wait_for(lambda: browser.execute_script("return window.outcome") != "pending", 30, "the foreign socket")
        assert browser.execute_script("return window.outcome") == "closed 1006"  # refused at the handshake

        browser.get(f"{base}?token={web.token}")
        wait_for(lambda: browser.execute_script("return Boolean(window.depthfusion && window.depthfusion.connected())"),
                 30, "the page to connect with the right token")
        reply = browser.execute_async_script(
            "const done = arguments[arguments.length - 1]; const ws = new WebSocket(arguments[0]);"
            "ws.onopen = () => ws.send('{\"id\": \"x\", \"cmd\": \"generate\", \"args\": {\"steps\": \"many\"'); "
            "ws.onmessage = (e) => { const m = JSON.parse(e.data); if (m.type === 'reply') { ws.close(); done(m); } };",
            socket)
        assert reply["ok"] is False and reply["error"]["code"] == "bad_request"
        assert browser.execute_script("return window.depthfusion.connected()")  # the page's own socket goes on
    finally:
        browser.get("about:blank")
        browser.get_log("browser")  # the refusals' console errors are expected: not the next test's
        web.stop()
        if site is not None:
            site.shutdown()
    log = caplog.text
    assert "missing or wrong access token" in log and f"Origin 'http://127.0.0.1:{site.server_address[1]}'" in log
    assert "malformed message" in log


def test_an_exported_mesh_looks_like_the_frame_it_was_made_from(browser, ctx, tmp_path) -> None:
    """`view MESH.glb`: the page draws the .glb `export` wrote of a frame; seen through the same camera it looks
    like generator/render's picture of the frame (the mesh is the frame's geometry baked at its vertices, the
    texture its RGB, so only triangle-sized differences remain)."""
    from generator.backends.demo import DemoBackend
    from generator.export import export_mesh
    from generator.web.meshes import load_model, pack_model
    from generator.web.sources import SavedMesh
    from td_bridge.params import DISPLAY_PARAMS, GENERATION_PARAMS
    from td_bridge.protocol import Frame

    made = DemoBackend().generate(validate({"width": 512, "height": 256, "steps": 2, "prompt": "a room", "seed": 3},
                                           GENERATION_PARAMS), lambda *_: None, lambda: False)
    path = tmp_path / "room.glb"
    export_mesh(path, made.rgb, made.depth, validate({}, DISPLAY_PARAMS))
    web = WebServer(SavedMesh(pack_model(load_model(path))), "127.0.0.1", 0)
    web.start()
    try:
        browser.get(web.url)
        wait_for(lambda: browser.execute_script("return Boolean(window.depthfusion && window.depthfusion.ready())"),
                 60, "the page to load the mesh")
        page = _snapshot(browser, "mono")
        assert _errors(browser) == []
        assert browser.find_element("id", "mapping").get_attribute("disabled")
    finally:
        browser.get("about:blank")
        web.stop()
    view = validate(VIEW, VIEW_PARAMS)
    frame = Frame(made.rgb, made.depth, {"near": made.near, "far": made.far})
    matrix = eye_matrix(view, display_for_frame({}, frame.meta), "mono")
    (reference,) = _draw(ctx, frame, view, [(matrix, view["eye_width"], view["eye_height"])])
    difference = np.abs(page.astype(np.int16) - reference.astype(np.int16))
    print(f"mesh vs frame: mean |difference| {difference.mean():.3f}, "
          f"share of pixels off by > 16: {(difference.max(axis=2) > 16).mean():.4f}")
    assert reference.mean() > 10 and difference.mean() <= MESH_TOLERANCE_MEAN


def _device_look(alpha: float, beta: float, gamma: float) -> tuple[float, float]:
    """(yaw, pitch) of the direction out of a device's back, from the DeviceOrientation specification's rotation
    (Z by alpha, X' by beta, Y'' by gamma, from East-North-Up), worked out here with matrices."""
    a, b, c = np.radians([alpha, beta, gamma])
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    ry = np.array([[np.cos(c), 0, np.sin(c)], [0, 1, 0], [-np.sin(c), 0, np.cos(c)]])
    east, north, up = rz @ rx @ ry @ np.array([0.0, 0.0, -1.0])
    # the viewer's yaw turns left from north (its -Z), pitch looks up
    return float(np.degrees(np.arctan2(-east, north))), float(np.degrees(np.arcsin(up)))


def test_turning_the_phone_turns_the_view(browser, web, server) -> None:
    """Chromium's own device-orientation emulation (DevTools protocol, angles in its ranges: alpha [0, 360), beta
    [-180, 180), gamma [-90, 90)) turns the emulated phone; with *turn phone*
    on, the view follows: yaw relative to where it pointed at first, pitch as held."""
    with CommandClient(server.commands) as client:
        client.generate(**SMALL, prompt="a hall", seed=5)
        browser.get(web.url)
        wait_for(lambda: _page_frames(browser) >= 1, 60, "the page to show a frame")
    try:
        gyro = browser.find_element("id", "gyro")
        assert gyro.is_displayed()

        def turn(alpha: float, beta: float, gamma: float) -> dict[str, float]:
            browser.execute_cdp_cmd("DeviceOrientation.setDeviceOrientationOverride",
                                    {"alpha": alpha, "beta": beta, "gamma": gamma})
            time.sleep(0.3)
            return browser.execute_script("return window.depthfusion.look()")

        turn(0, 90, 0)  # upright, facing north: the start
        gyro.click()
        start = turn(0, 90, 0)
        assert abs(start["yaw"]) < 1e-3 and abs(start["pitch"]) < 1e-3
        upright = _device_look(0, 90, 0)[0]
        for pose in ((30, 110, 0), (320, 70, 0), (10, 80, 15), (200, 95, -30)):
            yaw, pitch = _device_look(*pose)
            seen = turn(*pose)
            assert (seen["yaw"] - (yaw - upright) + 180) % 360 - 180 == pytest.approx(0, abs=1e-3), pose
            assert seen["pitch"] == pytest.approx(pitch, abs=1e-3), pose
        assert turn(30, 110, 0)["yaw"] == pytest.approx(30, abs=1e-3)  # turned left 30°, tilted to look up 20°
        assert turn(30, 110, 0)["pitch"] == pytest.approx(20, abs=1e-3)
        gyro.click()  # off: back to the settings' view
        assert turn(30, 110, 0) == {"yaw": 0, "pitch": 0}
        assert _errors(browser) == []
    finally:
        browser.execute_cdp_cmd("DeviceOrientation.clearDeviceOrientationOverride", {})
        browser.get("about:blank")
