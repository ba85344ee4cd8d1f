"""Logging that cannot be flooded: a hostile peer must not fill the disk or the console."""

from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Hashable


class RateLimitedLogger:
    """Logs at most ``per_window`` messages per ``window_s`` seconds, then one summary line."""

    def __init__(self, logger: logging.Logger, per_window: int = 5, window_s: float = 10.0) -> None:
        self.logger = logger
        self.per_window = per_window
        self.window_s = window_s
        self._window_start = 0.0
        self._count = 0
        self._suppressed = 0
        self._lock = threading.Lock()

    def warning(self, message: str, *args: object) -> None:
        with self._lock:
            now = time.monotonic()
            if now - self._window_start >= self.window_s:
                if self._suppressed:
                    self.logger.warning("... %d similar messages suppressed", self._suppressed)
                self._window_start, self._count, self._suppressed = now, 0, 0
            self._count += 1
            if self._count > self.per_window:
                self._suppressed += 1
                return
        self.logger.warning(message, *args)


class PerSenderLimit:
    """A token bucket per sender: ``rate`` events a second, bursts of ``burst``; the ``senders`` most
    recently seen are remembered (a forgotten one starts with a full bucket). One thread only."""

    def __init__(self, rate: float, burst: int, senders: int = 1024) -> None:
        self.rate, self.burst, self.senders = rate, burst, senders
        self._buckets: collections.OrderedDict[Hashable, tuple[float, float]] = collections.OrderedDict()

    def allow(self, sender: Hashable) -> bool:
        now = time.monotonic()
        tokens, last = self._buckets.pop(sender, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - last) * self.rate)
        allowed = tokens >= 1.0
        self._buckets[sender] = (tokens - 1.0 if allowed else tokens, now)
        while len(self._buckets) > self.senders:
            self._buckets.popitem(last=False)
        return allowed
