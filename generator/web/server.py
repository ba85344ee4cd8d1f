"""The web viewer's HTTP + WebSocket server (aiohttp), on a thread and event loop of its own.

Every request's Host must name this server (no DNS rebinding); the WebSocket also needs an Origin of this server
and, on a LAN address, the access token the log prints. Static files come from the package (no CDN). Each page
gets frames newest-wins: one slot per connection, replaced while the previous frame is still being sent.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import socket
import struct
import threading
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web

from td_bridge.addresses import check_endpoint, is_loopback
from td_bridge.geometry import sphere_mesh
from td_bridge.params import DISPLAY_PARAMS, GENERATION_PARAMS, VIEW_PARAMS, ParamError, find_param
from td_bridge.receiver import CommandError, CommandTimeout

from .messages import MAX_MESSAGE_BYTES, Command, MessageError, PackedFrame, parse_command, text, view_message
from .shaders import POSITION_ATTRIBUTE, pixel_shader, vertex_shader
from .sources import FrameSource

log = logging.getLogger("generator.web")

DEFAULT_ADDRESS = "127.0.0.1:8080"
STATIC = Path(__file__).resolve().with_name("static")
CONTENT_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css"}
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; "
                               "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",  # the token is in the page's address
    "Cache-Control": "no-store",
}
MAX_BAD_MESSAGES = 20  # a page that keeps sending malformed messages is disconnected
POLL_S = 0.2
EVENT_FIELDS = {"status": ("state", "job", "queued", "live", "last_frame_id", "backend", "model"),
                "progress": ("job_id", "step", "total")}
WILDCARDS = ("0.0.0.0", "::")  # listen on every interface: no browser opens these
ROUTE_PROBE = ("192.0.2.1", 9)  # TEST-NET-1 (RFC 5737): a UDP connect picks the outgoing interface, sends nothing
_ADDRESS_RE = re.compile(r"^(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):(?P<port>\d{1,5})$")


def parse_address(address: str, allow_lan: bool) -> tuple[str, int]:
    """(host, port) of ``HOST:PORT`` (port 0: any free port); a non-loopback host needs ``allow_lan``."""
    match = _ADDRESS_RE.match(address or "")
    if not match:
        raise ValueError(f"web address {address!r} is not HOST:PORT (e.g. {DEFAULT_ADDRESS})")
    host, port = match["host"], int(match["port"])
    if port > 65535:
        raise ValueError(f"port {port} in {address!r} is outside 0-65535")
    check_endpoint(f"tcp://{host}:{port or '*'}", bind=True, allow_lan=allow_lan)
    return host.strip("[]"), port


@lru_cache(maxsize=4)
def mesh_bytes(rows: int, cols: int) -> bytes:
    """td_bridge's sphere mesh for the page: uint32 vertex and index counts, float32 directions, uint32 indices."""
    mesh = sphere_mesh(rows, cols)
    directions, triangles = mesh.directions.astype("<f4"), mesh.triangles.astype("<u4")
    return struct.pack("<II", len(directions), triangles.size) + directions.tobytes() + triangles.tobytes()


def schema() -> dict[str, Any]:
    """The parameters the page shows, from the one schema."""
    def describe(param: Any) -> dict[str, Any]:
        return {"name": param.name, "kind": param.kind.__name__, "default": param.default, "help": param.help,
                "minimum": param.minimum, "maximum": param.maximum, "choices": param.choices, "unit": param.unit,
                "max_length": param.max_length}
    generation = [find_param(name, GENERATION_PARAMS) for name in ("prompt", "seed")]
    return {"display": [describe(p) for p in DISPLAY_PARAMS], "view": [describe(p) for p in VIEW_PARAMS],
            "generation": [describe(p) for p in generation], "position_attribute": POSITION_ATTRIBUTE}


class Page:
    """One connected page: its display settings and what waits to be sent (newest frame, newest event of each
    kind, every reply)."""

    def __init__(self, ws: web.WebSocketResponse, settings: dict[str, Any], remote: str) -> None:
        self.ws, self.settings, self.remote = ws, dict(settings), remote
        self.frame: PackedFrame | None = None
        self.latest: dict[str, str] = {}  # newest view/status/progress message
        self.replies: list[str] = []
        self.ready = asyncio.Event()
        self.bad = 0
        self.frames_sent = self.frames_dropped = 0

    def push_frame(self, frame: PackedFrame) -> None:
        if self.frame is not None:
            self.frames_dropped += 1  # never sent: a newer one replaces it
        self.frame = frame
        self.ready.set()

    def push(self, kind: str, message: str) -> None:
        self.latest[kind] = message
        self.ready.set()

    def reply(self, message: str) -> None:
        self.replies.append(message)
        self.ready.set()

    async def send_loop(self) -> None:
        """Send what waits, replies first, until the connection ends."""
        try:
            while not self.ws.closed:
                await self.ready.wait()
                self.ready.clear()
                while self.replies:
                    await self.ws.send_str(self.replies.pop(0))
                for kind in list(self.latest):
                    await self.ws.send_str(self.latest.pop(kind))
                if self.frame is not None:
                    frame, self.frame = self.frame, None
                    await self.ws.send_bytes(frame.data)
                    self.frames_sent += 1
        except ConnectionError:  # the page went away mid-send; its handler cleans up
            pass


def lan_addresses() -> list[str]:
    """This computer's IPv4 addresses other than loopback: the one its default route leaves from first, then those
    its host name resolves to; none where neither is known (offline)."""
    found = []
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(ROUTE_PROBE)
            found.append(probe.getsockname()[0])
    except OSError:
        pass
    try:
        found += socket.gethostbyname_ex(socket.gethostname())[2]
    except OSError:
        pass
    return list(dict.fromkeys(a for a in found if not is_loopback(a) and a not in WILDCARDS))


class WebServer:
    """Serves the page for ``source`` at ``host``:``port`` until ``stop()``; ``settings`` are the display and view
    values given on the command line (validated), the start of every page's own."""

    def __init__(self, source: FrameSource, host: str = "127.0.0.1", port: int = 8080, *, allow_lan: bool = False,
                 settings: dict[str, Any] | None = None) -> None:
        check_endpoint(f"tcp://{host if ':' not in host else f'[{host}]'}:{port or '*'}", bind=True,
                       allow_lan=allow_lan)
        self.source, self.host, self.port = source, host, port
        self.settings = dict(settings or {})
        self.token = None if is_loopback(host) else secrets.token_urlsafe(24)
        self.pages: set[Page] = set()
        self.frame: PackedFrame | None = None
        self.refused: list[str] = []  # why requests were refused, newest last (also logged)
        self._events: dict[str, Any] = {}
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="depthfusion-web")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._stopping: asyncio.Event | None = None
        self._error: BaseException | None = None

    # ------------------------------------------------------------------ life cycle (any thread)

    @property
    def url(self) -> str:
        """The page at the address it is bound to (with the token on a LAN address)."""
        return self._url(self.host)

    @property
    def urls(self) -> list[str]:
        """Where a browser opens the page: the bound address; for a wildcard one (all interfaces), each of this
        computer's LAN addresses found (maybe none)."""
        return [self._url(address) for address in lan_addresses()] if self.host in WILDCARDS else [self.url]

    def _url(self, host: str) -> str:
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}/" + (f"?token={self.token}" if self.token else "")

    def start(self, timeout: float = 10.0) -> str:
        """Start serving on a thread of its own; returns the page's URL (with the token on a LAN address)."""
        self._thread = threading.Thread(target=self._run, name="depthfusion-web", daemon=True)
        self._thread.start()
        if not self._started.wait(timeout):
            raise TimeoutError("the web server did not start")
        if self._error is not None:
            raise OSError(f"web server on {self.host}:{self.port}: {self._error}") from self._error
        return self.url

    def stop(self, timeout: float = 5.0) -> None:
        if self._loop is not None and self._stopping is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
            self._thread.join(timeout)
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.source.close()

    def _run(self) -> None:
        self._loop = asyncio.new_event_loop()
        try:
            self._loop.run_until_complete(self._serve())
        except BaseException as exc:  # reported by start()
            self._error = exc
        finally:
            self._started.set()
            self._loop.close()

    async def _serve(self) -> None:
        self._stopping = asyncio.Event()
        app = web.Application(middlewares=[self._guard], client_max_size=MAX_MESSAGE_BYTES)
        app.router.add_get("/", self._index)
        app.router.add_get("/static/{name}", self._static)
        app.router.add_get("/shaders/{stage}", self._shader)
        app.router.add_get("/schema.json", self._schema)
        app.router.add_get("/mesh.bin", self._mesh)
        app.router.add_get("/ws", self._websocket)
        app.router.add_get("/access", self._access)
        app.router.add_get("/model.bin", self._model)
        app.router.add_get("/favicon.ico", self._no_icon)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.host, self.port)
            await site.start()
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]  # port 0: the one chosen
            self._started.set()
            frames = asyncio.create_task(self._frames())
            await self._stopping.wait()
            frames.cancel()
            for page in list(self.pages):
                await page.ws.close()
        finally:
            await runner.cleanup()

    # ------------------------------------------------------------------ checks

    def _hosts(self) -> set[str] | None:
        """Host header values this server answers to; None: any (a wildcard LAN address, with the token)."""
        if self.host in ("0.0.0.0", "::"):
            return None
        names = {"127.0.0.1", "localhost", "[::1]"} if is_loopback(self.host) else set()
        names.add(f"[{self.host}]" if ":" in self.host else self.host)
        return {f"{name}:{self.port}" for name in names}

    def refuse(self, request: web.Request, reason: str) -> web.Response:
        message = f"refused {request.method} {request.path} from {request.remote}: {reason}"
        log.warning("web: %s", message)
        self.refused.append(message)
        del self.refused[:-100]
        return web.Response(status=403, text=reason + "\n")

    @web.middleware
    async def _guard(self, request: web.Request, handler: Any) -> web.StreamResponse:
        hosts, host = self._hosts(), request.headers.get("Host", "")
        if hosts is not None and host not in hosts:
            return self.refuse(request, f"Host {host[:100]!r} is not this server")
        response = await handler(request)
        if not isinstance(response, web.WebSocketResponse):
            response.headers.update(SECURITY_HEADERS)
        return response

    def _check_websocket(self, request: web.Request) -> str | None:
        """Why a WebSocket upgrade is refused, or None."""
        origin = request.headers.get("Origin")
        if origin != f"http://{request.headers.get('Host', '')}":
            return f"Origin {str(origin)[:100]!r} is not this page's"
        return self._check_token(request)

    def _check_token(self, request: web.Request) -> str | None:
        if self.token is not None and not secrets.compare_digest(
                request.query.get("token", "").encode("utf-8", "replace"), self.token.encode()):
            return "missing or wrong access token"
        return None

    # ------------------------------------------------------------------ HTTP

    async def _index(self, request: web.Request) -> web.Response:
        return web.Response(body=(STATIC / "index.html").read_bytes(), content_type="text/html")

    async def _access(self, request: web.Request) -> web.Response:
        """204 where the page's token (if any is needed) is right, else 403: lets a page whose WebSocket was
        refused (a browser hides the handshake's status) tell its user why, instead of retrying."""
        reason = self._check_token(request)
        return self.refuse(request, reason) if reason else web.Response(status=204)

    async def _model(self, request: web.Request) -> web.Response:
        """The mesh ``view MESH.glb`` shows: the user's own data, so behind the token like the WebSocket."""
        reason = self._check_token(request)
        if reason:
            return self.refuse(request, reason)
        if self.source.model is None:
            raise web.HTTPNotFound()
        return web.Response(body=self.source.model, content_type="application/octet-stream")

    async def _no_icon(self, request: web.Request) -> web.Response:
        return web.Response(status=204)

    async def _static(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        path = STATIC / name
        if not re.fullmatch(r"[a-z0-9_-]+\.(js|css|html)", name) or not path.is_file():
            raise web.HTTPNotFound()
        return web.Response(body=path.read_bytes(), content_type=CONTENT_TYPES[path.suffix])

    async def _shader(self, request: web.Request) -> web.Response:
        stages = {"vertex.glsl": vertex_shader, "pixel.glsl": pixel_shader}
        stage = stages.get(request.match_info["stage"])
        if stage is None:
            raise web.HTTPNotFound()
        return web.Response(text=stage(), content_type="text/plain")

    async def _schema(self, request: web.Request) -> web.Response:
        return web.json_response(schema())

    async def _mesh(self, request: web.Request) -> web.Response:
        try:
            rows = find_param("mesh_rows", DISPLAY_PARAMS).coerce(request.query.get("rows", ""))
            cols = find_param("mesh_cols", DISPLAY_PARAMS).coerce(request.query.get("cols", ""))
        except ParamError as exc:
            raise web.HTTPBadRequest(text=str(exc)) from None
        data = await asyncio.get_running_loop().run_in_executor(self._pool, mesh_bytes, rows, cols)
        return web.Response(body=data, content_type="application/octet-stream")

    # ------------------------------------------------------------------ WebSocket

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        reason = self._check_websocket(request)
        if reason is not None:
            return self.refuse(request, reason)
        ws = web.WebSocketResponse(max_msg_size=MAX_MESSAGE_BYTES, compress=False, heartbeat=20)
        await ws.prepare(request)
        page = Page(ws, self.settings, str(request.remote))
        self.pages.add(page)
        sender = asyncio.create_task(page.send_loop())
        page.push("hello", text("hello", commands=self.source.commands, model=self.source.model is not None))
        self._push_view(page)
        if self.frame is not None:
            page.push_frame(self.frame)
        for kind, event in self._events.items():
            page.push(kind, self._event_message(kind, event))
        try:
            async for message in ws:
                if message.type == WSMsgType.TEXT:
                    await self._handle(page, message.data)
                elif message.type == WSMsgType.BINARY:
                    self._bad(page, None, "binary messages are not accepted")
                if page.bad >= MAX_BAD_MESSAGES:
                    log.warning("web: closing %s after %d malformed messages", page.remote, page.bad)
                    break
        finally:
            self.pages.discard(page)
            sender.cancel()
            await ws.close()
            log.info("web: %s left after %d frames (%d dropped for newer ones)", page.remote, page.frames_sent,
                     page.frames_dropped)
        return ws

    def _bad(self, page: Page, request_id: str | None, reason: str) -> None:
        page.bad += 1
        log.warning("web: malformed message from %s: %s", page.remote, reason)
        self.refused.append(f"message from {page.remote}: {reason}")
        del self.refused[:-100]
        page.reply(text("reply", id=request_id, ok=False, error={"code": "bad_request", "message": reason}))

    async def _handle(self, page: Page, data: str) -> None:
        try:
            command = parse_command(data)
        except MessageError as exc:
            self._bad(page, None, str(exc))
            return
        if command.cmd == "display":
            self._display(page, command)
            return
        try:
            result = await asyncio.get_running_loop().run_in_executor(self._pool, self.source.request, command.cmd,
                                                                      command.args)
        except CommandError as exc:
            page.reply(text("reply", id=command.id, ok=False, error={"code": exc.code, "message": exc.message}))
            return
        except CommandTimeout as exc:
            page.reply(text("reply", id=command.id, ok=False, error={"code": "timeout", "message": str(exc)}))
            return
        page.reply(text("reply", id=command.id, ok=True, result=result))

    def _display(self, page: Page, command: Command) -> None:
        settings = {**page.settings, **command.args}
        try:
            message = view_message(settings, self.frame)
        except (ParamError, ValueError) as exc:
            page.reply(text("reply", id=command.id, ok=False, error={"code": "bad_params", "message": str(exc)}))
            return
        page.settings = settings
        page.reply(text("reply", id=command.id, ok=True, result={}))
        page.push("view", message)

    def _push_view(self, page: Page) -> None:
        try:
            page.push("view", view_message(page.settings, self.frame))
        except (ParamError, ValueError) as exc:  # e.g. a frame's recorded range that the settings cannot take
            page.push("error", text("error", message=str(exc)))

    # ------------------------------------------------------------------ frames and events

    @staticmethod
    def _event_message(kind: str, event: dict[str, Any]) -> str:
        return text(kind, **{key: event.get(key) for key in EVENT_FIELDS[kind]})

    async def _frames(self) -> None:
        """Hand each page the newest frame and events; the source drains its subscription on its own thread."""
        loop = asyncio.get_running_loop()
        while True:
            frame = await loop.run_in_executor(self._pool, self.source.wait_frame, POLL_S)
            if frame is not None:
                self.frame = frame
                for page in self.pages:
                    page.push_frame(frame)
                    self._push_view(page)
            for kind in EVENT_FIELDS:
                event = self.source.event(kind)
                if event is not None and event is not self._events.get(kind):
                    self._events[kind] = event
                    for page in self.pages:
                        page.push(kind, self._event_message(kind, event))
