"""What the DepthFusion TouchDesigner component does, without TouchDesigner.

``touchdesigner/DepthFusionExt.py`` is a thin shim around :class:`ComponentController`, so that
everything here runs and is tested outside TouchDesigner. Threads: frames arrive on the
FrameReceiver's thread and are turned into TOP-ready arrays there (``to_top``); commands go
to the generator on a worker thread, so a generator that is down or slow never stalls
TouchDesigner's main thread. ``update()``, called once per TouchDesigner frame on the main
thread, picks up the newest frame, the replies and the generator's status.

The live session (docs/live.md) adds newest-wins commands: steering (changed generation and live parameters) and the
live input image wait in a slot of one per kind, not in the queue: a newer offer replaces (steering: updates) the
one the worker has not sent yet, so a slow or absent generator never backs them up. The live input is handed over
as a TOP's ``numpyArray()`` image and converted and sent on the worker thread; :class:`InputPacer` decides when
the main thread reads one.
"""

from __future__ import annotations

import collections
import functools
import queue
import threading
from dataclasses import dataclass
from typing import Any, Mapping

from .addresses import DEFAULT_COMMANDS, DEFAULT_FRAMES, check_endpoint
from .params import (ESTIMATION_PARAMS, GENERATION_PARAMS, LIVE_PARAMS, REMIX_PARAMS, UPSCALE_PARAMS, ParamError,
                     find_param, validate, validate_all, validate_generation)
from .protocol import ProtocolError, encode_mask, encode_upload
from .receiver import CommandClient, CommandError, CommandTimeout, FrameReceiver
from .top_frames import TopFrame, from_top, mask_from_top, to_top

MAX_PENDING = 32  # commands waiting for the worker; more means the generator is not answering
NEWEST = object()  # in the queue instead of arguments: the command's newest arguments wait in its slot
QUIET = ("live_input",)  # sent many times a second: an answer does not clear Last Error (an error still sets it)
JOB_COMMANDS = ("generate", "estimate", "upscale", "remix", "take")  # their answer's job_id shows as Job ID
PACE_SLACK = 1e-3  # seconds: a frame clock's rounding must not push an input to the frame after


@dataclass(frozen=True)
class ComponentState:
    """What the component's read-only parameters show."""

    connected: bool = False
    status: str = "disconnected"  # one line for people
    backend: str = ""
    model: str = ""
    progress: float = 0.0  # 0..1 of the running job
    frame_id: str = ""  # the frame on screen
    job_id: str = ""  # the last job this component queued
    last_error: str = ""
    depth_check: str = ""  # the frame on screen: how well its depth agrees with an estimate (serve --depth-check)
    live_on: bool = False  # the generator's live session, from its status event
    live_rate: float = 0.0  # live frames a second, measured by the generator
    live_frames: int = 0
    live_idle: bool = False  # on, but nothing changed: no frames are made


class ComponentController:
    """Connect to a generator, send it commands, hand out its frames; never blocks."""

    def __init__(self, *, timeout: float = 3.0) -> None:
        self.timeout = timeout
        self.frame: TopFrame | None = None  # the last good frame: stays when the generator goes away
        self.state = ComponentState()
        self._receiver: FrameReceiver | None = None
        self._commands: queue.Queue[tuple[str, Any, Any]] = queue.Queue(MAX_PENDING)
        self._newest: dict[str, tuple[dict[str, Any], Any]] = {}  # newest-wins commands' slots, by command
        self._lock = threading.Lock()  # guards the slots
        self._live_error: str | None = None  # the live session's error last reported
        self._replies: collections.deque[tuple[str, bool, Any]] = collections.deque(maxlen=MAX_PENDING)
        self._worker: threading.Thread | None = None
        self._stop = threading.Event()
        self._frames_address = self._commands_address = ""

    # ------------------------------------------------------------ connection

    def connect(self, frames: str = DEFAULT_FRAMES, commands: str = DEFAULT_COMMANDS) -> None:
        """(Re)connect; raises ValueError for an address that is not tcp://HOST:PORT."""
        frames, commands = check_endpoint(frames), check_endpoint(commands)
        self.disconnect()
        self._frames_address, self._commands_address = frames, commands
        self._receiver = FrameReceiver(frames, prepare=to_top)
        self._commands, self._newest, self._stop = queue.Queue(MAX_PENDING), {}, threading.Event()
        self._live_error = None
        self._worker = threading.Thread(target=self._work, args=(commands, self._commands, self._newest, self._stop),
                                        name="depthfusion-commands", daemon=True)
        self._worker.start()
        self.state = ComponentState(status=f"waiting for the generator at {frames}", frame_id=self.state.frame_id)

    def disconnect(self) -> None:
        """Stop receiving; the last frame stays on screen."""
        if self._worker is not None:
            self._stop.set()  # the worker ends after the request in flight, if any
            self._worker = None
        if self._receiver is not None:
            self._receiver.close()
            self._receiver = None
        self.state = ComponentState(frame_id=self.state.frame_id)

    @property
    def is_connected(self) -> bool:
        return self._receiver is not None

    # ------------------------------------------------------------ commands (validated here, sent by the worker)

    def generate(self, values: Mapping[str, Any], upscale: Mapping[str, Any] | None = None) -> None:
        """Queue a generation (and, with ``upscale`` values, its ldm3d-sr upscale once it is out); raises
        ParamError at once for a bad value, naming the allowed range."""
        args = validate_generation(values)
        if upscale is not None:
            args.update(validate(upscale, UPSCALE_PARAMS), upscale=True)
        self._send("generate", args)

    def upscale(self, frame_id: str, values: Mapping[str, Any]) -> None:
        """Queue an ldm3d-sr upscale of a kept frame (e.g. the one on screen) with upscale parameters."""
        if not frame_id:
            raise ParamError("no frame to upscale yet")
        self._send("upscale", {"frame_id": frame_id, **validate(values, UPSCALE_PARAMS)})

    def remix(self, frame_id: str, values: Mapping[str, Any], region: Mapping[str, Any], mask: Any = None,
              size: tuple[int, int] | None = None) -> None:
        """Queue a remix of a kept frame (e.g. the one on screen): the ``region`` (remix parameters) regenerated
        with generation parameter ``values`` (the size is the frame's own, so width and height are not sent). With
        ``mask`` (a TOP's ``numpyArray()`` image) its white is regenerated instead of the region: converted on the
        worker thread (:func:`mask_from_top`), resampled to ``size`` (the frame's width, height) if given."""
        if not frame_id:
            raise ParamError("no frame to remix yet")
        values, region = validate_all((values, GENERATION_PARAMS), (region, REMIX_PARAMS))
        values = {k: v for k, v in values.items() if k not in ("width", "height")}
        if mask is None:
            self._send("remix", {"frame_id": frame_id, **values, **region})
        else:
            self._send("remix", {"frame_id": frame_id, **values}, functools.partial(_mask_upload, mask, size))

    def cancel(self, job_id: str | None = None) -> None:
        self._send("cancel", {"job_id": job_id} if job_id else {})

    def recall(self, name: str) -> None:
        """Publish a kept frame again: a frame id, or a cue name (the newest frame with that cue)."""
        name = str(name).strip()
        if not 0 < len(name) <= 100:
            raise ParamError("recall needs a frame id or cue name of 1-100 characters")
        self._send("recall", {"name": name})

    def estimate(self, rgb: Any, values: Mapping[str, Any]) -> None:
        """Queue depth estimation of an (H, W, 3) uint8 image, rows top first, with estimation parameters
        (pano, views, flip, cue); ParamError at once for a bad value or image."""
        params = validate(values, ESTIMATION_PARAMS)
        try:
            image, data = encode_upload(rgb)
        except ProtocolError as exc:
            raise ParamError(str(exc)) from None
        self._send("estimate", {**params, "image": image}, bytes(data))

    # ------------------------------------------------------------ the live session

    def live(self, on: bool, values: Mapping[str, Any] | None = None) -> None:
        """Start the generator's live session with generation and live parameters (``values``), or stop it;
        ParamError at once for a bad value."""
        self._send("live", {"on": True, **_live_values(values or {})} if on else {"on": False})

    def steer(self, values: Mapping[str, Any]) -> None:
        """Send changed generation or live parameters to the running live session. Newest wins: values not sent yet
        are updated by these, never queued twice."""
        self._offer("live", _live_values(values), merge=True)

    def live_input(self, pixels: Any) -> None:
        """The live session's newest input: a TOP's ``numpyArray()`` image (converted with ``from_top`` and sent on
        the worker thread), or None to clear it (text only). Newest wins: an input not sent yet is replaced."""
        if pixels is None:
            self._offer("live_input", {"clear": True})
        else:
            self._offer("live_input", {}, functools.partial(_upload, pixels))

    def keep(self, frame_id: str, cue: str = "") -> None:
        """Store a published frame (e.g. the live frame on screen) in the generator's library as shown, under
        ``cue`` if not empty."""
        if not frame_id:
            raise ParamError("no frame on screen to keep yet")
        cue = find_param("cue").coerce(cue)
        self._send("keep", {"frame_id": frame_id, **({"cue": cue} if cue else {})})

    def take(self, frame_id: str, upscale: Mapping[str, Any] | None = None) -> None:
        """Queue a full-quality render of a live frame (e.g. the one on screen); with ``upscale`` values (upscale
        parameters) it is upscaled too."""
        if not frame_id:
            raise ParamError("no frame on screen to take yet")
        extra = {**validate(upscale, UPSCALE_PARAMS), "upscale": True} if upscale is not None else {}
        self._send("take", {"frame_id": frame_id, **extra})

    # ------------------------------------------------------------ the worker

    def _send(self, cmd: str, args: Any, data: Any = None) -> None:
        if self._worker is None:
            raise ConnectionError("not connected; pulse Connect first")
        try:
            self._commands.put_nowait((cmd, args, data))
        except queue.Full:
            raise ConnectionError(f"{MAX_PENDING} commands are still waiting; is the generator answering?") from None

    def _offer(self, cmd: str, args: dict[str, Any], data: Any = None, *, merge: bool = False) -> None:
        """A newest-wins command: it replaces (``merge``: updates the arguments of) the one of its kind the worker
        has not sent yet; only the first of them takes a place in the queue."""
        if self._worker is None:
            raise ConnectionError("not connected; pulse Connect first")
        with self._lock:
            waiting = self._newest.get(cmd)
            self._newest[cmd] = ({**waiting[0], **args} if merge and waiting else args), data
        if waiting is None:
            try:
                self._send(cmd, NEWEST)
            except ConnectionError:
                with self._lock:
                    self._newest.pop(cmd, None)
                raise

    def _work(self, address: str, commands: queue.Queue, newest: dict[str, tuple[dict[str, Any], Any]],
              stop: threading.Event) -> None:
        client = CommandClient(address, timeout=self.timeout)
        try:
            while not stop.is_set():
                try:
                    cmd, args, data = commands.get(timeout=0.1)
                except queue.Empty:
                    continue
                if args is NEWEST:
                    with self._lock:
                        args, data = newest.pop(cmd)
                try:
                    if callable(data):  # made here, off the main thread: (more arguments, the data part)
                        extra, data = data()
                        args = {**args, **extra}
                    self._replies.append((cmd, True, client.request(cmd, args, data=data)[0]))
                except (CommandError, CommandTimeout) as exc:
                    self._replies.append((cmd, False, str(exc)))
                except Exception as exc:  # keep the worker alive whatever the reply was
                    self._replies.append((cmd, False, f"{type(exc).__name__}: {exc}"))
        finally:
            client.close()

    # ------------------------------------------------------------ main thread, once per frame

    def update(self) -> TopFrame | None:
        """Pick up replies, status and the newest frame; returns that frame when it is new."""
        if self._receiver is None:
            return None
        changes: dict[str, Any] = {}
        errors = [f"live: {error}"] if (error := self._new_live_error()) else []
        while self._replies:
            cmd, ok, result = self._replies.popleft()
            if not ok:
                errors.append(f"{cmd}: {result}")
            elif cmd not in QUIET:
                changes["last_error"] = ""  # a command people sent went through: unless one of these failed
                if cmd in JOB_COMMANDS:
                    changes["job_id"] = result.get("job_id", "")
        if errors:
            changes["last_error"] = errors[-1]
        fresh = self._receiver.take()
        if fresh is not None:
            self.frame = fresh
            changes["frame_id"] = fresh.frame_id
            changes["depth_check"] = describe_depth_check(fresh.meta.get("depth_check"))
        self.state = self._describe(self.state, changes)
        return fresh

    def _new_live_error(self) -> str | None:
        """The live session's error (a live frame that failed) when it differs from the one reported last."""
        live = (self._receiver.event("status") or {}).get("live") or {}
        error = live.get("error") or None
        new, self._live_error = error if error != self._live_error else None, error
        return new

    def _describe(self, state: ComponentState, changes: dict[str, Any]) -> ComponentState:
        receiver = self._receiver
        connected = receiver.connected
        status_event = receiver.event("status") or {}
        progress_event = receiver.event("progress") or {}
        running = status_event.get("job") or None
        live = (status_event.get("live") or {}) if connected else {}
        progress = 0.0
        if not connected:
            line = f"waiting for the generator at {self._frames_address}"
        else:
            doing = []
            if running:
                done = progress_event if progress_event.get("job_id") == running.get("id") else {}
                step, total = int(done.get("step", 0)), int(done.get("total", 0) or running.get("total") or 0)
                progress = step / total if total else 0.0
                queued = status_event.get("queued", 0)
                doing.append(f"generating {step}/{total}" + (f", {queued} waiting" if queued else ""))
            if live.get("on"):
                doing.append(describe_live(live))
            line = ", ".join(doing) or "idle"
            line += f" · {status_event.get('backend', '?')}"
        return ComponentState(
            connected=connected, status=line, backend=str(status_event.get("backend", "")),
            model=str(status_event.get("model", "")), progress=progress,
            frame_id=changes.get("frame_id", state.frame_id), job_id=changes.get("job_id", state.job_id),
            last_error=changes.get("last_error", state.last_error),
            depth_check=changes.get("depth_check", state.depth_check),
            live_on=bool(live.get("on")), live_rate=float(live.get("fps") or 0.0),
            live_frames=int(live.get("frames") or 0), live_idle=bool(live.get("idle")),
        )

    def close(self) -> None:
        self.disconnect()


class InputPacer:
    """When a TOP's image goes to the live session: at most ``fps`` times a second (0: every frame), and only when
    the TOP has cooked since the image last sent (its cook count changed)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget the last image sent: the next one goes as soon as it is due (a new live session)."""
        self._sent_at: float | None = None
        self._cooks: int | None = None

    def due(self, now: float, fps: float) -> bool:
        return self._sent_at is None or fps <= 0 or now - self._sent_at >= 1.0 / fps - PACE_SLACK

    def changed(self, cooks: int) -> bool:
        return cooks != self._cooks

    def sent(self, now: float, cooks: int) -> None:
        self._sent_at, self._cooks = now, cooks


def _live_values(values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` checked as generation or live parameters (the names given only); ParamError names every bad or
    unknown one."""
    checked = validate(values, GENERATION_PARAMS + LIVE_PARAMS)
    return {name: checked[name] for name in values}


def _upload(pixels: Any) -> tuple[dict[str, Any], memoryview]:
    """The ``image`` argument and data part of a live input, from a TOP's ``numpyArray()`` image."""
    image, data = encode_upload(from_top(pixels))
    return {"image": image}, data


def _mask_upload(pixels: Any, size: tuple[int, int] | None) -> tuple[dict[str, Any], memoryview]:
    """The ``mask`` argument and data part of a remix, from a TOP's ``numpyArray()`` image."""
    mask, data = encode_mask(mask_from_top(pixels, size))
    return {"mask": mask}, data


def describe_live(live: Mapping[str, Any]) -> str:
    """The Status line's part for a status event's running ``live`` session."""
    return f"live {float(live.get('fps') or 0.0):.1f} fps" + (" (idle)" if live.get("idle") else "")


def describe_depth_check(check: Any) -> str:
    """One line for a frame header's ``depth_check``: empty without one."""
    if not isinstance(check, dict):
        return ""
    if "error" in check:
        return f"depth check failed: {check['error']}"
    try:
        return f"AbsRel {float(check['abs_rel']):.3f} · δ1 {float(check['delta1']):.3f} ({check.get('model', '?')})"
    except (KeyError, TypeError, ValueError):
        return "depth check unreadable"
