"""OSC control surface: show-control software → the generator's command path.

Datagrams arrive on one UDP socket (127.0.0.1:9000 by default). Each is checked by
:mod:`generator.serving.osc_packet` before python-osc parses it, then turned into the same JSON
request a ZeroMQ client sends, over an in-process DEALER to the server's ROUTER: OSC, ZeroMQ
and the CLI share one validated path. Replies go back to the sender (or to its host at a
configured reply port); progress, frame and state events go to configured targets. The
address space and its type tags live in :mod:`generator.serving.osc_space`. One thread, no thread per
packet, no exception escapes.
"""

from __future__ import annotations

import ipaddress
import itertools
import json
import logging
import socket
import threading
from dataclasses import dataclass, field
from typing import Any

import zmq
from pythonosc.osc_packet import OscPacket

from td_bridge import protocol as wire
from td_bridge.addresses import is_loopback
from td_bridge.params import (GENERATION_PARAMS, LIVE_PARAMS, REMIX_PARAMS, UPSCALE_PARAMS, Param, ParamError,
                              defaults, generation_param)

from .osc_packet import MAX_DATAGRAM, OscPacketError, check_datagram, leading_address
from .osc_space import COMMANDS, INT32_MAX, OSC_PARAMS, PREFIX, param_echo, reply
from .ratelimit import PerSenderLimit, RateLimitedLogger

log = logging.getLogger("depthfusion.osc")

MAX_PENDING = 256  # requests awaiting the server's reply
ERRORS_PER_S = 20.0  # /depthfusion/error replies to one sender, in bursts of up to as many


@dataclass
class OscConfig:
    host: str = "127.0.0.1"
    port: int = 9000
    allow_lan: bool = False
    allow: list[str] = field(default_factory=list)  # sender networks, e.g. "192.168.1.0/24"
    reply_port: int | None = None  # reply to the sender's host at this port instead of its source port
    targets: list[str] = field(default_factory=list)  # "host:port" receiving progress/frame/state

    def check(self) -> tuple[list[ipaddress._BaseNetwork], list[tuple[str, int]]]:
        """Validated (allowed networks, event targets); raises ValueError with a clear message."""
        if not 1 <= self.port <= 65535:
            raise ValueError(f"OSC port {self.port} is outside 1-65535")
        if self.reply_port is not None and not 1 <= self.reply_port <= 65535:
            raise ValueError(f"OSC reply port {self.reply_port} is outside 1-65535")
        lan = not is_loopback(self.host)
        if lan and not self.allow_lan:
            raise ValueError(f"refusing to listen for OSC on {self.host}: "
                             "pass --allow-lan to accept OSC from the network")
        try:
            networks = [ipaddress.ip_network(n, strict=False) for n in self.allow]
        except ValueError as exc:
            raise ValueError(f"--osc-allow: {exc}") from None
        if lan and not networks:
            raise ValueError("OSC on a LAN address needs --osc-allow NETWORK (e.g. 192.168.1.0/24) naming the senders")
        targets = []
        for target in self.targets:
            host, _, port = target.rpartition(":")
            if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
                raise ValueError(f"OSC target {target!r} is not HOST:PORT")
            if not is_loopback(host) and not self.allow_lan:
                raise ValueError(f"OSC target {target} is on the network: pass --allow-lan to send there")
            targets.append((host, int(port)))
        return networks, targets


class OscBridge:
    """Owns the UDP socket and two in-process ZeroMQ sockets; runs on its own thread."""

    def __init__(self, ctx: zmq.Context, commands: str, frames: str, config: OscConfig,
                 start: dict[str, Any] | None = None) -> None:
        self.config = config
        self._networks, self._targets = config.check()
        self._ctx, self._commands_address, self._frames_address = ctx, commands, frames
        self.params: dict[str, Any] = {**defaults(GENERATION_PARAMS), **(start or {})}  # what /generate uses
        self.upscale_params: dict[str, Any] = defaults(UPSCALE_PARAMS)  # what /upscale uses
        self.remix_params: dict[str, Any] = defaults(REMIX_PARAMS)  # the region /remix uses
        self.live_params: dict[str, Any] = defaults(LIVE_PARAMS)  # what /live 1 starts with
        self.live_on = False  # as the generator's status (and our own /live) last said
        self._pending: dict[str, tuple[tuple[str, int], str]] = {}
        self._ids = (f"osc-{n}" for n in itertools.count(1))
        self._last_state: tuple | None = None
        self._log = RateLimitedLogger(log, per_window=5, window_s=10.0)
        self._error_limit = PerSenderLimit(rate=ERRORS_PER_S, burst=int(ERRORS_PER_S))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
        self.udp = socket.socket(family, socket.SOCK_DGRAM)
        try:
            self.udp.bind((config.host, config.port))
        except OSError as exc:
            self.udp.close()
            raise OSError(f"cannot listen for OSC on {config.host}:{config.port}: {exc}") from exc
        self.udp.setblocking(False)
        self.port = self.udp.getsockname()[1]

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="depthfusion-osc", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    # ------------------------------------------------------------ loop

    def _run(self) -> None:
        dealer = self._ctx.socket(zmq.DEALER)
        sub = self._ctx.socket(zmq.SUB)
        for sock in (dealer, sub):
            sock.setsockopt(zmq.LINGER, 0)
        dealer.connect(self._commands_address)
        for topic in (wire.TOPIC_PROGRESS, wire.TOPIC_STATUS, wire.TOPIC_FRAME):
            sub.setsockopt(zmq.SUBSCRIBE, topic)
        sub.connect(self._frames_address)
        udp_fd = self.udp.fileno()  # zmq.Poller reports plain sockets by file descriptor
        poller = zmq.Poller()
        poller.register(udp_fd, zmq.POLLIN)
        poller.register(dealer, zmq.POLLIN)
        poller.register(sub, zmq.POLLIN)
        log.info("OSC on udp://%s:%d", self.config.host, self.port)
        try:
            while not self._stop.is_set():
                for sock, _ in poller.poll(100):
                    try:
                        if sock == udp_fd:
                            self._drain_udp(dealer)
                        elif sock is dealer:
                            self._drain_replies(dealer)
                        elif sock is sub:
                            self._drain_events(sub)
                    except Exception:  # nothing from outside may stop the loop
                        log.exception("OSC bridge error")
        finally:
            dealer.close()
            sub.close()
            self.udp.close()

    def _drain_udp(self, dealer: zmq.Socket) -> None:
        for _ in range(256):  # bounded, so replies and events are never starved by a flood
            try:
                data, sender = self.udp.recvfrom(MAX_DATAGRAM + 1)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. ICMP port unreachable surfacing on some platforms
                self._log.warning("OSC receive error: %s", exc)
                continue
            if not self._allowed(sender[0]):
                self._log.warning("OSC from %s dropped: not in --osc-allow", sender[0])
                continue
            try:
                check_datagram(data)
                messages = [m.message for m in OscPacket(data).messages]
            except Exception as exc:  # OscPacketError, or python-osc rejected what our checks let through
                problem = str(exc) if isinstance(exc, OscPacketError) else f"{type(exc).__name__}: {exc}"
                self._error(sender, leading_address(data), f"malformed OSC packet: {problem}")
                continue
            for message in messages:
                self._handle(message.address, list(message.params), sender, dealer)

    def _allowed(self, host: str) -> bool:
        """Loopback always; other senders (possible only on a LAN address) when --osc-allow names them."""
        if is_loopback(host):
            return True
        address = ipaddress.ip_address(host.split("%")[0])
        return any(address in network for network in self._networks)

    # ------------------------------------------------------------ OSC → command

    def _handle(self, address: str, args: list[Any], sender: tuple[str, int], dealer: zmq.Socket) -> None:
        if not address.startswith(PREFIX):
            return self._error(sender, address, f"unknown address; DepthFusion listens under {PREFIX}")
        name = address[len(PREFIX):]
        if name in COMMANDS:
            try:
                cmd, request_args = self._command(name, args)
            except ParamError as exc:
                return self._error(sender, address, str(exc))
            return self._request(dealer, sender, address, cmd, request_args)
        param = next((p for p in OSC_PARAMS if p.name == name), None)
        if param is None:
            known = ", ".join([*COMMANDS, *(p.name for p in OSC_PARAMS)])
            return self._error(sender, address, f"unknown address; known: {known}")
        self._set_param(param, args, sender, address, dealer)

    def _command(self, name: str, args: list[Any]) -> tuple[str, dict[str, Any]]:
        if name in ("ping", "status"):
            _expect_args(args, 0, 0, name)
            return name, {}
        if name == "generate":
            _expect_args(args, 0, 1, name)
            prompt = {"prompt": generation_param("prompt").coerce(args[0])} if args else {}
            return "generate", {**self.params, **prompt}
        if name == "live":
            _expect_args(args, 1, 1, name)
            on = Param("live", bool, False, "").coerce(args[0])
            return "live", ({"on": True, **self.params, **self.live_params} if on else {"on": False})
        if name == "cancel":
            _expect_args(args, 0, 1, name)
            return "cancel", {"job_id": str(args[0])} if args else {}
        if name == "keep":
            _expect_args(args, 0, 1, name)
            return "keep", {"frame_id": "latest", **({"cue": generation_param("cue").coerce(args[0])} if args else {})}
        if name == "take":
            _expect_args(args, 0, 0, name)
            return "take", {"frame_id": "latest"}
        if name == "remix":
            return "remix", self._remix_args(args)
        _expect_args(args, 1, 1, name)
        if name == "upscale":
            return "upscale", {"name": str(args[0]), **self.upscale_params}
        return "recall", {"name": str(args[0])}

    def _remix_args(self, args: list[Any]) -> dict[str, Any]:
        """/remix [prompt [yaw pitch width height]]: the newest frame, the sticky parameters (not the size: a remix
        keeps its source's) and region, with this prompt and region."""
        if len(args) not in (0, 1, 5):
            raise ParamError(f"remix: takes no argument, a prompt, or a prompt then yaw, pitch, width and height; "
                             f"got {len(args)}")
        given = {"prompt": generation_param("prompt").coerce(args[0])} if args else {}
        region = dict(zip(("remix_yaw", "remix_pitch", "remix_width", "remix_height"), args[1:]))
        region = {name: next(p for p in REMIX_PARAMS if p.name == name).coerce(v) for name, v in region.items()}
        params = {k: v for k, v in self.params.items() if k not in ("width", "height")}
        return {"frame_id": "latest", **params, **self.remix_params, **given, **region}

    def _set_param(self, param: Param, args: list[Any], sender: tuple[str, int], address: str,
                   dealer: zmq.Socket | None = None) -> None:
        try:
            _expect_args(args, 1, 1, param.name)
            values = (self.upscale_params if param in UPSCALE_PARAMS else self.remix_params if param in REMIX_PARAMS
                      else self.live_params if param in LIVE_PARAMS else self.params)
            values[param.name] = param.coerce(args[0])
        except ParamError as exc:
            return self._error(sender, address, str(exc))
        self._send(self._reply_to(sender), param_echo(param, values[param.name]))
        if self.live_on and dealer is not None and param not in UPSCALE_PARAMS + REMIX_PARAMS:  # steers the next live frame
            self._request(dealer, sender, address, "live", {param.name: values[param.name]})

    def _request(self, dealer: zmq.Socket, sender: tuple[str, int], address: str, cmd: str,
                 args: dict[str, Any]) -> None:
        if len(self._pending) >= MAX_PENDING:
            return self._error(sender, address, "too many requests waiting for the generator")
        request_id = next(self._ids)
        self._pending[request_id] = (sender, address)
        dealer.send(wire.encode_request(request_id, cmd, args))

    # ------------------------------------------------------------ replies and events

    def _drain_replies(self, dealer: zmq.Socket) -> None:
        while True:
            try:
                parts = dealer.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            reply = wire.decode_reply(parts[0])
            sender, address = self._pending.pop(reply.get("id"), (None, ""))
            if sender is None:
                continue
            if not reply["ok"]:
                error = reply["error"]
                self._error(sender, address, f"{error['code']}: {error['message']}")
                continue
            if address[len(PREFIX):] == "live":
                self.live_on = bool(reply["result"]["on"])
            packet = self._success(address, reply["result"])
            if packet is not None:  # a parameter forwarded to the live session was echoed when it was set
                self._send(self._reply_to(sender), packet)

    @staticmethod
    def _success(address: str, result: dict[str, Any]) -> bytes | None:
        name = address[len(PREFIX):]
        if name == "live":
            return reply("live", int(bool(result["on"])))
        if name not in COMMANDS:
            return None
        if name == "ping":
            return reply("pong")
        if name == "status":
            return reply("status", result["state"], result["backend"], result["queued"], result["last_frame_id"] or "")
        if name == "generate":
            return reply("queued", result["job_id"], result["params"]["seed"])
        if name == "upscale":
            return reply("queued", result["job_id"], result["params"]["upscale_seed"])
        if name in ("take", "remix"):
            return reply("queued", result["job_id"], result["params"]["seed"])
        if name == "keep":
            return reply("kept", result["frame_id"])
        if name == "cancel":
            return reply("cancelled", len(result["cancelled"]), *result["cancelled"])
        return reply("recalled", result["frame_id"])

    def _drain_events(self, sub: zmq.Socket) -> None:
        while True:
            try:
                parts = sub.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            topic = parts[0].bytes
            try:
                if topic == wire.TOPIC_FRAME:
                    header = json.loads(parts[1].bytes)
                    self._broadcast(reply("frame", header["frame_id"], header["seq"] % (INT32_MAX + 1)))
                    check = header.get("depth_check") or {}
                    if "abs_rel" in check and "recalled_at" not in header:
                        self._broadcast(reply("depth_check", header["frame_id"], check["abs_rel"], check["delta1"]))
                    continue
                event = wire.decode_event([p.bytes for p in parts])
            except (wire.ProtocolError, ValueError, KeyError):
                continue
            if topic == wire.TOPIC_PROGRESS:
                self._broadcast(reply("progress", event["job_id"], event["step"], event["total"]))
            else:
                self.live_on = bool((event.get("live") or {}).get("on"))
                state = (event["state"], event["queued"])
                if state != self._last_state:  # the 1 s heartbeat is not news
                    self._last_state = state
                    self._broadcast(reply("state", *state))

    def _broadcast(self, packet: bytes) -> None:
        for target in self._targets:
            self._send(target, packet)

    def _reply_to(self, sender: tuple[str, int]) -> tuple[str, int]:
        return (sender[0], self.config.reply_port) if self.config.reply_port else sender[:2]

    def _error(self, sender: tuple[str, int], address: str, message: str) -> None:
        """Log and answer with /depthfusion/error, at most ERRORS_PER_S a second to one sender."""
        self._log.warning("OSC %s from %s: %s", address[:80], sender[0], message)
        if self._error_limit.allow(sender[:2]):
            self._send(self._reply_to(sender), reply("error", address[:256], message[:1000]))

    def _send(self, target: tuple[str, int], packet: bytes) -> None:
        try:
            self.udp.sendto(packet, target)
        except OSError as exc:
            self._log.warning("OSC send to %s:%s failed: %s", target[0], target[1], exc)


def _expect_args(args: list[Any], low: int, high: int, name: str) -> None:
    if not low <= len(args) <= high:
        wanted = str(low) if low == high else f"{low} to {high}"
        raise ParamError(f"{name}: takes {wanted} argument(s), got {len(args)}")
