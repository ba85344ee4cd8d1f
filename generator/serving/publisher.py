"""Publishing that never loses the newest frame.

A plain PUB drops a message when a subscriber's queue is full, which in a burst can be the
*last* frame, leaving clients on an old picture. Here an XPUB with ``XPUB_NODROP`` refuses
instead; the frame waits in a one-slot buffer (a newer frame replaces it) and is retried
until it goes out. A subscriber that has not read for ``stall_timeout`` seconds no longer
holds the others back: the pending frame is then sent lossily, skipping only that peer.
Events are small and repeated, so they are simply skipped when a queue is full.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import zmq

from td_bridge import protocol as wire

from .ratelimit import RateLimitedLogger

log = logging.getLogger("depthfusion.publisher")


class FramePublisher:
    """Owns the XPUB socket; call :meth:`flush` whenever :attr:`pending` is true."""

    def __init__(self, ctx: zmq.Context, address: str, *, stall_timeout: float = 2.0, hwm: int = 4) -> None:
        self.stall_timeout = stall_timeout
        self.socket = ctx.socket(zmq.XPUB)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.SNDHWM, hwm)
        self.socket.setsockopt(zmq.XPUB_NODROP, 1)
        try:
            self.socket.bind(address)
        except zmq.ZMQError:
            self.socket.close()
            raise
        self.endpoint = self.socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self.superseded = 0  # frames replaced in the slot before any subscriber could take them
        self._pending: list[Any] | None = None
        self._pending_since = 0.0
        self._stall_log = RateLimitedLogger(log, per_window=1, window_s=30.0)

    @property
    def pending(self) -> bool:
        return self._pending is not None

    def publish_frame(self, parts: list[Any]) -> None:
        """Send [header, rgb, depth] now, or keep it (replacing an older one) for :meth:`flush`."""
        if self._pending is not None:
            self.superseded += 1
        else:
            self._pending_since = time.monotonic()
        self._pending = [wire.TOPIC_FRAME, *parts]
        self.flush()

    def flush(self) -> None:
        if self._pending is None:
            return
        try:
            self.socket.send_multipart(self._pending, zmq.NOBLOCK, copy=False)
        except zmq.Again:
            if time.monotonic() - self._pending_since < self.stall_timeout:
                return
            self._stall_log.warning("a subscriber has not read for %.1f s; it misses frames until it reads again",
                                    self.stall_timeout)
            self.socket.setsockopt(zmq.XPUB_NODROP, 0)
            try:
                self.socket.send_multipart(self._pending, zmq.NOBLOCK, copy=False)
            finally:
                self.socket.setsockopt(zmq.XPUB_NODROP, 1)
        self._pending = None

    def publish_event(self, topic: bytes, payload: dict[str, Any]) -> None:
        try:
            self.socket.send_multipart(wire.encode_event(topic, payload), zmq.NOBLOCK)
        except zmq.Again:
            pass  # status repeats every second; progress is superseded by the next step

    def drain_subscriptions(self) -> None:
        """Read (and ignore) subscribe/unsubscribe notices so they do not pile up."""
        while True:
            try:
                self.socket.recv(zmq.NOBLOCK)
            except zmq.Again:
                return

    def close(self) -> None:
        self.socket.close(linger=0)
