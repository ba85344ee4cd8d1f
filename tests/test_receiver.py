import subprocess
import sys
import time

import pytest

from conftest import ROOT, RunningServer, free_port, wait_for
from generator.backends import DemoBackend
from td_bridge.addresses import AddressError
from td_bridge.receiver import CommandClient, CommandTimeout, FrameReceiver

FRAME = {"prompt": "p", "width": 128, "height": 64, "steps": 1}


def test_slow_consumer_always_gets_the_newest_frame(make_server):
    """Producer ~50 frames/s, consumer 4x slower: no backlog builds up, nothing stale is returned."""
    interval = 0.02
    srv = make_server(DemoBackend(step_delay=interval), max_waiting=200)
    with FrameReceiver(srv.frames) as rx, CommandClient(srv.commands) as c:
        wait_for(lambda: rx.connected)
        for seed in range(60):
            c.generate(seed=seed, **FRAME)
        lags, seen = [], [wait_for(rx.latest, what="first frame").seq]  # read too: not dropped
        while srv.server.status()["queued"] or srv.server.status()["state"] == "generating":
            time.sleep(4 * interval)
            published = srv.server.status()["frames_published"]
            frame = rx.latest()
            lags.append(published - frame.seq)
            seen.append(frame.seq)
        stats = rx.stats()
    # a queueing receiver would fall ~3 frames further behind on every read
    assert max(lags) <= 1, lags
    # every frame was read or dropped, but for the newest, if it came after the last read
    assert len(set(seen)) < 60 and stats.dropped >= 60 - len(set(seen)) - 1
    assert stats.frames <= 60 and stats.errors == 0


def test_take_returns_each_frame_once(server, client, receiver):
    client.generate(seed=1, **FRAME)
    frame = wait_for(receiver.take, what="frame")
    assert receiver.take() is None and receiver.latest() is frame
    client.generate(seed=2, **FRAME)
    assert wait_for(receiver.take, what="second frame").meta["seed"] == 2


def test_reconnects_after_the_generator_restarts():
    port_frames, port_commands = free_port(), free_port()
    frames, commands = f"tcp://127.0.0.1:{port_frames}", f"tcp://127.0.0.1:{port_commands}"
    first = RunningServer(frames=frames, commands=commands)
    rx = FrameReceiver(frames, stale_after=0.6)
    client = CommandClient(commands, timeout=3)
    try:
        wait_for(lambda: rx.connected)
        client.generate(seed=1, **FRAME)
        old = wait_for(rx.latest, what="frame from the first server")
        first.close()
        wait_for(lambda: not rx.connected, what="receiver to notice the generator is gone")
        assert rx.latest() is old  # the last good frame stays
        second = RunningServer(frames=frames, commands=commands)
        try:
            wait_for(lambda: rx.connected, timeout=10, what="reconnect")
            client.generate(seed=2, **FRAME)
            new = wait_for(lambda: (f := rx.latest()) is not old and f, timeout=10, what="frame after restart")
            assert new.meta["server_id"] != old.meta["server_id"] and new.seq == 1
            assert rx.stats().dropped == 0  # seq restarting at 1 is not counted as loss
        finally:
            second.close()
    finally:
        rx.close()
        client.close()


def test_close_never_hangs_without_a_server():
    port = free_port()
    rx = FrameReceiver(f"tcp://127.0.0.1:{port}")
    client = CommandClient(f"tcp://127.0.0.1:{free_port()}", timeout=0.3)
    with pytest.raises(CommandTimeout, match="is `python -m generator serve` running"):
        client.ping()
    started = time.monotonic()
    rx.close()
    client.close()
    assert time.monotonic() - started < 2
    assert rx.latest() is None and not rx.stats().connected


def test_process_with_pending_requests_exits_promptly():
    code = (
        "from td_bridge.receiver import FrameReceiver, CommandClient, CommandTimeout\n"
        "rx = FrameReceiver('tcp://127.0.0.1:%d')\n"
        "c = CommandClient('tcp://127.0.0.1:%d', timeout=0.2)\n"
        "try:\n    c.ping()\nexcept CommandTimeout:\n    pass\n"
        "rx.close(); c.close()\n" % (free_port(), free_port())
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, timeout=20, check=True)


def test_late_reply_to_a_timed_out_request_is_ignored(make_server):
    srv = make_server(DemoBackend(step_delay=0.0))
    with CommandClient(srv.commands, timeout=2) as c:
        # stall the server's command loop by hand: the reply to this request arrives late
        c._sock.send(b'{"protocol":1,"id":"stale-1","cmd":"ping","args":{}}')
        time.sleep(0.2)
        assert c.ping()["pong"]  # the stale reply is skipped, the matching one returned


@pytest.mark.parametrize("address", ["tcp://127.0.0.1:*", "tcp://*:5555", "127.0.0.1:5555", "tcp://h:0", 5555])
def test_bad_addresses_are_rejected(address):
    with pytest.raises(AddressError):
        FrameReceiver(address, start=False)
    with pytest.raises(AddressError):
        CommandClient(address)


def test_corrupt_messages_are_counted_not_raised():
    import zmq

    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    try:
        port = pub.bind_to_random_port("tcp://127.0.0.1")
        with FrameReceiver(f"tcp://127.0.0.1:{port}") as rx:
            # resend until the subscription is live (PUB drops messages sent before that)
            wait_for(lambda: pub.send_multipart([b"frame", b"{}", b"", b""]) or rx.stats().errors, what="error")
            assert "protocol version None" in rx.stats().last_error
            time.sleep(0.2)  # let frames still in flight arrive
            errors = rx.stats().errors
            pub.send_multipart([b"weird", b"x"])
            wait_for(lambda: rx.stats().errors == errors + 1, what="one more error")
            assert "unknown topic" in rx.stats().last_error
            assert rx.latest() is None and rx.stats().frames == 0
    finally:
        pub.close()
        ctx.term()


class ReplayBackend:
    """Returns one prepared frame instantly: floods the publisher."""

    name = model = "replay"

    def __init__(self, width=1024, height=512):
        params = {"prompt": "p", "seed": 1, "width": width, "height": height, "steps": 1}
        self.frame = DemoBackend().generate(params, lambda s, n: None, lambda: False)

    def generate(self, params, progress, cancelled):
        return self.frame


def burst_reaches(srv, rx, count):
    """Queue ``count`` instant frames; the receiver must end on the last one published."""
    wait_for(lambda: rx.connected)
    for seed in range(count):
        srv.server.jobs.submit({**FRAME, "seed": seed, "negative_prompt": "", "guidance": 7.0})
    wait_for(lambda: srv.server.status()["frames_published"] == count, timeout=60, what="all published")
    # the burst is published before the receiver has decoded any of it: latest() may still be None
    wait_for(lambda: getattr(rx.latest(), "seq", None) == count, timeout=10, what="the last frame of the burst")


def test_a_burst_never_loses_the_newest_frame(make_server):
    srv = make_server(ReplayBackend(), max_waiting=400)
    with FrameReceiver(srv.frames) as rx:
        burst_reaches(srv, rx, 300)


def test_a_stalled_subscriber_does_not_hold_back_the_others(make_server):
    import zmq

    srv = make_server(ReplayBackend(), max_waiting=200, stall_timeout=0.3)
    ctx = zmq.Context()
    stalled = ctx.socket(zmq.SUB)
    stalled.setsockopt(zmq.LINGER, 0)
    stalled.setsockopt(zmq.RCVHWM, 1)
    stalled.setsockopt(zmq.RCVBUF, 4096)
    stalled.setsockopt(zmq.SUBSCRIBE, b"")
    stalled.connect(srv.frames)
    try:
        with FrameReceiver(srv.frames) as rx:
            burst_reaches(srv, rx, 60)
    finally:
        stalled.close()
        ctx.term()


def test_wait_blocks_until_a_new_frame(server, client, receiver):
    assert receiver.wait(0.05) is None
    client.generate(seed=5, **FRAME)
    frame = receiver.wait(10)
    assert frame is not None and frame.meta["seed"] == 5
    assert receiver.wait(0.05) is None and receiver.latest() is frame
