import contextlib
import dataclasses
import json
import threading
import time

import numpy as np
import pytest
import zmq

from conftest import SMALL, wait_for
from generator.backends import DemoBackend
from generator.backends.demo import scene_for
from generator.library import FrameLibrary
from generator.serving.server import MAX_MESSAGE_BYTES
from td_bridge import protocol as wire
from td_bridge.params import GENERATION_PARAMS
from td_bridge.receiver import CommandClient, CommandError, FrameReceiver


def wait_job(client, job_id, states=("done", "cancelled", "failed")):
    return wait_for(lambda: (j := client.job(job_id))["state"] in states and j, what=f"job {job_id}")


@contextlib.contextmanager
def peer(server, kind):
    """A bare ZeroMQ socket of ``kind`` connected to the server's command endpoint."""
    ctx = zmq.Context()
    sock = ctx.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, 3000)
    sock.connect(server.commands)
    try:
        yield sock
    finally:
        sock.close()
        ctx.term()


@pytest.fixture
def raw(server):
    """A bare DEALER socket to send arbitrary bytes to the server."""
    with peer(server, zmq.DEALER) as sock:
        yield sock


def raw_reply(sock, *parts):
    sock.send_multipart(list(parts))
    return wire.decode_reply(sock.recv_multipart()[0])


def test_ping_and_status(client):
    assert client.ping()["pong"] is True
    status = client.status()
    assert status["backend"] == "demo" and status["state"] == "idle" and status["queued"] == 0
    assert status["frames_address"].startswith("tcp://127.0.0.1:")


def test_generate_publishes_a_frame_that_late_joiners_can_fetch(client, receiver):
    job = client.generate(prompt="a gallery interior", seed=11, **SMALL)
    assert job["params"]["seed"] == 11 and job["params"]["width"] == 128
    frame = wait_for(receiver.latest, what="frame")
    assert frame.meta["job_id"] == job["job_id"] and frame.meta["seed"] == 11
    assert frame.meta["prompt"] == "a gallery interior" and frame.meta["backend"] == "demo"
    assert frame.meta["depth"]["near"] == scene_for("a gallery interior", 11).near
    done = wait_job(client, job["job_id"])
    assert done["state"] == "done" and done["frame_id"] == frame.frame_id
    with CommandClient(client.address) as late:
        again = late.get_frame()
        by_id = late.get_frame(frame.frame_id)
    for other in (again, by_id):
        assert other.frame_id == frame.frame_id
        np.testing.assert_array_equal(other.rgb, frame.rgb)
        np.testing.assert_array_equal(other.depth, frame.depth)


def test_random_seed_is_resolved_and_reported(client, receiver):
    job = client.generate(**SMALL)
    assert 0 <= job["params"]["seed"] < 2**31
    frame = wait_for(receiver.latest, what="frame")
    assert frame.meta["seed"] == job["params"]["seed"]


def test_progress_events_are_published(make_server):
    srv = make_server(DemoBackend(step_delay=0.02))
    from td_bridge.receiver import FrameReceiver

    with FrameReceiver(srv.frames) as rx, CommandClient(srv.commands) as c:
        wait_for(lambda: rx.connected)
        job = c.generate(prompt="p", seed=1, width=128, height=64, steps=5)
        event = wait_for(lambda: (e := rx.event("progress")) and e["step"] == 5 and e, what="last progress")
        assert event["job_id"] == job["job_id"] and event["total"] == 5


def test_cancel_stops_the_running_job_within_a_step(make_server):
    srv = make_server(DemoBackend(step_delay=0.05))
    with CommandClient(srv.commands) as c:
        job = c.generate(prompt="p", seed=1, width=128, height=64, steps=40)
        wait_for(lambda: c.job(job["job_id"])["step"] >= 2, what="two steps")
        assert c.cancel() == [job["job_id"]]
        done = wait_job(c, job["job_id"])
        assert done["state"] == "cancelled" and done["frame_id"] is None
        assert done["step"] <= 40 // 2
        assert c.status()["frames_published"] == 0


def test_cancel_by_id_and_queue_limit(make_server):
    srv = make_server(DemoBackend(step_delay=0.05), max_waiting=1)
    with CommandClient(srv.commands) as c:
        first = c.generate(prompt="p", seed=1, width=128, height=64, steps=40)
        wait_for(lambda: c.status()["state"] == "generating")
        second = c.generate(prompt="p", seed=2, width=128, height=64, steps=1)
        with pytest.raises(CommandError) as info:
            c.generate(prompt="p", seed=3, **SMALL)
        assert info.value.code == "queue_full"
        assert c.cancel(second["job_id"]) == [second["job_id"]]
        assert c.job(second["job_id"])["state"] == "cancelled"
        with pytest.raises(CommandError, match="not waiting or running"):
            c.cancel(second["job_id"])
        c.cancel(first["job_id"])
        wait_job(c, first["job_id"])


class FailingBackend:
    name = "failing"
    model = "failing"

    def generate(self, params, progress, cancelled):
        raise RuntimeError("GPU on fire")


class BadArraysBackend(FailingBackend):
    name = "bad-arrays"

    def generate(self, params, progress, cancelled):
        from generator.backends import RGBD

        return RGBD(np.zeros((4, 4, 3), np.float32), np.zeros((4, 4), np.uint16))


@pytest.mark.parametrize("backend, message", [(FailingBackend(), "GPU on fire"), (BadArraysBackend(), "uint8")])
def test_backend_failure_fails_the_job_not_the_server(make_server, backend, message):
    srv = make_server(backend)
    with CommandClient(srv.commands) as c:
        job = c.generate(**SMALL)
        done = wait_job(c, job["job_id"])
        assert done["state"] == "failed" and message in done["error"]
        assert c.ping()["pong"]


@pytest.mark.parametrize(
    "args, code, message",
    [
        ({"steps": 0}, "bad_params", r"\[1, 500\]"),
        ({"width": 100}, "bad_params", "multiple of 8"),
        ({"prompt": 3}, "bad_params", "not a valid str"),
        ({"bogus": 1}, "bad_params", "unknown parameter 'bogus'"),
    ],
)
def test_invalid_generate_arguments_get_clear_errors(client, args, code, message):
    with pytest.raises(CommandError, match=message) as info:
        client.generate(**args)
    assert info.value.code == code
    assert client.status()["queued"] == 0


@pytest.mark.parametrize(
    "cmd, args, code, message",
    [
        ("launch", {}, "unknown_command", "known: ping"),
        ("ping", {"x": 1}, "bad_request", "no arguments"),
        ("get_frame", {"frame_id": "20990101T000000Z-00000000"}, "not_found", "neither in memory nor in the library"),
        ("get_frame", {}, "not_found", "no frame has been published"),
        ("get_frame", {"frame_id": "../x"}, "bad_request", "frame_id"),
        ("get_frame", {"id": 1}, "bad_request", "one of 'frame_id', 'cue' or 'name'"),
        ("job", {}, "bad_request", "job_id"),
        ("job", {"job_id": "job-000000000000"}, "not_found", "no job"),
        ("cancel", {"job_id": 5}, "bad_request", "job_id"),
    ],
)
def test_bad_commands_get_error_replies(client, cmd, args, code, message):
    with pytest.raises(CommandError, match=message) as info:
        client.request(cmd, args)
    assert info.value.code == code


@pytest.mark.parametrize(
    "parts, message",
    [
        ([b"not json"], "JSON"),
        ([b"\xff\xfe\xfd"], "UTF-8"),
        ([b"[]"], "JSON object"),
        ([b'{"protocol": 1}'], "'cmd'"),
        ([b'{"protocol": 1, "id": "a", "cmd": "ping", "args": 3}'], "'args'"),
        ([b" " * (wire.MAX_REQUEST_BYTES + 1)], "limit"),
        ([b"{}", b"{}"], "protocol version None"),  # a JSON part and a data part: the JSON is checked first
        ([b"x", b"y", b"z"], "one JSON part"),
    ],
)
def test_malformed_requests_get_errors_and_the_server_keeps_serving(raw, client, parts, message):
    reply = raw_reply(raw, *parts)
    assert reply["ok"] is False and reply["error"]["code"] == "bad_request"
    assert message in reply["error"]["message"]
    assert client.ping()["pong"]


def test_unknown_protocol_version_names_both_versions(raw):
    reply = raw_reply(raw, json.dumps({"protocol": 99, "id": "v", "cmd": "ping"}).encode())
    assert reply["id"] == "v" and reply["error"]["code"] == "bad_request"
    assert "version 99" in reply["error"]["message"] and f"version {wire.PROTOCOL_VERSION}" in reply["error"]["message"]


def test_oversized_message_drops_only_that_peer(raw, client):
    raw.send(b"x" * (MAX_MESSAGE_BYTES + 1))
    with pytest.raises(zmq.Again):
        raw.recv()
    assert client.ping()["pong"]


def test_req_sockets_work_too(server):
    with peer(server, zmq.REQ) as req:
        req.send(wire.encode_request("r-1", "ping"))
        reply = wire.decode_reply(req.recv())
    assert reply["ok"] and reply["id"] == "r-1"


def test_history_keeps_only_the_newest_frames(make_server):
    srv = make_server(history=2)
    with CommandClient(srv.commands) as c:
        jobs = [c.generate(prompt="p", seed=s, **SMALL)["job_id"] for s in range(3)]
        frames = [wait_job(c, j)["frame_id"] for j in jobs]
        with pytest.raises(CommandError, match="neither in memory nor in the library"):
            c.get_frame(frames[0])
        assert c.get_frame(frames[2]).meta["seed"] == 2
        assert c.get_frame().frame_id == frames[2]


@pytest.mark.parametrize(
    "frames, options, message",
    [
        ("tcp://0.0.0.0:5555", {}, "--allow-lan"),
        ("tcp://192.168.1.2:5555", {}, "--allow-lan"),
        ("udp://127.0.0.1:5555", {}, "tcp://HOST:PORT"),
        ("tcp://127.0.0.1:70000", {}, "outside 1-65535"),
    ],
)
def test_bind_addresses_are_checked(frames, options, message):
    from generator.serving.server import GeneratorServer

    with pytest.raises(ValueError, match=message):
        GeneratorServer(DemoBackend(), frames_address=frames, commands_address="tcp://127.0.0.1:*", **options)


def test_lan_binding_is_allowed_when_asked(make_server):
    srv = make_server(frames="tcp://0.0.0.0:*", allow_lan=True)
    assert srv.frames.startswith("tcp://0.0.0.0:")


class StubbornBackend(FailingBackend):
    """Ignores cancellation for a while, like a model stuck in a long decode."""

    name = "stubborn"

    def generate(self, params, progress, cancelled):
        import time

        time.sleep(3)
        raise RuntimeError("finished late")


def test_shutdown_does_not_hang_on_a_backend_that_ignores_cancel(make_server, caplog):
    import time

    srv = make_server(StubbornBackend(), shutdown_grace=0.3)
    with CommandClient(srv.commands) as c:
        c.generate(**SMALL)
        wait_for(lambda: c.status()["state"] == "generating")
    started = time.monotonic()
    srv.close()
    assert time.monotonic() - started < 2.5
    assert "did not stop within 0.3 s" in caplog.text


# ------------------------------------------------------------------ limits, replies and job state (issue 12)

LONGEST_TEXT = {p.name: p.max_length for p in GENERATION_PARAMS if p.kind is str and p.max_length and not p.pattern}


@pytest.mark.parametrize("char", ["😀", "\x01"])  # 4 bytes in UTF-8; 6 as a JSON escape, the most per character
def test_the_largest_legal_text_fields_make_frames_and_events_every_client_reads(make_server, tmp_path, char):
    """Every text field at its longest, in the characters that cost the most bytes: the frame, its
    recall, get_frame and the status events stay within the documented limits and decode."""
    text = {name: char * length for name, length in LONGEST_TEXT.items()}
    assert set(text) == {"prompt", "negative_prompt", "cue"}
    srv = make_server(DemoBackend(step_delay=0.02), library=FrameLibrary(tmp_path), max_waiting=40)
    with CommandClient(srv.commands) as c, FrameReceiver(srv.frames) as rx:
        wait_for(lambda: rx.connected, what="receiver")
        job = c.generate(**text, **SMALL)
        done = wait_job(c, job["job_id"])
        assert done["state"] == "done" and done["saved"] is True and done["error"] is None
        frame = wait_for(rx.latest, what="frame")
        assert len(wire.encode_json(frame.meta)) <= wire.MAX_HEADER_BYTES
        assert all(frame.meta["params"][name] == value for name, value in text.items())
        assert frame.meta["prompt"] == text["prompt"] and frame.meta["negative_prompt"] == text["negative_prompt"]
        c.recall(frame.frame_id)
        assert wait_for(lambda: (f := rx.latest()) and f.seq == 2 and f, what="recall").meta["recalled_at"]
        assert c.get_frame(cue=text["cue"]).frame_id == frame.frame_id
        jobs = [c.generate(**{**text, **SMALL, "steps": 20})["job_id"] for _ in range(40)]  # a full queue in status
        status = wait_for(lambda: (s := rx.event("status")) and s["queued"] >= 20 and s, what="busy status")
        assert len(status["waiting"]) == 16 and len(status["waiting"][0]["prompt"]) == 100
        assert rx.stats().errors == 0
        assert c.job(jobs[-1])["prompt"] == text["prompt"]  # whole in the job's own summary
        c.cancel()


class HugeInfoBackend(DemoBackend):
    name = "huge-info"

    def generate(self, params, progress, cancelled):
        result = super().generate(params, progress, cancelled)
        return dataclasses.replace(result, info={"notes": "x" * wire.MAX_HEADER_BYTES})


def test_a_header_over_the_limit_fails_the_job_and_is_neither_saved_nor_published(make_server, tmp_path):
    library = FrameLibrary(tmp_path)
    srv = make_server(HugeInfoBackend(), library=library)
    with CommandClient(srv.commands) as c, FrameReceiver(srv.frames) as rx:
        wait_for(lambda: rx.connected, what="receiver")
        done = wait_job(c, c.generate(**SMALL)["job_id"])
        assert done["state"] == "failed" and "the limit is 65536" in done["error"]
        assert done["frame_id"] is None and done["saved"] is None and len(library) == 0
        assert rx.latest() is None and c.status()["frames_published"] == 0


def test_saved_is_reported_together_with_the_frame_id(make_server, tmp_path, monkeypatch):
    """The job's summary never says saved: true before it names its frame."""
    encode, reached, release = wire.encode_frame_parts, threading.Event(), threading.Event()

    def held(*args):  # the worker, after saving, stops before handing the frame over
        if threading.current_thread().name == "depthfusion-worker":
            reached.set()
            release.wait(10)
        return encode(*args)

    monkeypatch.setattr(wire, "encode_frame_parts", held)
    srv = make_server(library=FrameLibrary(tmp_path))
    with CommandClient(srv.commands) as c:
        job_id = c.generate(**SMALL)["job_id"]
        assert reached.wait(10)
        during = c.job(job_id)
        release.set()
        done = wait_job(c, job_id)
    assert during["state"] == "running" and (during["saved"], during["frame_id"]) == (None, None)
    assert done["saved"] is True and done["frame_id"] is not None


def test_replies_come_in_request_order_and_unreadable_requests_get_id_null(raw):
    """A DEALER may send several requests at once: replies keep their order, and one whose request had
    no readable id carries "id": null in that request's place."""
    raw.send_multipart([wire.encode_request("a-1", "ping")])
    raw.send_multipart([b"not json"])
    raw.send_multipart([b'{"protocol": 1, "cmd": "ping"}'])
    raw.send_multipart([b'{"protocol": 1, "id": "bad id!", "cmd": "ping"}'])
    raw.send_multipart([wire.encode_request("a-5", "nope")])
    replies = [wire.decode_reply(raw.recv_multipart()[0]) for _ in range(5)]
    assert [(r["id"], r["ok"]) for r in replies] == [("a-1", True), (None, False), (None, True), (None, False),
                                                     ("a-5", False)]


def test_an_oversized_request_gets_no_reply_and_the_client_reconnects(raw):
    raw.send(b"x" * (MAX_MESSAGE_BYTES + 1))  # the connection is dropped: no reply ever comes
    with pytest.raises(zmq.Again):
        raw.recv()
    deadline = time.monotonic() + 10
    while True:  # the DEALER reconnects on its own; requests sent meanwhile may be lost, so resend
        raw.send(wire.encode_request("again", "ping"))
        try:
            reply = wire.decode_reply(raw.recv())
            break
        except zmq.Again:
            assert time.monotonic() < deadline, "no reply after the reconnect"
    assert reply["id"] == "again" and reply["ok"]
