"""The generator server: commands on a ROUTER, frames and events on an XPUB, one worker per device.

Only the command loop's thread touches the ROUTER and publisher sockets. Each worker (generator.serving.workers)
runs its own copy of the model on its device, takes jobs from the one queue and hands progress and results back over
its own inproc PUSH socket to the loop's PULL, so a frame is published the moment it is ready. The first worker also
makes the live session's frames: between jobs when it is the only one serving, instead of jobs when others are.
The upscaler and the estimator: each worker loads its own copy on its device at its first use (workers.WorkerModels).
"""

from __future__ import annotations

import collections
import json
import logging
import secrets
import threading
import time
from typing import Any, Callable, Sequence

import zmq

from td_bridge import protocol as wire
from td_bridge.addresses import check_endpoint
from td_bridge.params import GENERATION_PARAMS, Param, ParamError, find_param, resolve_seed, validate_generation

from .. import __version__
from ..fast import TAKE_QUALITY
from ..backends.base import Backend, Cancelled
from ..frames import make_frame
from ..library import FrameLibrary, LibraryError
from .live import TAKE_KEY, LiveSession
from .jobs import CANCELLED, DONE, FAILED, Job, JobQueue, QueueClosed, QueueFull
from .osc import OscBridge, OscConfig
from .publisher import FramePublisher
from .ratelimit import RateLimitedLogger
from .estimate_jobs import UPLOAD_KEY, EstimateJobs
from .remix_jobs import SOURCE_KEY as REMIX_KEY, SOURCE_FRAME_KEYS as REMIX_SOURCE_KEYS, RemixJobs
from .upscale_jobs import FRAME_KEYS, SOURCE_KEY, UpscaleJobs, split_upscale
from .workers import LOST_DEVICE, OUT_OF_MEMORY, Worker, device_fault, device_name, release_memory

log = logging.getLogger("depthfusion.server")

# ZeroMQ drops a peer that sends a bigger message part: the largest image an estimate request uploads, plus room.
# A request's JSON part has its own, smaller limit (td_bridge.protocol.MAX_REQUEST_BYTES: an error reply).
MAX_MESSAGE_BYTES = wire.MAX_UPLOAD_PIXELS * 3 + 1024 * 1024
UPLOAD_COMMANDS = ("estimate", "live_input", "remix")  # the commands whose request may carry a second, data part
MAX_ERROR_CHARS = 2000  # a job's error text, so that job summaries stay small
STATUS_JOBS = 16  # waiting jobs listed in a status event (``queued`` counts them all)
STATUS_PROMPT_CHARS = 100  # prompts in a status event are cut to this; ``job`` gives them whole
LIVE_ON = Param("on", bool, None, "The live command's switch: true starts the session, false stops it.")
NO_UPSCALER = "this generator runs without an upscaler (serve --upscaler Intel/ldm3d-sr)"
NO_LIBRARY = "this generator runs without a frame library (serve without --no-library)"
LIVE_HISTORY = 16  # live frames kept in memory for get_frame, keep and take, apart from the other frames
CUE = find_param("cue", GENERATION_PARAMS)


class NotFound(Exception):
    """A frame, cue or job a request names does not exist."""


class GeneratorServer:
    """Serve a backend, or a list of copies of one model on several devices (one worker each; ``devices``: their
    names, by default what each backend says). ``bind()``, then ``serve(stop)`` on the thread that owns the
    sockets."""

    def __init__(
        self,
        backend: Backend | Sequence[Backend],
        *,
        frames_address: str,
        commands_address: str,
        allow_lan: bool = False,
        history: int = 32,
        max_waiting: int = 16,
        status_interval: float = 1.0,
        stall_timeout: float = 2.0,
        shutdown_grace: float = 60.0,
        osc: OscConfig | None = None,
        library: FrameLibrary | None = None,
        upscaler: Callable[[str], Any] | None = None,
        estimator: Callable[[str], Any] | None = None,
        depth_check: bool = False,
        defaults: dict[str, Any] | None = None,
        live: bool | dict[str, Any] = False,
        take_defaults: dict[str, Any] | None = None,
        devices: Sequence[str] | None = None,
    ) -> None:
        backends = list(backend) if isinstance(backend, (list, tuple)) else [backend]
        if not backends:
            raise ValueError("the server needs at least one backend")
        if devices is not None and len(devices) != len(backends):
            raise ValueError(f"{len(devices)} device names for {len(backends)} backends")
        names = list(devices) if devices is not None else [device_name(b) for b in backends]
        self.workers = [Worker(i, name, b) for i, (name, b) in enumerate(zip(names, backends))]
        self.backend = backends[0]  # its name, model and checks stand for every copy
        # generation parameters a request leaves out take these (serve's flags, --fast), then the schema's
        self.defaults = dict(validate_generation(defaults or {}))
        # a take's full quality: the schema's steps, guidance and sampler under serve's own flags, not a --fast
        # preset's (take_defaults also names which LoRAs a take uses: serve leaves the preset's out)
        full = validate_generation(take_defaults or {})
        self.take_defaults = {**{k: full[k] for k in TAKE_QUALITY}, **(take_defaults or {})}
        self.frames_address = check_endpoint(frames_address, bind=True, allow_lan=allow_lan)
        self.commands_address = check_endpoint(commands_address, bind=True, allow_lan=allow_lan)
        if history < 1:
            raise ValueError("history must keep at least one frame")
        self.server_id = secrets.token_hex(4)
        self.jobs = JobQueue(max_waiting=max_waiting)
        # the live session (generator.serving.live): its frames are made between jobs; live=True or a dict of
        # generation and live parameters starts it at once (serve --live)
        self.live = LiveSession(self.backend, self.defaults)  # on the first worker
        self._live_epoch = 0  # counts stops: a frame made before the last stop is never published
        if live:
            self.live.start(live if isinstance(live, dict) else {})
        self.status_interval = status_interval
        self.stall_timeout = stall_timeout
        self.shutdown_grace = shutdown_grace
        self.osc_config = osc
        self.library = library
        self.upscales = UpscaleJobs(upscaler) if upscaler is not None else None  # upscaler: loads it, on first use
        self.estimates = EstimateJobs(estimator) if estimator is not None else None  # likewise the estimator
        self.remixes = RemixJobs()  # remix jobs run on the workers' own backends
        if depth_check and self.estimates is None:
            raise ValueError("the depth check needs an estimator")
        self.depth_check = depth_check
        self._last_depth_check: dict[str, Any] | None = None
        self._last_live_error: str | None = None
        self._upload: Any = None  # the data part of the request being handled
        self.osc: OscBridge | None = None
        self._history: collections.OrderedDict[str, list[Any]] = collections.OrderedDict()
        self._live_history: collections.OrderedDict[str, list[Any]] = collections.OrderedDict()  # never evicts those
        self._history_size = history
        self._last_published: str | None = None  # what "latest" means: the frame on screen now
        self._seq = 0
        self._started = time.time()
        self._bad_input_log = RateLimitedLogger(log, per_window=5, window_s=10.0)
        self._ctx = zmq.Context()
        self._worker_address = f"inproc://depthfusion-worker-{self.server_id}"
        self.inproc_commands = f"inproc://depthfusion-commands-{self.server_id}"  # in-process clients (OSC)
        self.inproc_frames = f"inproc://depthfusion-frames-{self.server_id}"
        self._router: zmq.Socket | None = None
        self._publisher: FramePublisher | None = None
        self._pull: zmq.Socket | None = None
        self._stop = threading.Event()
        self._renders: Any = None  # generator.render.service.RenderService, started by the first render command
        self._caller: tuple[bytes, list[bytes]] = (b"", [])  # who sent the request being handled
        self._keeping: set[str] = set()  # frames a keep is saving now (command loop only)
        self.frames_endpoint = ""
        self.commands_endpoint = ""

    # ------------------------------------------------------------ lifecycle

    def bind(self) -> None:
        """Create and bind the sockets; endpoints with port * resolve to the real port."""
        router = self._ctx.socket(zmq.ROUTER)
        router.setsockopt(zmq.LINGER, 0)
        router.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
        router.setsockopt(zmq.SNDHWM, 64)
        pull = self._ctx.socket(zmq.PULL)
        pull.setsockopt(zmq.LINGER, 0)
        publisher: FramePublisher | None = None
        try:
            router.bind(self.commands_address)
            self.commands_endpoint = router.getsockopt_string(zmq.LAST_ENDPOINT)
            router.bind(self.inproc_commands)
            pull.bind(self._worker_address)
            publisher = FramePublisher(self._ctx, self.frames_address, stall_timeout=self.stall_timeout)
            publisher.socket.bind(self.inproc_frames)
            if self.osc_config is not None:
                self.osc = OscBridge(self._ctx, self.inproc_commands, self.inproc_frames, self.osc_config,
                                     self.defaults)
        except (zmq.ZMQError, OSError, ValueError) as exc:
            router.close()
            pull.close()
            if publisher is not None:
                publisher.close()
            if isinstance(exc, zmq.ZMQError):
                raise OSError(f"cannot bind {self.frames_address} / {self.commands_address}: {exc}") from exc
            raise
        self._router, self._pull, self._publisher = router, pull, publisher
        self.frames_endpoint = publisher.endpoint

    def serve(self, stop: threading.Event | None = None) -> None:
        """Run until ``stop`` is set (or :meth:`stop` is called); then close everything."""
        if self._router is None:
            self.bind()
        stop = stop or self._stop
        for worker in self.workers:
            suffix = f"-{worker.index}" if worker.index else ""  # the first is "depthfusion-worker", as ever
            worker.thread = threading.Thread(target=self._work, args=(worker,), daemon=True,
                                             name=f"depthfusion-worker{suffix}")
            worker.thread.start()
        if self.osc is not None:
            self.osc.start()
        if self.library is not None:  # recall works at once; the check of every entry follows
            threading.Thread(target=self.library.verify, name="depthfusion-library-check", daemon=True).start()
        poller = zmq.Poller()
        poller.register(self._router, zmq.POLLIN)
        poller.register(self._pull, zmq.POLLIN)
        poller.register(self._publisher.socket, zmq.POLLIN)
        next_status = 0.0
        try:
            while not (stop.is_set() or self._stop.is_set()):
                now = time.monotonic()
                if now >= next_status:
                    self._publish_status()
                    next_status = now + self.status_interval
                timeout_ms = 2 if self._publisher.pending else max(1, min(200, int((next_status - now) * 1000)))
                for sock, _ in poller.poll(timeout_ms):
                    if sock is self._pull:
                        self._drain_worker()
                    elif sock is self._router:
                        self._drain_commands()
                    else:
                        self._publisher.drain_subscriptions()
                self._publisher.flush()
        finally:
            self._shutdown()

    def stop(self) -> None:
        self._stop.set()

    def _shutdown(self) -> None:
        self._stop.set()
        self.jobs.cancel(None)
        if self.osc is not None:
            self.osc.stop()
        threads = [w.thread for w in self.workers if w.thread is not None and w.thread.is_alive()]
        if threads and self.jobs.snapshot()["running"]:
            log.info("waiting for the running steps to finish")
        deadline = time.monotonic() + self.shutdown_grace
        for thread in threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        worker_stopped = not any(thread.is_alive() for thread in threads)
        if self._renders is not None:
            worker_stopped = self._renders.close(self.shutdown_grace) and worker_stopped
        for sock in (self._router, self._pull):
            if sock is not None:
                sock.close(linger=0)
        if self._publisher is not None:
            self._publisher.close()
        if worker_stopped:
            self._ctx.term()
        else:  # terminating the context would block on the worker's socket until the backend returns
            log.warning("the backend did not stop within %.1f s; leaving it behind", self.shutdown_grace)

    # ------------------------------------------------------------ worker threads

    def _work(self, worker: Worker) -> None:
        push = self._ctx.socket(zmq.PUSH)
        push.setsockopt(zmq.LINGER, 0)
        push.connect(self._worker_address)
        live_here = worker.index == 0
        try:
            while not self._stop.is_set() and worker.serving:
                wait = self.live.wait_s() if live_here else None  # None: live is off or idle
                if live_here and self._live_only():  # the other workers take the jobs
                    if wait == 0.0:
                        self._run_live(worker, push)
                    else:
                        self.jobs.idle(0.2 if wait is None else min(0.2, wait))
                    continue
                job = self.jobs.take(timeout=0.2 if wait is None else min(0.2, wait))  # a queued job goes first
                if job is not None:
                    self._run_job(job, worker, push)
                elif wait is not None and self.live.wait_s() == 0.0:
                    self._run_live(worker, push)
        finally:
            push.close()

    def _live_only(self) -> bool:
        """Whether the first worker runs only the live session: it is on and another worker serves the jobs."""
        return self.live.on and any(w.serving for w in self.workers[1:])

    def _run_job(self, job: Job, worker: Worker, push: zmq.Socket) -> None:
        def progress(step: int, total: int) -> None:
            job.step, job.total = step, total
            event = {"job_id": job.id, "step": step, "total": total, "elapsed_s": time.time() - job.started_at}
            push.send_multipart([b"progress", json.dumps(event).encode()])

        worker.job = job
        push.send_multipart([b"changed"])  # clients see "generating" now, not at the next heartbeat
        try:
            message = self._job_result(job, worker, progress)
        except Cancelled:
            self.jobs.finish(job, CANCELLED)
            message = [b"changed"]
            log.info("job %s cancelled at step %d/%d", job.id, job.step, job.total)
        except Exception as exc:  # a backend failure must not take the server down
            self._job_failed(job, worker, exc)
            message = [b"changed"]
        worker.job = None  # before the loop hears of it: the status it then sends shows the worker free
        push.send_multipart(message, copy=False)  # the arrays are not copied

    def _make(self, job: Job, worker: Worker, progress: Callable[[int, int], None]) -> tuple[dict[str, Any], Any]:
        """(header, result) of a job, made on ``worker``."""
        cancelled = job.cancel_event.is_set
        if TAKE_KEY in job.params:
            return self.live.take(job.params, progress, cancelled, job.id, backend=worker.backend)
        if REMIX_KEY in job.params:
            return self.remixes.run(job.params, progress, cancelled, job.id, worker)
        if SOURCE_KEY in job.params:
            return self.upscales.run(job.params, progress, cancelled, job.id, worker)
        if UPLOAD_KEY in job.params:
            return self.estimates.run(job.params, progress, cancelled, job.id, worker)
        header, result = make_frame(worker.backend, job.params, progress, cancelled, job_id=job.id)
        if self.depth_check:
            header["depth_check"] = self._check_depth(job, result, worker)
        return header, result

    def _job_result(self, job: Job, worker: Worker, progress: Callable[[int, int], None]) -> list[Any]:
        """Make the job's frame, keep it in the library and return the ``result`` message for the command loop."""
        header, result = self._make(job, worker, progress)
        header["worker"] = worker.label()
        outcome: dict[str, Any] = {"saved": None, "error": None}  # the job shows it once the frame is out
        if self.library is not None:  # durable before anyone is told the frame exists
            try:
                self.library.save(header, result.rgb, result.depth)
                outcome["saved"] = True
            except LibraryError as exc:  # the show goes on: the frame is still published
                log.error("%s", exc)
                outcome.update(saved=False, error=f"not saved to the library: {exc}")
        parts = wire.encode_frame_parts(result.rgb, result.depth, header)
        return [b"result", job.id.encode(), json.dumps(outcome).encode(), *parts]

    def _job_failed(self, job: Job, worker: Worker, exc: Exception) -> None:
        """Fail the job with a clear error; a lost device also stops its worker (the others go on)."""
        log.exception("job %s failed on %s", job.id, worker.device)
        error = self._device_error(worker, exc)
        self.jobs.finish(job, FAILED, error=error[:MAX_ERROR_CHARS])

    def _device_error(self, worker: Worker, exc: Exception) -> str:
        """The error text of a failure on ``worker``; out of memory frees the cache, a lost device stops the
        worker (and, the last one gone, the queue)."""
        text = f"{type(exc).__name__}: {exc}"
        fault = device_fault(exc)
        if fault == OUT_OF_MEMORY:
            release_memory()
            return f"out of memory on {worker.device} (worker {worker.index} goes on): {text}"
        if fault != LOST_DEVICE:
            return text
        worker.error = text[:MAX_ERROR_CHARS]
        log.error("worker %d: device %s failed; it takes no more jobs", worker.index, worker.device)
        if not any(w.serving for w in self.workers):
            failed = self.jobs.close(f"every device failed (the last, {worker.device}: {worker.error})")
            log.error("no device is left; %d waiting jobs failed", len(failed))
        return f"device {worker.device} failed (worker {worker.index} stops): {text}"

    def _run_live(self, worker: Worker, push: zmq.Socket) -> None:
        """One live frame from the session's newest parameters, handed to the command loop (never to the library);
        a stop while it is made cancels it."""
        epoch = self._live_epoch
        try:
            made = self.live.next_frame(lambda step, total: None,
                                        lambda: self._stop.is_set() or not self.live.on or epoch != self._live_epoch)
        except Cancelled:
            return
        except Exception as exc:  # a bad frame must not stop the worker; the session goes on with the next change
            log.exception("live frame failed")
            self._last_live_error = self._device_error(worker, exc)[:MAX_ERROR_CHARS]
            if not worker.serving:
                push.send_multipart([b"changed"])
            return
        if made is not None:
            header, result = made
            header["worker"] = worker.label()
            parts = wire.encode_frame_parts(result.rgb, result.depth, header)
            push.send_multipart([b"live", str(epoch).encode(), *parts], copy=False)

    def _check_depth(self, job: Job, result: Any, worker: Worker) -> dict[str, Any]:
        """The live depth check of a generated frame; a failure is reported in it, never fails the frame."""
        try:
            check = self.estimates.depth_check(result, worker)
        except Exception as exc:  # the frame is fine without its check
            log.warning("job %s: depth check failed: %s", job.id, exc)
            check = {"error": f"{type(exc).__name__}: {exc}"[:MAX_ERROR_CHARS]}
        self._last_depth_check = {"job_id": job.id, **check}
        log.info("job %s depth check: %s", job.id, check)
        return check

    # ------------------------------------------------------------ command loop

    def _drain_worker(self) -> None:
        while True:
            try:
                parts = self._pull.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            kind = parts[0].bytes
            if kind == b"progress":
                self._publisher.publish_event(wire.TOPIC_PROGRESS, json.loads(parts[1].bytes))
            elif kind == b"result":
                self._publish_result(parts[1].bytes.decode(), json.loads(parts[2].bytes), parts[3:])
            elif kind == b"live":  # newest wins: the publisher keeps only the newest frame a slow client has not read
                if self.live.on and int(parts[1].bytes) == self._live_epoch:  # nothing published after a stop
                    self._publish(parts[2:], live=True)
            elif kind == b"rendered":  # a render command's reply, from the render thread
                self._send(parts[1].bytes, [b""] if parts[2].bytes else [], *parts[3:])
            elif kind == b"kept":  # a keep's reply, once its frame is saved
                frame_id = parts[1].bytes.decode()
                self._keeping.discard(frame_id)
                self._live_history.pop(frame_id, None)  # get_frame and recall now read the kept frame
                self._history.pop(frame_id, None)
                self._send(parts[2].bytes, [b""] if parts[3].bytes else [], *parts[4:])
            else:
                self._publish_status()

    def _publish_result(self, job_id: str, outcome: dict[str, Any], frame_parts: list[zmq.Frame]) -> None:
        header = self._publish(frame_parts)
        job = self.jobs.get(job_id)
        if job is not None:  # frame id, saved and state change together, on this thread
            self.jobs.finish(job, DONE, frame_id=header["frame_id"], error=outcome["error"], saved=outcome["saved"])
        log.info("frame %s published (seq %d, %s)", header["frame_id"], self._seq, job_id)
        upscale = self.upscales.chained(job_id) if self.upscales is not None else None
        if upscale is not None:
            self._queue_upscale(header["frame_id"], upscale)
        self._publish_status()

    def _queue_upscale(self, frame_id: str, upscale: dict[str, Any]) -> None:
        """The upscale a generate request asked for, of its frame just published."""
        frame = wire.decode_frame_parts([bytes(p) for p in self._history[frame_id]])
        try:
            job = self.jobs.submit(self.upscales.job_params(upscale, frame))
        except (QueueFull, QueueClosed) as exc:
            log.error("frame %s is not upscaled: %s", frame_id, exc)
            return
        log.info("job %s queued: upscale %s", job.id, frame_id)

    def _remember(self, frame_id: str, parts: list[Any], *, live: bool = False) -> None:
        """Keep a frame in memory for get_frame/recall; the least recently used goes first. Live frames have their
        own LIVE_HISTORY, so that a live session never pushes the other frames out."""
        history, size = (self._live_history, LIVE_HISTORY) if live else (self._history, self._history_size)
        history[frame_id] = parts
        history.move_to_end(frame_id)
        while len(history) > size:
            history.popitem(last=False)

    def _in_memory(self, frame_id: str) -> list[Any] | None:
        return self._history.get(frame_id) or self._live_history.get(frame_id)

    def _publish(self, frame_parts: list[Any], *, live: bool = False, **extra: Any) -> dict[str, Any]:
        """Stamp [header, rgb, depth] with the next seq and the send time, publish it and keep the
        stamped parts for get_frame; returns the header."""
        header = json.loads(bytes(frame_parts[0]))
        self._seq += 1
        header.update(extra, seq=self._seq, server_id=self.server_id, sent_at=time.time())
        parts = [wire.encode_header(header), *frame_parts[1:]]
        self._publisher.publish_frame(parts)
        self._last_published = header["frame_id"]
        self._remember(header["frame_id"], parts, live=live)
        return header

    def _publish_status(self) -> None:
        self._publisher.publish_event(wire.TOPIC_STATUS, self.status())

    def status(self) -> dict[str, Any]:
        snapshot = self.jobs.snapshot()
        waiting = [_brief(job) for job in snapshot["waiting"][:STATUS_JOBS]]
        return {
            "server_id": self.server_id,
            "version": __version__,
            "backend": self.backend.name,
            "model": self.backend.model,
            "state": "generating" if snapshot["running"] else "idle",
            "job": _brief(snapshot["running"]) if snapshot["running"] else None,
            "queued": len(snapshot["waiting"]),
            "waiting": waiting,
            "frames_published": self._seq,
            "frames_superseded": self._publisher.superseded if self._publisher else 0,
            "last_frame_id": self._last_published,
            "uptime_s": round(time.time() - self._started, 3),
            "frames_address": self.frames_endpoint,
            "commands_address": self.commands_endpoint,
            "library": None if self.library is None else {"root": str(self.library.root), "frames": len(self.library)},
            "depth_check": self._last_depth_check,
            "live": self._live_status(),
            "workers": [w.summary(live=w.index == 0 and self.live.on) for w in self.workers],
        }

    def _live_status(self) -> dict[str, Any]:
        summary = self.live.summary()
        return {k: summary[k] for k in ("on", "fps", "frames", "idle", "blend", "input", "live_fps",
                                        "transition")} | {
            "error": self._last_live_error}

    def _drain_commands(self) -> None:
        while True:
            try:
                parts = self._router.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            # DEALER peers send [body] or [body, data]; REQ peers put an empty delimiter first (a body is never
            # empty). The data part is an uploaded image (UPLOAD_COMMANDS).
            identity, rest = parts[0], parts[1:]
            envelope = [b""] if rest and rest[0] == b"" else []
            body = rest[len(envelope):]
            if len(body) not in (1, 2):
                self._bad_input_log.warning("dropped a request of %d parts (expected a JSON part and at most one data "
                                            "part)", len(rest))
                self._send(identity, envelope, wire.encode_error(None, "bad_request", "a request is one JSON part, "
                                                                 "and for an upload one data part after it"))
                continue
            self._caller = identity, envelope
            self._upload = body[1] if len(body) == 2 else None
            reply = self._handle(body[0])
            self._upload = None
            if reply:  # empty: the reply follows later (render)
                self._send(identity, envelope, *reply)

    def _send(self, identity: bytes, envelope: list[bytes], *parts: Any) -> None:
        try:
            self._router.send_multipart([identity, *envelope, *parts], zmq.NOBLOCK, copy=False)
        except zmq.ZMQError as exc:
            self._bad_input_log.warning("could not reply to a client: %s", exc)

    def _handle(self, body: bytes) -> list[Any]:
        """The reply parts for one request body; every failure becomes an error reply."""
        request_id = None
        try:
            request = wire.decode_request(body)
            request_id = request.get("id")
            handler = self._commands().get(request["cmd"])
            if handler is None:
                known = ", ".join(self._commands())
                message = f"unknown command {request['cmd']!r}; known: {known}"
                return [wire.encode_error(request_id, "unknown_command", message)]
            if self._upload is not None and request["cmd"] not in UPLOAD_COMMANDS:
                raise wire.ProtocolError(f"{request['cmd']} takes no data part (only {', '.join(UPLOAD_COMMANDS)})")
            return handler(request_id, request["args"])
        except wire.ProtocolError as exc:
            self._bad_input_log.warning("bad request: %s", exc)
            return [wire.encode_error(request_id or exc.request_id, "bad_request", str(exc))]
        except ParamError as exc:
            return [wire.encode_error(request_id, "bad_params", str(exc))]
        except QueueFull as exc:
            return [wire.encode_error(request_id, "queue_full", str(exc))]
        except QueueClosed as exc:
            return [wire.encode_error(request_id, "unavailable", str(exc))]
        except NotFound as exc:
            return [wire.encode_error(request_id, "not_found", str(exc))]
        except Exception as exc:  # never let one request stop the server
            log.exception("command failed")
            return [wire.encode_error(request_id, "internal", f"{type(exc).__name__}: {exc}")]

    def _commands(self) -> dict[str, Callable[[Any, dict[str, Any]], list[Any]]]:
        return {
            "ping": self._cmd_ping,
            "status": self._cmd_status,
            "generate": self._cmd_generate,
            "cancel": self._cmd_cancel,
            "job": self._cmd_job,
            "get_frame": self._cmd_get_frame,
            "recall": self._cmd_recall,
            "library": self._cmd_library,
            "delete": self._cmd_delete,
            "render": self._cmd_render,
            "upscale": self._cmd_upscale,
            "estimate": self._cmd_estimate,
            "live": self._cmd_live,
            "live_input": self._cmd_live_input,
            "keep": self._cmd_keep,
            "take": self._cmd_take,
            "remix": self._cmd_remix,
        }

    @staticmethod
    def _no_args(args: dict[str, Any], cmd: str) -> None:
        if args:
            raise wire.ProtocolError(f"{cmd} takes no arguments, got {', '.join(map(str, args))}")

    def _cmd_ping(self, request_id: Any, args: dict[str, Any]) -> list[Any]:
        self._no_args(args, "ping")
        return [wire.encode_reply(request_id, {"pong": True, "server_id": self.server_id, "time": time.time()})]

    def _cmd_status(self, request_id: Any, args: dict[str, Any]) -> list[Any]:
        self._no_args(args, "status")
        return [wire.encode_reply(request_id, self.status())]

    def _cmd_generate(self, request_id: Any, args: dict[str, Any]) -> list[Any]:
        upscale, args = split_upscale(args)  # upscale: true queues an upscale of the frame when it is out
        if upscale is not None and self.upscales is None:
            return [wire.encode_error(request_id, "unavailable", NO_UPSCALER)]
        params = resolve_seed(validate_generation({**self.defaults, **args}))
        check = getattr(self.backend, "check", None)  # what this backend cannot make is refused before queueing
        if check is not None:
            check(params)
        job = self.jobs.submit(params)
        if upscale is not None:
            self.upscales.chain(job.id, upscale)
        log.info("job %s queued: %r seed %d", job.id, params["prompt"][:80], params["seed"])
        self._publish_status()
        extra = {"upscale": upscale} if upscale is not None else {}
        return [wire.encode_reply(request_id, {"job_id": job.id, "params": params, **extra})]

    def _cmd_live(self, request_id: Any, args: dict[str, Any]) -> list[Any]:
        """Start (``on: true``), stop (``on: false``) or steer the live session: any generation and live parameters
        apply to the next live frame (validated first: a bad value changes nothing and the session goes on)."""
        rest = {k: v for k, v in args.items() if k != "on"}
        on = LIVE_ON.coerce(args["on"]) if "on" in args else None
        if on is False:
            self.live.validate(rest)  # a stop with bad values is refused whole, like any request
            self.live.update(rest)
            self.live.stop()
            self._live_epoch += 1
        elif on:
            self.live.start(rest)
        else:
            self.live.update(rest)
        if on:
            self._last_live_error = None
        self.jobs.wake()  # the worker waits for jobs: a change is made at once
        summary = self.live.summary()
        log.info("live %s: %r seed %d", "on" if summary["on"] else "off", summary["params"]["prompt"][:80],
                 summary["params"]["seed"])
        self._publish_status()
        return [wire.encode_reply(request_id, summary)]

    def _cmd_live_input(self, request_id: Any, args: dict[str, Any]) -> list[Any]:
        """The live session's newest input frame (args 'image' + any live or generation parameters, data part: the
        RGB bytes), or ``clear: true`` (no data) to go back to text only; newest wins, one frame is kept."""
        clear = args.get("clear", False)
        if clear is not True and clear is not False:
            raise wire.ProtocolError("'clear' must be true or false")
        rest = {k: v for k, v in args.items() if k not in ("image", "clear")}
        if clear:
            if "image" in args or self._upload is not None:
                raise wire.ProtocolError("live_input with clear takes no image")
            rgb = None
        else:
            rgb = wire.decode_upload(args.get("image"), self._upload)  # sizes checked before the buffer is read
        reply = self.live.set_input(rgb, rest)
        if reply["accepted"]:
            self.jobs.wake()
        return [wire.encode_reply(request_id, reply)]

    def _cmd_keep(self, request_id: Any, args: dict[str, Any]) -> list[Any]:
        """Store a published frame (a live frame on screen, by default the newest frame) in the library exactly as
        it was shown: the same pixels and frame id, kind "frame", with the cue given."""
        if self.library is None:
            return [wire.encode_error(request_id, "unavailable", NO_LIBRARY)]
        unknown = set(args) - {"frame_id", "cue"}
        if unknown:
            raise wire.ProtocolError(f"keep takes 'frame_id' and 'cue', got {', '.join(sorted(map(str, unknown)))}")
        cue = CUE.coerce(args["cue"]) if "cue" in args else None
        frame_id, parts = self._find_frame({"frame_id": args.get("frame_id", "latest")}, "keep")
        frame = wire.decode_frame_parts([bytes(p) for p in parts])
        if self.library.get(frame_id) is not None or frame_id in self._keeping:
            return [wire.encode_reply(request_id, {"frame_id": frame_id, "cue": frame.meta.get("cue"),
                                                   "saved": False})]  # kept already
        header = {k: v for k, v in frame.meta.items() if k not in ("server_id", "sent_at", "recalled_at")}
        header.update(kind="frame", seq=0, kept_at=time.time())  # saved as a job's frame is: before publishing
        if cue is not None:
            header["cue"] = cue
            header["params"] = {**header.get("params", {}), "cue": cue}
        self._keeping.add(frame_id)
        threading.Thread(target=self._keep, args=(request_id, header, frame, self._caller), name="depthfusion-keep",
                         daemon=True).start()
        return []  # the reply follows the save (encoding the PNGs would hold up the frame path)

    def _keep(self, request_id: Any, header: dict[str, Any], frame: wire.Frame,
              caller: tuple[bytes, list[bytes]]) -> None:
        """On a thread of its own: save a kept frame, then hand the reply to the command loop (b"kept")."""
        frame_id = header["frame_id"]
        try:
            self.library.save(header, frame.rgb, frame.depth)
            reply = wire.encode_reply(request_id, {"frame_id": frame_id, "cue": header.get("cue"), "saved": True})
            log.info("frame %s kept%s", frame_id, f" as cue {header['cue']!r}" if header.get("cue") else "")
        except LibraryError as exc:
            reply = wire.encode_error(request_id, "internal", f"not saved to the library: {exc}")
        identity, envelope = caller
        push = self._ctx.socket(zmq.PUSH)
        push.setsockopt(zmq.LINGER, 1000)
        push.connect(self._worker_address)
        push.send_multipart([b"kept", frame_id.encode(), identity, b"1" if envelope else b"", reply])
        push.close()

    def _cmd_take(self, request_id: Any, args: dict[str, Any]) -> list[Any]:
        """Queue a full-quality render of a live frame (frame_id, by default the newest live frame): its prompt,
        seed, transition state and input image with take_defaults' steps, guidance and sampler, the model's full
        decoder and any generation parameters given; ``upscale`` as generate. An ordinary job: saved and
        published when ready."""
        upscale, args = split_upscale(args)
        if upscale is not None and self.upscales is None:
            return [wire.encode_error(request_id, "unavailable", NO_UPSCALER)]
        frame_id = args.get("frame_id", "latest")
        if not wire.is_valid_id(frame_id):
            raise wire.ProtocolError(f"'frame_id' must be an id or 'latest', got {frame_id!r}")
        if frame_id == "latest":
            frame_id = self.live.latest()
            if frame_id is None:
                raise NotFound("no live frame has been made yet")
        overrides = {**self.take_defaults, **{k: v for k, v in args.items() if k != "frame_id"}}
        try:
            params = self.live.take_params(frame_id, overrides)
        except KeyError:
            raise NotFound(f"frame {frame_id} is not one of the newest {LIVE_HISTORY} live frames") from None
        job = self.jobs.submit(params)
        if upscale is not None:
            self.upscales.chain(job.id, upscale)
        log.info("job %s queued: take of live frame %s", job.id, frame_id)
        self._publish_status()
        extra = {"upscale": upscale} if upscale is not None else {}
        return [wire.encode_reply(request_id, {"job_id": job.id, "params": params, **extra})]

    def _cmd_cancel(self, request_id: Any, args: dict[str, Any]) -> list[Any]:
        job_id = _job_id_arg(args, required=False)
        cancelled = self.jobs.cancel(job_id)
        if job_id is not None and not cancelled:
            job = self.jobs.get(job_id)
            state = job.state if job else "unknown"
            return [wire.encode_error(request_id, "not_found", f"job {job_id} is not waiting or running ({state})")]
        self._publish_status()
        return [wire.encode_reply(request_id, {"cancelled": cancelled})]

    def _cmd_job(self, request_id: Any, args: dict[str, Any]) -> list[Any]:
        job_id = _job_id_arg(args, required=True)
        job = self.jobs.get(job_id)
        if job is None:
            return [wire.encode_error(request_id, "not_found", f"no job {job_id} (recent jobs only)")]
        return [wire.encode_reply(request_id, job.summary())]

    def _find_frame(self, args: dict[str, Any], cmd: str) -> tuple[str | None, list[Any] | None]:
        """(frame id, [header, rgb, depth]) for get_frame/recall: memory first, then the library.

        ``frame_id`` may be "latest"; ``cue`` names the newest frame generated with that cue.
        """
        unknown = set(args) - {"frame_id", "cue", "name"}
        if unknown or len(args) > 1:
            raise wire.ProtocolError(f"{cmd} takes one of 'frame_id', 'cue' or 'name', got {', '.join(sorted(args))}")
        if "name" in args:  # a frame id if one is kept under that id, else a cue name (OSC's /recall)
            name = args["name"]
            args = {"frame_id": name} if self._is_kept(name) else {"cue": name}
        if "cue" in args:
            cue = args["cue"]
            if not isinstance(cue, str) or not 0 < len(cue) <= 100:
                raise wire.ProtocolError("'cue' must be a name of 1-100 characters")
            entry = self.library.latest_for_cue(cue) if self.library is not None else None
            if entry is None:
                raise NotFound(f"no frame with cue {cue!r}")
            frame_id = entry.frame_id
        else:
            frame_id = args.get("frame_id", "latest")
            if not wire.is_valid_id(frame_id):
                raise wire.ProtocolError(f"'frame_id' must be an id or 'latest', got {frame_id!r}")
            if frame_id == "latest":
                frame_id = self._latest_id()
        if self._in_memory(frame_id) is not None:
            return frame_id, self._in_memory(frame_id)
        if self.library is None or self.library.get(frame_id) is None:
            raise NotFound(f"frame {frame_id} is neither in memory nor in the library")
        try:
            header, rgb, depth = self.library.load(frame_id)
        except LibraryError as exc:
            raise NotFound(str(exc)) from None
        parts = wire.encode_frame_parts(rgb, depth, header)
        self._remember(frame_id, parts)  # a cue recalled once is recalled again from memory
        return frame_id, parts

    def _is_kept(self, name: Any) -> bool:
        """Whether a frame with this id is in memory or in the library."""
        if not wire.is_valid_id(name):
            return False
        return self._in_memory(name) is not None or (self.library is not None and self.library.get(name) is not None)

    def _latest_id(self) -> str:
        """What "latest" means: the frame this run published last; before it has published any
        (just after a restart), the newest frame in the library."""
        if self._last_published is not None:
            return self._last_published
        newest = self.library.find("", 1) if self.library is not None else []
        if not newest:
            empty = " and the library is empty" if self.library is not None else ""
            raise NotFound(f"no frame has been published yet{empty}")
        return newest[0].frame_id

    def _cmd_get_frame(self, request_id: Any, args: dict[str, Any]) -> list[Any]:
        frame_id, parts = self._find_frame(args, "get_frame")
        header = json.loads(bytes(parts[0]))
        if header.get("server_id") != self.server_id:  # read from the library, not published by this run
            header.update(seq=0, server_id=self.server_id, sent_at=time.time())
            parts = [wire.encode_header(header), *parts[1:]]
        return [wire.encode_reply(request_id, {"frame_id": frame_id}), *parts]

    def _cmd_recall(self, request_id: Any, args: dict[str, Any]) -> list[Any]:
        """Publish a kept frame again through the frame path, without the model."""
        frame_id, parts = self._find_frame(args, "recall")
        header = self._publish(parts, recalled_at=time.time())
        log.info("frame %s recalled (seq %d)", frame_id, header["seq"])
        return [wire.encode_reply(request_id, {"frame_id": frame_id, "seq": header["seq"]})]

    def _cmd_library(self, request_id: Any, args: dict[str, Any]) -> list[Any]:
        unknown = set(args) - {"search", "limit"}
        if unknown:
            raise wire.ProtocolError(f"library takes 'search' and 'limit', got {', '.join(sorted(unknown))}")
        search, limit = args.get("search", ""), args.get("limit", 100)
        if not isinstance(search, str) or len(search) > 2000:
            raise wire.ProtocolError("'search' must be text of at most 2000 characters")
        if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= 10000:
            raise wire.ProtocolError("'limit' must be an integer in [1, 10000]")
        if self.library is None:
            raise NotFound("this generator runs without a frame library (--no-library)")
        frames, room = [], wire.MAX_REPLY_BYTES - 512  # the reply's other fields fit in what is left
        for entry in self.library.find(search, limit):
            summary = entry.summary()
            room -= len(wire.encode_json(summary)) + 1
            if room < 0:
                break
            frames.append(summary)
        result = {"frames": frames, "total": len(self.library), "truncated": room < 0}
        return [wire.encode_reply(request_id, result)]

    def _cmd_delete(self, request_id: Any, args: dict[str, Any]) -> list[Any]:
        if set(args) != {"frame_id"} or not wire.is_valid_id(args["frame_id"]):
            raise wire.ProtocolError("delete takes a valid 'frame_id'")
        if self.library is None:
            raise NotFound("this generator runs without a frame library (--no-library)")
        try:
            self.library.delete(args["frame_id"])
        except LibraryError as exc:
            raise NotFound(str(exc)) from None
        self._history.pop(args["frame_id"], None)
        if self._last_published == args["frame_id"]:
            self._last_published = None
        return [wire.encode_reply(request_id, {"deleted": args["frame_id"]})]


    def _cmd_upscale(self, request_id: Any, args: dict[str, Any]) -> list[Any]:
        """Queue an upscale of a kept frame (frame_id, cue or name) with the upscale parameters; the upscaled frame
        is published and kept as a new frame naming its source (source_frame_id)."""
        if self.upscales is None:
            return [wire.encode_error(request_id, "unavailable", NO_UPSCALER)]
        frame_id, parts = self._find_frame({k: v for k, v in args.items() if k in FRAME_KEYS}, "upscale")
        frame = wire.decode_frame_parts([bytes(p) for p in parts])
        job = self.jobs.submit(self.upscales.job_params({k: v for k, v in args.items() if k not in FRAME_KEYS},
                                                        frame))
        log.info("job %s queued: upscale %s", job.id, frame_id)
        self._publish_status()
        return [wire.encode_reply(request_id, {"job_id": job.id, "params": job.params})]

    def _cmd_remix(self, request_id: Any, args: dict[str, Any]) -> list[Any]:
        """Queue a remix of a kept frame (frame_id, or name: a frame id or cue; by default the newest): the region
        the remix_* parameters give, or the mask image uploaded (args 'mask', data part: gray8 bytes of the frame's
        size), regenerated with the generation parameters given (prompt, seed, steps, cue: the new frame's), the
        rest kept. The new frame is published and kept naming its source (source_frame_id)."""
        mask = None
        if "mask" in args or self._upload is not None:  # sizes checked before the buffer is read
            mask = wire.decode_upload(args.get("mask"), self._upload, wire.MASK_FORMAT, "mask")
        frame_id, parts = self._find_frame({k: v for k, v in args.items() if k in REMIX_SOURCE_KEYS}, "remix")
        frame = wire.decode_frame_parts([bytes(p) for p in parts])
        given = {k: v for k, v in args.items() if k not in (*REMIX_SOURCE_KEYS, "mask")}
        params = self.remixes.job_params(given, frame, self.backend, mask)
        job = self.jobs.submit(params)
        log.info("job %s queued: remix of %s: %r seed %d", job.id, frame_id, params["prompt"][:80], params["seed"])
        self._publish_status()
        reply = {k: v for k, v in job.params.items() if k != REMIX_KEY}
        return [wire.encode_reply(request_id, {"job_id": job.id, "params": reply})]

    def _cmd_estimate(self, request_id: Any, args: dict[str, Any]) -> list[Any]:
        """Queue depth estimation of the uploaded image (args 'image' + the estimation parameters, data part: the
        RGB bytes); the estimated frame is published and kept like a generated one."""
        if self.estimates is None:
            return [wire.encode_error(request_id, "unavailable", "this generator runs without a depth estimator "
                                      "(serve --estimator MODEL)")]
        rgb = wire.decode_upload(args.get("image"), self._upload)  # sizes checked before the buffer is read
        from ..estimators.inputs import check_size

        try:
            check_size(rgb.shape[1], rgb.shape[0], "the uploaded image")
        except ValueError as exc:
            raise wire.ProtocolError(str(exc)) from None
        waiting = {job.params[UPLOAD_KEY] for job in self.jobs.unfinished() if UPLOAD_KEY in job.params}
        params = self.estimates.job_params({k: v for k, v in args.items() if k != "image"}, rgb, waiting)
        job = self.jobs.submit(params)
        log.info("job %s queued: depth of a %dx%d upload", job.id, rgb.shape[1], rgb.shape[0])
        self._publish_status()
        return [wire.encode_reply(request_id, {"job_id": job.id, "params": job.params})]

    def _cmd_render(self, request_id: Any, args: dict[str, Any]) -> list[Any]:
        """Draw a kept frame with the TouchDesigner component's shaders (generator.render) on the render thread;
        the reply, JSON then a PNG, is sent when it is done."""
        from ..render.service import FRAME_KEYS, RenderQueueFull, RenderService, render_request

        frame_id, parts = self._find_frame({k: v for k, v in args.items() if k in FRAME_KEYS}, "render")
        frame = wire.decode_frame_parts([bytes(p) for p in parts])
        request = render_request(request_id, frame_id, frame, {k: v for k, v in args.items() if k not in FRAME_KEYS})
        if self._renders is None:
            self._renders = RenderService(self._ctx, self._worker_address)
        try:
            self._renders.submit(self._caller, request)
        except RenderQueueFull as exc:
            return [wire.encode_error(request_id, "queue_full", str(exc))]
        return []


def _brief(job: dict[str, Any]) -> dict[str, Any]:
    """A job summary for status events: the prompt cut to STATUS_PROMPT_CHARS characters."""
    prompt = job.get("prompt") or ""
    return job | {"prompt": prompt[:STATUS_PROMPT_CHARS - 1] + "…" if len(prompt) > STATUS_PROMPT_CHARS else prompt}


def _job_id_arg(args: dict[str, Any], *, required: bool) -> str | None:
    unknown = set(args) - {"job_id"}
    if unknown:
        raise wire.ProtocolError(f"unexpected arguments: {', '.join(sorted(unknown))}")
    job_id = args.get("job_id")
    if job_id is None and not required:
        return None
    if not wire.is_valid_id(job_id):
        raise wire.ProtocolError(f"'job_id' must be a job id, got {job_id!r}")
    return job_id
