"""Receive frames and send commands (numpy + pyzmq; safe to use inside TouchDesigner).

``FrameReceiver`` subscribes on a background thread, drains the socket and keeps only the
newest frame, so a slow consumer always sees the freshest picture. ``latest()`` never
blocks. ``CommandClient`` sends JSON requests (DEALER → the generator's ROUTER).
"""

from __future__ import annotations

import collections
import itertools
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import zmq

from . import protocol as wire
from .addresses import DEFAULT_COMMANDS, DEFAULT_FRAMES, check_endpoint

POLL_MS = 50


@dataclass(frozen=True)
class ReceiverStats:
    frames: int  # frames decoded
    fps: float  # arrival rate over the last few seconds
    latency_ms: float | None  # publish → decoded, newest frame (same-machine clocks)
    dropped: int  # frames published but never read by latest()/take()
    errors: int  # messages rejected by the protocol checks
    last_error: str | None
    connected: bool  # a message (frames or the 1 s status heartbeat) arrived recently


class FrameReceiver:
    """Subscribe to a generator's frames and events; keep only the newest of each."""

    def __init__(self, address: str = DEFAULT_FRAMES, *, stale_after: float = 3.0, start: bool = True,
                 prepare: Callable[[wire.Frame], Any] | None = None) -> None:
        """``prepare`` turns each decoded frame into what latest()/take()/wait() return, on the
        receiving thread (e.g. ``td_bridge.top_frames.to_top`` for TouchDesigner)."""
        self.address = check_endpoint(address)
        self.stale_after = stale_after
        self._prepare = prepare
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._latest: Any = None  # a wire.Frame, or what prepare made of it
        self._latest_read = True
        self._events: dict[str, dict[str, Any]] = {}
        self._arrivals: collections.deque[float] = collections.deque(maxlen=32)
        self._frames = self._dropped = self._errors = 0
        self._last_error: str | None = None
        self._latency: float | None = None
        self._last_message = 0.0
        self._last_source: tuple[str, int] | None = None  # (server_id, seq) of the newest frame
        if start:
            self.start()

    # ------------------------------------------------------------ consumer side (any thread)

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("receiver already started")
        self._thread = threading.Thread(target=self._run, name="depthfusion-receiver", daemon=True)
        self._thread.start()

    def latest(self) -> wire.Frame | None:
        """The newest frame received so far (possibly one returned before), or None."""
        with self._lock:
            self._latest_read = True
            return self._latest

    def take(self) -> wire.Frame | None:
        """The newest frame if it has not been returned by latest()/take()/wait() yet, else None."""
        return self.wait(0)

    def wait(self, timeout: float | None = None) -> wire.Frame | None:
        """Block until a frame not returned before is there, then return it; None on timeout."""
        with self._arrived:
            if not self._arrived.wait_for(lambda: not self._latest_read, timeout):
                return None
            self._latest_read = True
            return self._latest

    def event(self, kind: str) -> dict[str, Any] | None:
        """The newest ``status`` or ``progress`` event, or None."""
        with self._lock:
            return self._events.get(kind)

    @property
    def connected(self) -> bool:
        return time.monotonic() - self._last_message < self.stale_after

    def stats(self) -> ReceiverStats:
        with self._lock:
            now = time.monotonic()
            recent = [t for t in self._arrivals if now - t < 3.0]
            fps = (len(recent) - 1) / (recent[-1] - recent[0]) if len(recent) > 1 and recent[-1] > recent[0] else 0.0
            return ReceiverStats(
                frames=self._frames,
                fps=fps,
                latency_ms=None if self._latency is None else self._latency * 1000.0,
                dropped=self._dropped,
                errors=self._errors,
                last_error=self._last_error,
                connected=self.connected,
            )

    def close(self, timeout: float = 2.0) -> None:
        """Stop the thread and release the socket; returns within ``timeout`` + one poll."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def __enter__(self) -> FrameReceiver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ receiving thread

    def _run(self) -> None:
        ctx = zmq.Context()
        sock = ctx.socket(zmq.SUB)
        try:
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.RCVHWM, 8)
            sock.setsockopt(zmq.RECONNECT_IVL, 100)
            sock.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
            sock.setsockopt(zmq.MAXMSGSIZE, wire.MAX_PIXELS * 3 + wire.MAX_HEADER_BYTES)
            sock.setsockopt(zmq.SUBSCRIBE, b"")
            sock.connect(self.address)
            while not self._stop.is_set():
                if sock.poll(POLL_MS):
                    self._drain(sock)
        except zmq.ZMQError as exc:
            self._record_error(f"socket error: {exc}")
        finally:
            sock.close(linger=0)
            ctx.term()

    def _drain(self, sock: zmq.Socket) -> None:
        newest = None
        while True:
            try:
                parts = sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            self._last_message = time.monotonic()
            topic = parts[0].bytes
            if topic == wire.TOPIC_FRAME:
                newest = parts  # older frames in the same burst are superseded unread
            elif topic in wire.EVENT_TOPICS:
                try:
                    event = wire.decode_event([p.bytes for p in parts])
                except wire.ProtocolError as exc:
                    self._record_error(str(exc))
                    continue
                with self._lock:
                    self._events[topic.decode()] = event
            else:
                self._record_error(f"unknown topic {topic[:32]!r}")
        if newest is not None:
            try:
                frame = wire.decode_frame([p.buffer for p in newest])
                kept = self._prepare(frame) if self._prepare else frame
            except Exception as exc:  # a bad frame or a failing prepare must not end the thread
                self._record_error(str(exc) if isinstance(exc, wire.ProtocolError) else f"prepare: {exc!r}")
                return
            self._store(frame, kept)

    def _store(self, frame: wire.Frame, kept: Any) -> None:
        now = time.monotonic()
        source = (str(frame.meta.get("server_id", "")), frame.seq)
        sent_at = frame.meta.get("sent_at")
        with self._lock:
            skipped = 0
            if self._last_source is not None and self._last_source[0] == source[0]:
                skipped = max(0, source[1] - self._last_source[1] - 1)
            self._dropped += skipped + (0 if self._latest_read else 1)
            self._last_source = source
            self._latest, self._latest_read = kept, False
            self._arrived.notify_all()
            self._frames += 1
            self._arrivals.append(now)
            if isinstance(sent_at, (int, float)):
                self._latency = max(0.0, time.time() - sent_at)

    def _record_error(self, message: str) -> None:
        with self._lock:
            self._errors += 1
            self._last_error = message


class CommandError(RuntimeError):
    """The generator answered a request with an error."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class CommandTimeout(TimeoutError):
    """No reply arrived in time."""


class CommandClient:
    """Blocking request/reply client; one request at a time (guarded by a lock)."""

    def __init__(self, address: str = DEFAULT_COMMANDS, *, timeout: float = 5.0) -> None:
        self.address = check_endpoint(address)
        if not 0 < timeout <= 3600:
            raise ValueError(f"timeout must be in (0, 3600] seconds, got {timeout}")
        self.timeout = timeout
        self._lock = threading.Lock()
        self._ids = (f"{secrets.token_hex(3)}-{n}" for n in itertools.count(1))
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.IMMEDIATE, 1)  # never queue a request for a peer that is not there
        self._sock.setsockopt(zmq.RECONNECT_IVL, 100)
        self._sock.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
        self._sock.setsockopt(zmq.MAXMSGSIZE, wire.MAX_PIXELS * 3 + 2 * wire.MAX_HEADER_BYTES)
        self._sock.connect(self.address)

    def request(self, cmd: str, args: dict[str, Any] | None = None, *, timeout: float | None = None,
                data: Any = None) -> tuple[dict[str, Any], list[Any]]:
        """(result, extra parts) for one command (``data``: a second request part, e.g. an uploaded image);
        raises CommandError or CommandTimeout."""
        timeout = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        with self._lock:
            request_id = next(self._ids)
            self._sock.setsockopt(zmq.SNDTIMEO, max(1, int(timeout * 1000)))
            try:
                body = wire.encode_request(request_id, cmd, args)
                self._sock.send_multipart([body] if data is None else [body, data], copy=data is None)
            except zmq.Again:
                raise CommandTimeout(self._no_reply(timeout)) from None
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._sock.poll(int(remaining * 1000) + 1):
                    raise CommandTimeout(self._no_reply(timeout))
                parts = self._sock.recv_multipart(copy=False)
                reply = wire.decode_reply(parts[0].bytes)
                if reply.get("id") not in (request_id, None):
                    continue  # a late reply to an earlier request that timed out
                if not reply["ok"]:
                    error = reply["error"]
                    raise CommandError(str(error.get("code", "error")), str(error.get("message", "")))
                return reply.get("result") or {}, parts[1:]

    def _no_reply(self, timeout: float) -> str:
        return f"no reply from {self.address} within {timeout:g} s; is `python -m generator serve` running?"

    def ping(self) -> dict[str, Any]:
        return self.request("ping")[0]

    def status(self) -> dict[str, Any]:
        return self.request("status")[0]

    def generate(self, **params: Any) -> dict[str, Any]:
        """Queue a generation; returns {"job_id", "params"} (params with the seed resolved)."""
        return self.request("generate", params)[0]

    def live(self, on: bool | None = None, **params: Any) -> dict[str, Any]:
        """Start (on=True), stop (on=False) or steer the generator's live session with generation and live
        parameters; returns the session's state and parameters in force."""
        return self.request("live", params if on is None else {"on": on, **params})[0]

    def live_input(self, rgb: Any = None, **params: Any) -> dict[str, Any]:
        """Hand the live session its newest input frame, an (H, W, 3) uint8 image (rows top first), with optional
        live parameters (input_strength, input_similarity…); ``rgb=None`` removes the input (back to text only).
        Returns {"accepted": whether it makes a new frame, "similarity": to the input last used or null}."""
        if rgb is None:
            return self.request("live_input", {**params, "clear": True})[0]
        image, data = wire.encode_upload(rgb)
        return self.request("live_input", {**params, "image": image}, data=data)[0]

    def keep(self, frame_id: str = "latest", *, cue: str | None = None) -> dict[str, Any]:
        """Store a frame the generator published (a live frame on screen, by default the newest) in the frame
        library exactly as shown; returns {"frame_id", "cue"} of the kept frame."""
        return self.request("keep", {"frame_id": frame_id, **({"cue": cue} if cue is not None else {})})[0]

    def remix(self, mask: Any = None, **params: Any) -> dict[str, Any]:
        """Queue a remix of a kept frame (``frame_id`` or ``name``; by default the newest): the region the
        ``remix_*`` parameters give, or ``mask`` ((H, W) uint8 of the frame's size, rows top first: 255 repaints,
        0 keeps), regenerated with the generation parameters given (not width or height: the source's size), the
        rest kept. Returns {"job_id", "params"} like generate."""
        if mask is None:
            return self.request("remix", params)[0]
        arg, data = wire.encode_mask(mask)
        return self.request("remix", {**params, "mask": arg}, data=data)[0]

    def take(self, frame_id: str = "latest", **params: Any) -> dict[str, Any]:
        """Queue a full-quality render of a live frame (by default the newest): its prompt, seed, transition state
        and input with the full steps, guidance and decoder; ``params`` override generation parameters and may ask
        for ``upscale``. Returns {"job_id", "params"} like generate."""
        return self.request("take", {"frame_id": frame_id, **params})[0]

    def cancel(self, job_id: str | None = None) -> list[str]:
        """Cancel one job, or all waiting and running jobs; returns the cancelled ids."""
        return self.request("cancel", {} if job_id is None else {"job_id": job_id})[0]["cancelled"]

    def job(self, job_id: str) -> dict[str, Any]:
        return self.request("job", {"job_id": job_id})[0]

    def estimate(self, rgb: Any, **params: Any) -> dict[str, Any]:
        """Queue depth estimation of an (H, W, 3) uint8 image (rows top first) with the estimation parameters
        (pano, views, flip, cue); returns {"job_id", "params"}. The frame is published like a generated one."""
        image, data = wire.encode_upload(rgb)
        return self.request("estimate", {**params, "image": image}, data=data)[0]

    def recall(self, frame_id: str = "latest", *, cue: str | None = None) -> dict[str, Any]:
        """Publish a kept frame again (no model run), by id or by cue name; returns {"frame_id", "seq"}."""
        return self.request("recall", {"cue": cue} if cue is not None else {"frame_id": frame_id})[0]

    def get_frame(self, frame_id: str = "latest", *, cue: str | None = None) -> wire.Frame:
        _, parts = self.request("get_frame", {"cue": cue} if cue is not None else {"frame_id": frame_id})
        return wire.decode_frame_parts([p.buffer for p in parts])

    def library(self, search: str = "", limit: int = 100) -> dict[str, Any]:
        """Kept frames, newest first, whose prompt or cue contains ``search``: {"frames", "total"}."""
        return self.request("library", {"search": search, "limit": limit})[0]

    def delete(self, frame_id: str) -> None:
        """Remove a frame from the library (and from the generator's memory)."""
        self.request("delete", {"frame_id": frame_id})

    def close(self) -> None:
        self._sock.close(linger=0)
        self._ctx.term()

    def __enter__(self) -> CommandClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
