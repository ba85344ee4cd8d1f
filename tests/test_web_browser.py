"""The web viewer in a real browser: Debian's Chromium driven by Selenium, WebGL 2 on SwiftShader (headless).

The page loads without console errors, shows a frame, draws a fixed view that matches the project's renderer
(generator/render, the same GLSL on Mesa's llvmpipe) within TOLERANCE, and a prompt typed and generated on the page
arrives as a new frame. Without Chromium or chromedriver it skips (fails under CI=true: `dev.py test` installs them
as root).
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
pytest.importorskip("aiohttp")

from conftest import SMALL, wait_for  # noqa: E402
from generator.frames import display_for_frame  # noqa: E402
from generator.render.cameras import eye_matrix  # noqa: E402
from generator.render.scene import Scene  # noqa: E402
from generator.web.server import WebServer  # noqa: E402
from generator.web.sources import GeneratorLink  # noqa: E402
from td_bridge.params import VIEW_PARAMS, validate  # noqa: E402
from td_bridge.receiver import CommandClient  # noqa: E402

# The readback against generator/render: mean absolute difference per channel (0-255), and the share of pixels
# off by more than 16 levels anywhere (a triangle edge or a culled sheet rasterised a pixel apart). Measured with
# SwiftShader against llvmpipe: mean 0.084, 0.02 % of pixels (3 of 15,360) beyond 16, the rest within 2 levels.
TOLERANCE_MEAN = 0.5
TOLERANCE_OUTLIERS = 0.002
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


def _snapshot(driver: Any) -> np.ndarray:
    data = driver.execute_script(
        "const p = window.depthfusion.snapshot('mono', arguments[0], arguments[1], arguments[2], arguments[3]);"
        "let s = ''; for (let i = 0; i < p.length; i += 8192) s += String.fromCharCode(...p.subarray(i, i + 8192));"
        "return btoa(s);", VIEW["yaw"], VIEW["pitch"], VIEW["eye_width"], VIEW["eye_height"])
    pixels = np.frombuffer(base64.b64decode(data), np.uint8)
    return pixels.reshape(VIEW["eye_height"], VIEW["eye_width"], 4)[..., :3]


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
    page = _snapshot(browser).astype(np.int16)
    assert _errors(browser) == []

    view = validate(VIEW, VIEW_PARAMS)
    display = display_for_frame({}, frame.meta)
    scene = Scene(ctx, frame.rgb, frame.depth, display, view["edges"], samples=1)
    try:
        reference = scene.draw(eye_matrix(view, display, "mono"), view["eye_width"], view["eye_height"])
    finally:
        scene.release()
    difference = np.abs(page - reference.astype(np.int16))
    mean, outliers = float(difference.mean()), float((difference.max(axis=2) > 16).mean())
    print(f"page vs generator/render: mean |difference| {mean:.3f}, share of pixels off by > 16: {outliers:.4f}")
    assert reference.mean() > 10  # the view shows the scene, not the clear colour
    assert mean <= TOLERANCE_MEAN and outliers <= TOLERANCE_OUTLIERS


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
