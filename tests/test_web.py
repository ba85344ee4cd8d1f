"""The web viewer's server without a browser: message checks, frame packing, Host/Origin/token refusals, commands
and frames over the WebSocket, the ES shaders, `serve --web` and `view`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import struct
import subprocess
import sys
import time
from typing import Any, Iterator

import numpy as np
import pytest

aiohttp = pytest.importorskip("aiohttp")

from conftest import CLI_ENV, ROOT, SMALL, Served, require_tool  # noqa: E402
from generator.library import FrameLibrary  # noqa: E402
from generator.web.messages import MessageError, pack_frame, parse_command, view_message  # noqa: E402
from generator.web.server import Page, WebServer, parse_address  # noqa: E402
from generator.web.shaders import pixel_shader, vertex_shader  # noqa: E402
from generator.web.sources import GeneratorLink  # noqa: E402
from td_bridge.geometry import sphere_mesh  # noqa: E402
from td_bridge.protocol import Frame  # noqa: E402

TIMEOUT = 20


def test_commands_are_checked_against_the_schema() -> None:
    command = parse_command('{"id": "p-1", "cmd": "generate", "args": {"prompt": "a hall", "seed": "7"}}')
    assert (command.id, command.cmd, command.args) == ("p-1", "generate", {"prompt": "a hall", "seed": 7})
    assert parse_command('{"cmd": "display", "args": {"edges": "fade", "ipd": 0.1}}').args == {"edges": "fade",
                                                                                              "ipd": 0.1}
    bad = ['{"cmd": "generate", "args": {"steps": 0}}', '{"cmd": "generate", "args": {"upscale": true}}',
           '{"cmd": "delete", "args": {"frame_id": "x"}}', '[1]', '{"cmd": "status", "extra": 1}',
           '{"cmd": "generate", "args": {"guidance": NaN}}', '{"cmd": "status", "args": {"x": 1}}',
           '{"cmd": "recall", "args": {"frame_id": "../etc"}}', '{"id": "bad id", "cmd": "status"}',
           '{"cmd": "display", "args": {"edges": "melt"}}', 'x' * 70000, '{"cmd": "job"}']
    for text in bad:
        with pytest.raises(MessageError):
            parse_command(text)


def test_a_frame_is_packed_bottom_row_first_with_its_poles() -> None:
    rgb = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
    depth = (np.arange(24, dtype=np.uint16) * 1000).reshape(4, 6)
    packed = pack_frame(Frame(rgb, depth, {"frame_id": "f1", "prompt": "p", "params": {"x": 1}}))
    (length,) = struct.unpack_from("<I", packed.data)
    header = json.loads(packed.data[4:4 + length])
    assert header["frame_id"] == "f1" and (header["width"], header["height"]) == (6, 4) and "params" not in header
    body = packed.data[4 + length:]
    assert body[:72] == rgb[::-1].tobytes()
    assert np.array_equal(np.frombuffer(body[72:], "<u2").reshape(4, 6), depth[::-1])
    assert header["poles"] == pytest.approx([depth[0].mean() / 65535, depth[-1].mean() / 65535])


def test_view_settings_come_from_the_schema_and_the_frames_range() -> None:
    packed = pack_frame(Frame(np.zeros((4, 8, 3), np.uint8), np.zeros((4, 8), np.uint16),
                              {"depth": {"near": 2.0, "far": 40.0}}))
    message = json.loads(view_message({"edges": "fade"}, packed))
    assert message["display"]["near"] == 2.0 and message["display"]["far"] == 40.0
    assert message["uniforms"]["uMapping"][3] == 2.0 and message["view"]["ipd"] == 0.064
    assert message["clip"][1] > 40.0


def test_a_slow_page_gets_the_newest_frame_only() -> None:
    page = Page(None, {}, "test")  # type: ignore[arg-type]
    frames = [pack_frame(Frame(np.full((2, 4, 3), i, np.uint8), np.zeros((2, 4), np.uint16), {})) for i in range(3)]
    for frame in frames:
        page.push_frame(frame)
    assert page.frame is frames[-1] and page.frames_dropped == 2


def test_addresses_need_allow_lan_beyond_loopback() -> None:
    assert parse_address("127.0.0.1:8080", False) == ("127.0.0.1", 8080)
    assert parse_address("[::1]:0", False) == ("::1", 0)
    assert parse_address("192.168.1.5:8080", True) == ("192.168.1.5", 8080)
    for address, allow in (("192.168.1.5:8080", False), ("0.0.0.0:80", False), ("host", True), ("1.2.3.4:70000", True)):
        with pytest.raises(ValueError):
            parse_address(address, allow)


def test_the_shaders_are_glsl_es_3(tmp_path) -> None:
    validator = require_tool("glslangValidator", "glslang-tools")
    for name, text in (("web.vert", vertex_shader()), ("web.frag", pixel_shader())):
        assert text.startswith("#version 300 es\n")
        (tmp_path / name).write_text(text)
        result = subprocess.run([validator, str(tmp_path / name)], capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture
def web(make_server, tmp_path) -> Iterator[WebServer]:
    server = make_server(library=FrameLibrary(tmp_path))
    web = WebServer(GeneratorLink(server.frames, server.commands), "127.0.0.1", 0)
    web.start()
    yield web
    web.stop()


def run(coroutine: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coroutine, TIMEOUT))


async def _receive_until(ws: Any, predicate: Any) -> list[Any]:
    seen = []
    while True:
        message = await ws.receive()
        assert message.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY), message
        seen.append(json.loads(message.data) if message.type == aiohttp.WSMsgType.TEXT else message.data)
        if predicate(seen[-1]):
            return seen


def test_the_page_and_its_files_come_from_the_package(web: WebServer) -> None:
    async def fetch() -> None:
        async with aiohttp.ClientSession() as session:
            page = await session.get(web.url)
            assert page.status == 200 and "app.js" in await page.text()
            assert "default-src 'self'" in page.headers["Content-Security-Policy"]
            assert page.headers["Referrer-Policy"] == "no-referrer"
            for name in ("app.js", "viewer.js", "camera.js", "xr.js", "style.css"):
                assert (await session.get(f"{web.url}static/{name}")).status == 200
            assert (await session.get(f"{web.url}static/..%2Fserver.py")).status == 404
            assert (await session.get(f"{web.url}static/server.py")).status == 404
            assert (await (await session.get(f"{web.url}shaders/pixel.glsl")).text()) == pixel_shader()
            mesh = await (await session.get(f"{web.url}mesh.bin?rows=4&cols=8")).read()
            expected = sphere_mesh(4, 8)
            assert struct.unpack_from("<II", mesh) == (len(expected.directions), expected.triangles.size)
            assert (await session.get(f"{web.url}mesh.bin?rows=1&cols=8")).status == 400
            schema = await (await session.get(f"{web.url}schema.json")).json()
            assert {p["name"] for p in schema["view"]} >= {"ipd", "edges"}
    run(fetch())


def test_foreign_hosts_origins_and_malformed_messages_are_refused_and_logged(web: WebServer, caplog) -> None:
    async def attack() -> None:
        async with aiohttp.ClientSession() as session:
            assert (await session.get(web.url, headers={"Host": f"rebound.example:{web.port}"})).status == 403
            for headers in ({"Origin": "http://evil.example"}, {}):
                with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                    await session.ws_connect(f"{web.url}ws", headers=headers)
                assert refused.value.status == 403
            async with session.ws_connect(f"{web.url}ws", headers={"Origin": web.url.rstrip("/")}) as ws:
                await ws.send_str('{"cmd": "generate", "args": {"steps": "many"}}')
                await ws.send_bytes(b"\x00\x01")
                seen = await _receive_until(ws, lambda m: isinstance(m, dict) and "binary" in str(m.get("error")))
                replies = [m for m in seen if isinstance(m, dict) and m["type"] == "reply"]
                assert [r["error"]["code"] for r in replies] == ["bad_request", "bad_request"]
                assert "steps" in replies[0]["error"]["message"]
    run(attack())
    assert "rebound.example" in caplog.text and "evil.example" in caplog.text
    assert "malformed message" in caplog.text and len(web.refused) == 5


def test_a_lan_address_needs_the_token(server, caplog) -> None:
    web = WebServer(GeneratorLink(server.frames, server.commands), "0.0.0.0", 0, allow_lan=True)
    url = web.start()
    try:
        assert web.token and f"?token={web.token}" in url
        base = f"http://127.0.0.1:{web.port}"

        async def connect() -> None:
            async with aiohttp.ClientSession() as session:
                for query in ("", "?token=wrong"):
                    with pytest.raises(aiohttp.WSServerHandshakeError):
                        await session.ws_connect(f"{base}/ws{query}", headers={"Origin": base})
                async with session.ws_connect(f"{base}/ws?token={web.token}", headers={"Origin": base}) as ws:
                    hello = await ws.receive_json()
                    assert hello == {"type": "hello", "commands": True, "model": False}
        run(connect())
    finally:
        web.stop()
    assert caplog.text.count("missing or wrong access token") == 2
    with pytest.raises(ValueError):
        WebServer(GeneratorLink(server.frames, server.commands), "0.0.0.0", 0)


def test_a_lan_mesh_needs_the_token() -> None:
    """The mesh `view MESH.glb` serves is the user's own: behind the token, as the WebSocket is."""
    from generator.web.sources import SavedMesh

    web = WebServer(SavedMesh(b"the mesh"), "0.0.0.0", 0, allow_lan=True)
    web.start()
    try:
        base = f"http://127.0.0.1:{web.port}/model.bin"

        async def fetch() -> list[tuple[int, bytes]]:
            async with aiohttp.ClientSession() as session:
                answers = []
                for query in ("", "?token=wrong", f"?token={web.token}"):
                    async with session.get(base + query) as response:
                        answers.append((response.status, await response.read()))
                return answers
        (none, _), (wrong, _), right = run(fetch())
    finally:
        web.stop()
    assert (none, wrong, right) == (403, 403, (200, b"the mesh"))


def test_commands_reach_the_generator_and_frames_come_back(web: WebServer) -> None:
    async def generate() -> None:
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(f"{web.url}ws", headers={"Origin": web.url.rstrip("/")}) as ws:
                await ws.send_str(json.dumps({"id": "g1", "cmd": "generate", "args": {**SMALL, "prompt": "a hall",
                                                                                       "seed": 5}}))
                seen = await _receive_until(ws, lambda m: isinstance(m, bytes))
                reply = next(m for m in seen if isinstance(m, dict) and m["type"] == "reply")
                assert reply["id"] == "g1" and reply["ok"] and reply["result"]["params"]["seed"] == 5
                (length,) = struct.unpack_from("<I", seen[-1])
                header = json.loads(seen[-1][4:4 + length])
                assert (header["prompt"], header["width"], header["height"]) == ("a hall", 128, 64)
                assert len(seen[-1]) == 4 + length + 128 * 64 * 5
                await ws.send_str('{"id": "d1", "cmd": "display", "args": {"mapping": "linear", "strength": 1.0}}')
                seen = await _receive_until(ws, lambda m: isinstance(m, dict) and m["type"] == "view")
                assert seen[-1]["uniforms"]["uMapping"][:3] == [0.0, 10.5, 1.0]
                await ws.send_str('{"id": "l1", "cmd": "library", "args": {"search": "hall"}}')
                seen = await _receive_until(ws, lambda m: isinstance(m, dict) and m.get("id") == "l1")
                assert seen[-1]["ok"] and "frames" in seen[-1]["result"]
                await ws.send_str(json.dumps({"id": "r1", "cmd": "recall", "args": {"frame_id": header["frame_id"]}}))
                seen = await _receive_until(ws, lambda m: isinstance(m, bytes))
                (length,) = struct.unpack_from("<I", seen[-1])
                assert json.loads(seen[-1][4:4 + length])["frame_id"] == header["frame_id"]
    run(generate())


def _served_url(served: Served) -> str:
    for _ in range(200):
        match = re.search(r"web viewer on (\S+)", "".join(served.log))
        if match:
            return match.group(1)
        time.sleep(0.05)
    pytest.fail("no web viewer address in the log:\n" + "".join(served.log))


def test_serve_web_serves_the_page() -> None:
    served = Served("--model", "demo", "--osc-port", "0", "--web", "127.0.0.1:0")
    try:
        url = _served_url(served)

        async def fetch() -> None:
            async with aiohttp.ClientSession() as session:
                assert (await session.get(url)).status == 200
                async with session.ws_connect(f"{url}ws", headers={"Origin": url.rstrip("/")}) as ws:
                    assert (await ws.receive_json())["commands"] is True
        run(fetch())
    finally:
        assert served.stop() == 0


def test_view_serves_a_saved_frame(tmp_path) -> None:
    folder = tmp_path / "frame"
    made = subprocess.run([sys.executable, "-m", "generator", "generate", "a room", "-o", str(folder), "--model",
                           "demo", "--width", "128", "--height", "64", "--no-library"], cwd=ROOT, env=CLI_ENV,
                          capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stderr
    with _viewing(folder) as url:
        async def fetch() -> None:
            async with aiohttp.ClientSession() as session:
                async with session.ws_connect(f"{url}ws", headers={"Origin": url.rstrip("/")}) as ws:
                    seen = await _receive_until(ws, lambda m: isinstance(m, bytes))
                    assert seen[0] == {"type": "hello", "commands": False, "model": False}
                    await ws.send_str('{"id": "x", "cmd": "generate", "args": {}}')
                    seen = await _receive_until(ws, lambda m: isinstance(m, dict) and m.get("id") == "x")
                    assert seen[-1]["error"]["code"] == "unavailable"
        run(fetch())


@contextlib.contextmanager
def _viewing(path: Any) -> Iterator[str]:
    """`python -m generator view PATH` running; yields the page's address; stopped with Ctrl+C (exit 0)."""
    proc = subprocess.Popen([sys.executable, "-m", "generator", "view", str(path), "--web", "127.0.0.1:0",
                             "--no-library"], cwd=ROOT, env=CLI_ENV, stderr=subprocess.PIPE, text=True)
    try:
        line = ""
        while "web viewer on" not in line:
            line = proc.stderr.readline()
            assert line, "view ended without serving"
        yield line.split("web viewer on ")[1].strip()
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(15) == 0
        proc.stderr.close()


def _scan(drawing: str, tmp_path: Any) -> str:
    """What zbarimg (a real QR decoder) reads from a terminal drawing of half blocks, rendered as a picture: a
    block's light halves white, the rest black, 4 pixels a module."""
    from PIL import Image

    light_halves = {"█": (True, True), "▀": (True, False), "▄": (False, True), " ": (False, False)}
    rows: list[list[bool]] = [[], []]
    grid: list[list[bool]] = []
    for line in drawing.splitlines():
        rows = [[light_halves[c][0] for c in line], [light_halves[c][1] for c in line]]
        grid.extend(rows)
    picture = np.kron(np.array(grid, np.uint8) * 255, np.ones((4, 4), np.uint8))
    path = tmp_path / "qr.png"
    Image.fromarray(np.pad(picture, 16, constant_values=255)).save(path)
    zbarimg = require_tool("zbarimg", "zbar-tools")
    read = subprocess.run([zbarimg, "--raw", "-q", str(path)], capture_output=True, text=True, timeout=30)
    assert read.returncode == 0, read.stderr
    return read.stdout.strip()


def test_a_lan_page_address_is_printed_as_a_qr_code_that_scans(tmp_path, caplog) -> None:
    import io

    from generator.__main__ import announce_page

    url = "http://192.168.1.20:8080/?token=" + "Ab-_9" * 6 + "xy"
    stream = io.StringIO()
    with caplog.at_level("INFO", logger="depthfusion"):
        announce_page(url, [url], True, stream)
    assert f"web viewer on {url}" in caplog.text and "open it at" not in caplog.text
    assert _scan(stream.getvalue(), tmp_path) == url
    quiet = io.StringIO()
    announce_page("http://127.0.0.1:8080/", ["http://127.0.0.1:8080/"], False, quiet)  # loopback: no code
    assert quiet.getvalue() == ""


def test_a_page_on_every_interface_is_announced_at_the_lan_addresses(tmp_path, monkeypatch, caplog) -> None:
    """0.0.0.0 is where it listens, not where a phone goes: the QR code holds a LAN address found here."""
    import io

    from generator.__main__ import announce_page
    from generator.web import server as web_server
    from generator.web.sources import SavedMesh

    web = WebServer(SavedMesh(b"a mesh"), "0.0.0.0", 8080, allow_lan=True)  # not started: only its addresses
    monkeypatch.setattr(web_server, "lan_addresses", lambda: ["192.168.1.20", "10.0.0.5"])
    assert web.url == f"http://0.0.0.0:8080/?token={web.token}"
    assert web.urls == [f"http://192.168.1.20:8080/?token={web.token}", f"http://10.0.0.5:8080/?token={web.token}"]
    stream = io.StringIO()
    with caplog.at_level("INFO", logger="depthfusion"):
        announce_page(web.url, web.urls, True, stream)
    assert f"open it at {web.urls[0]} or {web.urls[1]}" in caplog.text
    assert _scan(stream.getvalue(), tmp_path) == web.urls[0]
    monkeypatch.setattr(web_server, "lan_addresses", lambda: [])  # offline: no address to give, no code
    none = io.StringIO()
    with caplog.at_level("INFO", logger="depthfusion"):
        announce_page(web.url, web.urls, True, none)
    assert none.getvalue() == "" and "none found here" in caplog.text
    assert all(not address.startswith("127.") for address in web_server.lan_addresses())  # this machine's, if any


def test_a_console_without_block_characters_gets_the_address_only(caplog) -> None:
    import io

    from generator.__main__ import announce_page

    legacy = io.TextIOWrapper(io.BytesIO(), encoding="cp1252")
    with caplog.at_level("INFO", logger="depthfusion"):
        announce_page("http://10.0.0.5:8080/?token=abc", ["http://10.0.0.5:8080/?token=abc"], True, legacy)
    assert "web viewer on http://10.0.0.5:8080/?token=abc" in caplog.text and "type the address" in caplog.text


def _exported(tmp_path: Any, name: str = "room.glb") -> tuple[Any, Any]:
    """A demo frame and the .glb `export` writes of it."""
    from generator.backends.demo import DemoBackend
    from generator.export import export_mesh
    from td_bridge.params import DISPLAY_PARAMS, GENERATION_PARAMS, validate

    frame = DemoBackend().generate(validate({**SMALL, "prompt": "a room", "seed": 3}, GENERATION_PARAMS),
                                   lambda *_: None, lambda: False)
    path = tmp_path / name
    export_mesh(path, frame.rgb, frame.depth, validate({}, DISPLAY_PARAMS))
    return frame, path


def test_an_exported_mesh_is_read_and_packed_for_the_page(tmp_path) -> None:
    import trimesh

    from generator.web.meshes import load_model, pack_model

    frame, path = _exported(tmp_path)
    model = load_model(path)
    written = trimesh.load(path, force="mesh", process=False)
    assert model.positions.shape == written.vertices.shape and len(model.triangles) == len(written.faces)
    np.testing.assert_array_equal(model.texture, frame.rgb)  # export's texture is the frame's RGB
    assert (model.colors == 255).all()
    packed = pack_model(model)
    (length,) = struct.unpack_from("<I", packed)
    header = json.loads(packed[4:4 + length])
    n, m = header["vertices"], header["indices"]
    assert (n, m) == (len(model.positions), model.triangles.size)
    assert len(packed) == 4 + length + n * (12 + 8 + 3) + m * 4 + header["width"] * header["height"] * 3
    assert header["clip"][1] > 2 * header["radius"] > 0

    coloured = tmp_path / "coloured.glb"  # vertex colours only: a white texture, the colours kept
    trimesh.Trimesh(written.vertices, written.faces, vertex_colors=np.tile([10, 200, 30, 255], (n, 1)),
                    process=False).export(coloured)
    plain = load_model(coloured)
    assert plain.texture.shape == (1, 1, 3) and (plain.colors == [10, 200, 30]).all()


def glb(positions: list, indices: list, nodes: int = 1, **position_accessor: Any) -> bytes:
    """A glTF binary of one triangle mesh placed by ``nodes`` nodes (glTF 2.0's layout, written here);
    ``position_accessor`` overrides the POSITION accessor's fields."""
    pos, idx = np.asarray(positions, "<f4"), np.asarray(indices, "<u4")
    binary = pos.tobytes() + idx.tobytes()
    gltf = {"asset": {"version": "2.0"}, "scene": 0, "scenes": [{"nodes": list(range(nodes))}],
            "nodes": [{"mesh": 0}] * nodes, "meshes": [{"primitives": [{"attributes": {"POSITION": 0}, "indices": 1}]}],
            "buffers": [{"byteLength": len(binary)}],
            "bufferViews": [{"buffer": 0, "byteLength": pos.nbytes},
                            {"buffer": 0, "byteOffset": pos.nbytes, "byteLength": idx.nbytes}],
            "accessors": [{"bufferView": 0, "count": len(pos), "type": "VEC3", "componentType": 5126,
                           **position_accessor},
                          {"bufferView": 1, "count": len(idx), "type": "SCALAR", "componentType": 5125}]}
    text = json.dumps(gltf).encode()
    text += b" " * (-len(text) % 4)
    chunks = struct.pack("<II", len(text), 0x4E4F534A) + text + struct.pack("<II", len(binary), 0x004E4942) + binary
    return struct.pack("<III", 0x46546C67, 2, 12 + len(chunks)) + chunks


TRIANGLE = [[0, 0, -1], [1, 0, -1], [0, 1, -1]]


@pytest.mark.parametrize("content, message", [
    (b"glTF\x02\x00\x00\x00junk", "not a glTF binary"),
    (b"glTF\x02\x00\x00\x00" + b"\x00" * 12 + b"junk", "not a glTF 2.0 binary this viewer reads"),
    (None, "no such file"),
    (glb(TRIANGLE, [0, 1, 2], count=30_000_000), "reads past its buffer view"),  # trimesh would allocate it
    (glb(TRIANGLE, [0, 1, 2], bufferView=None), "an accessor without a buffer view"),  # zeros of its count
    (glb(TRIANGLE, [0, 1, 2], componentType=1), "not a readable glTF binary"),
    (glb(TRIANGLE, [0, 1, 2], nodes=5), "15 vertices as its nodes place them"),  # at most 12 here
    (glb(TRIANGLE, [0, 1, 1_000_000]), "triangles name vertices the mesh does not have"),
    (glb([[0, 0, 0], [1e20, 0, 0], [0, 1, 0]], [0, 1, 2]), "a vertex 1e\\+20 m away"),
])
def test_a_bad_mesh_file_is_refused_with_the_reason(tmp_path, monkeypatch, content, message) -> None:
    from generator.web import meshes

    monkeypatch.setattr(meshes, "MAX_VERTICES", 12)
    path = tmp_path / "broken.glb"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        meshes.load_model(path)
    with pytest.raises(ValueError, match="glTF binary meshes"):
        meshes.load_model(tmp_path / "mesh.obj")
    path.write_bytes(glb(TRIANGLE, [0, 1, 2], nodes=4))  # the same mesh within bounds loads
    assert len(meshes.load_model(path).positions) == 12


def test_view_serves_an_exported_mesh(tmp_path) -> None:
    _, path = _exported(tmp_path)
    with _viewing(path) as url:
        async def fetch() -> None:
            async with aiohttp.ClientSession() as session:
                async with session.ws_connect(f"{url}ws", headers={"Origin": url.rstrip("/")}) as ws:
                    assert await ws.receive_json() == {"type": "hello", "commands": False, "model": True}
                model = await session.get(f"{url}model.bin")
                assert model.status == 200 and len(await model.read()) > 1000
        run(fetch())
    broken = tmp_path / "broken.glb"
    broken.write_bytes(b"not a mesh")
    refused = subprocess.run([sys.executable, "-m", "generator", "view", str(broken), "--no-library"], cwd=ROOT,
                             env=CLI_ENV, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "not a glTF binary" in refused.stderr
