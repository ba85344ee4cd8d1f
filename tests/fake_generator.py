"""A stand-in for the generator's command socket: a ZeroMQ ROUTER that records each request and answers it.

For commands whose real handlers are not tested here (or not written yet): the tests see exactly what a client sent,
on the wire, and choose each answer (a result or an error). ``hold()`` keeps every answer back until ``release()``,
to make a client wait as it would for a busy generator.
"""

from __future__ import annotations

import threading
from typing import Any

import zmq

from td_bridge import protocol as wire


class FakeGenerator:
    """A ROUTER on a free loopback port; ``requests`` holds (cmd, args, data part or None) in arrival order."""

    def __init__(self) -> None:
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.ROUTER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.bind("tcp://127.0.0.1:*")
        self.address = self._sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.requests: list[tuple[str, dict[str, Any], bytes | None]] = []
        self.answers: dict[str, Any] = {}  # cmd → result dict, or (code, message) for an error; default {}
        self._open = threading.Event()
        self._open.set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="fake-generator", daemon=True)
        self._thread.start()

    def commands(self, cmd: str) -> list[tuple[dict[str, Any], bytes | None]]:
        """(args, data) of every request of ``cmd`` so far."""
        return [(args, data) for name, args, data in list(self.requests) if name == cmd]

    def hold(self) -> None:
        self._open.clear()

    def release(self) -> None:
        self._open.set()

    def close(self) -> None:
        self._stop.set()
        self._open.set()
        self._thread.join(5)
        self._sock.close()
        self._ctx.term()

    def _serve(self) -> None:
        while not self._stop.is_set():
            if not self._sock.poll(20):
                continue
            identity, body, *data = self._sock.recv_multipart()
            request = wire.decode_request(body)
            self.requests.append((request["cmd"], request["args"], data[0] if data else None))
            self._open.wait()
            answer = self.answers.get(request["cmd"], {})
            reply = (wire.encode_error(request["id"], *answer) if isinstance(answer, tuple)
                     else wire.encode_reply(request["id"], answer))
            self._sock.send_multipart([identity, reply])
