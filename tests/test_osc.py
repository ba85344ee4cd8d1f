import contextlib
import queue
import random
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path

import pytest
from pythonosc.osc_message import OscMessage

from conftest import ROOT, free_udp_port, require_tool, wait_for
from generator.backends import DemoBackend
from generator.serving.osc import OscConfig
from generator.serving.osc_space import osc_message, reference
from td_bridge.receiver import CommandClient, FrameReceiver

SMALL = [("/depthfusion/width", 128), ("/depthfusion/height", 64), ("/depthfusion/steps", 2)]


class OscClient:
    """A show-control stand-in: one UDP socket that sends and reads replies."""

    def __init__(self, port):
        self.port = port
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(5)

    def send(self, address, *args):
        self.sock.sendto(osc_message(address, *args), ("127.0.0.1", self.port))

    def raw(self, data):
        self.sock.sendto(data, ("127.0.0.1", self.port))

    def recv(self, timeout=5):
        message = OscMessage(self.recv_raw(timeout))
        return message.address, list(message.params)

    def recv_raw(self, timeout=5):
        self.sock.settimeout(timeout)
        return self.sock.recvfrom(65536)[0]

    def ask(self, address, *args, timeout=5):
        self.send(address, *args)
        return self.recv(timeout)

    def close(self):
        self.sock.close()


@pytest.fixture
def osc_server(make_server):
    return make_server(DemoBackend(), osc=OscConfig(port=free_udp_port()))


@pytest.fixture
def osc(osc_server):
    client = OscClient(osc_server.server.osc.port)
    yield client
    client.close()


def test_ping_pong(osc):
    assert osc.ask("/depthfusion/ping") == ("/depthfusion/pong", [])


@pytest.mark.parametrize(
    "address, value, echoed",
    [
        ("/depthfusion/steps", 30, 30),
        ("/depthfusion/steps", 30.0, 30),
        ("/depthfusion/steps", "30", 30),
        ("/depthfusion/guidance", 5, 5.0),
        ("/depthfusion/seamless", False, 0),
        ("/depthfusion/seamless", 1.0, 1),
        ("/depthfusion/seamless", "off", 0),
        ("/depthfusion/scheduler", "euler", "euler"),
        ("/depthfusion/prompt", "a misty forest ✓", "a misty forest ✓"),
        ("/depthfusion/prompt", "😀" * 2000, "😀" * 2000),  # the longest legal prompt, 4 UTF-8 bytes a character
        ("/depthfusion/cue", "😀" * 100, "😀" * 100),
        ("/depthfusion/seed", 2**31 - 1, 2**31 - 1),
    ],
)
def test_parameters_are_coerced_and_echoed(osc, address, value, echoed):
    assert osc.ask(address, value) == (address, [echoed])


def test_int64_and_double_arguments(osc):
    from pythonosc.osc_message_builder import OscMessageBuilder

    builder = OscMessageBuilder("/depthfusion/seed")
    builder.add_arg(2**31 - 2, OscMessageBuilder.ARG_TYPE_INT64)
    osc.raw(builder.build().dgram)
    assert osc.recv() == ("/depthfusion/seed", [2**31 - 2])
    builder = OscMessageBuilder("/depthfusion/guidance")
    builder.add_arg(6.25, OscMessageBuilder.ARG_TYPE_DOUBLE)
    osc.raw(builder.build().dgram)
    assert osc.recv() == ("/depthfusion/guidance", [6.25])


@pytest.mark.parametrize(
    "address, args, message",
    [
        ("/depthfusion/steps", [0], r"steps: 0 is out of range; allowed: int in [1, 500]"),
        ("/depthfusion/steps", [2.5], "not a valid int"),
        ("/depthfusion/width", [100], "multiple of 8"),
        ("/depthfusion/seed", [-5], "out of range"),
        ("/depthfusion/scheduler", ["fast"], "one of ddim, dpm++, euler"),
        ("/depthfusion/guidance", [], "takes 1 argument(s), got 0"),
        ("/depthfusion/guidance", [1.0, 2.0], "takes 1 argument(s), got 2"),
        ("/depthfusion/colour", [1], "unknown address; known: generate, cancel"),
        ("/other/thing", [], "listens under /depthfusion/"),
        ("/depthfusion/ping", [1], "takes 0 argument(s)"),
        ("/depthfusion/recall", [], "takes 1 argument(s)"),
        ("/depthfusion/recall", ["nope!"], "no frame with cue"),
        ("/depthfusion/recall", ["20990101T000000Z-00000000"], "not_found"),
        ("/depthfusion/cancel", ["job-000000000000"], "not_found"),
    ],
)
def test_errors_name_the_problem(osc, address, args, message):
    reply = osc.ask(address, *args)
    assert reply[0] == "/depthfusion/error" and reply[1][0] == address
    assert message in reply[1][1]
    assert osc.ask("/depthfusion/ping")[0] == "/depthfusion/pong"


def test_bad_values_do_not_change_the_current_parameters(osc, osc_server):
    osc.ask("/depthfusion/steps", 7)
    osc.ask("/depthfusion/steps", 9999)
    assert osc_server.server.osc.params["steps"] == 7


def test_generate_progress_frame_and_state_events(make_server):
    events_port = free_udp_port()
    events = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    events.bind(("127.0.0.1", events_port))
    events.settimeout(5)
    srv = make_server(DemoBackend(step_delay=0.01),
                      osc=OscConfig(port=free_udp_port(), targets=[f"127.0.0.1:{events_port}"]))
    client = OscClient(srv.server.osc.port)
    try:
        for address, value in SMALL:
            client.ask(address, value)
        client.ask("/depthfusion/seed", 11)
        address, (job_id, seed) = client.ask("/depthfusion/generate", "a desert at night")
        assert address == "/depthfusion/queued" and seed == 11 and job_id.startswith("job-")
        seen = {}
        deadline = time.monotonic() + 10
        while "/depthfusion/frame" not in seen and time.monotonic() < deadline:
            message = OscMessage(events.recvfrom(65536)[0])
            seen.setdefault(message.address, []).append(list(message.params))
        assert seen["/depthfusion/progress"][-1] == [job_id, 2, 2]
        frame_id = seen["/depthfusion/frame"][0][0]
        assert ["generating", 0] in seen["/depthfusion/state"]
        assert srv.server.jobs.get(job_id).params["prompt"] == "a desert at night"
        status = client.ask("/depthfusion/status")
        assert status[0] == "/depthfusion/status" and status[1][1] == "demo"
        with FrameReceiver(srv.frames) as rx:
            wait_for(lambda: rx.connected)
            assert client.ask("/depthfusion/recall", frame_id)[0] == "/depthfusion/recalled"
            recalled = wait_for(rx.latest, what="recalled frame")
            assert recalled.frame_id == frame_id and "recalled_at" in recalled.meta
    finally:
        client.close()
        events.close()


def test_recall_by_cue_name_from_the_library(make_server, tmp_path):
    from generator.library import FrameLibrary

    srv = make_server(DemoBackend(), osc=OscConfig(port=free_udp_port()), library=FrameLibrary(tmp_path))
    client = OscClient(srv.server.osc.port)
    try:
        for address, value in SMALL:
            client.ask(address, value)
        made = {}
        for cue, prompt in (("act 1", "a harbour at dusk"), ("", "an unnamed test")):
            client.ask("/depthfusion/cue", cue)
            _, (job_id, _) = client.ask("/depthfusion/generate", prompt)
            made[cue] = wait_for(lambda: (j := srv.server.jobs.get(job_id)).state == "done" and j.frame_id)
        with FrameReceiver(srv.frames) as rx:
            wait_for(lambda: rx.connected)
            assert client.ask("/depthfusion/recall", "act 1") == ("/depthfusion/recalled", [made["act 1"]])
            frame = wait_for(lambda: (f := rx.latest()) and f.frame_id == made["act 1"] and f, what="recall")
            assert frame.meta["prompt"] == "a harbour at dusk" and frame.meta["params"]["cue"] == "act 1"
        address, args = client.ask("/depthfusion/recall", "act 2")
        assert address == "/depthfusion/error" and "no frame with cue 'act 2'" in args[1]
    finally:
        client.close()


def test_cancel_over_osc(make_server):
    srv = make_server(DemoBackend(step_delay=0.05), osc=OscConfig(port=free_udp_port()))
    client = OscClient(srv.server.osc.port)
    try:
        for address, value in SMALL:
            client.ask(address, value)
        client.ask("/depthfusion/steps", 100)
        _, (job_id, _) = client.ask("/depthfusion/generate")
        wait_for(lambda: srv.server.status()["state"] == "generating")
        assert client.ask("/depthfusion/cancel") == ("/depthfusion/cancelled", [1, job_id])
    finally:
        client.close()


def test_replies_go_to_the_configured_reply_port(make_server):
    reply_port = free_udp_port()
    listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    listener.bind(("127.0.0.1", reply_port))
    listener.settimeout(5)
    srv = make_server(osc=OscConfig(port=free_udp_port(), reply_port=reply_port))
    client = OscClient(srv.server.osc.port)
    try:
        client.send("/depthfusion/ping")
        assert OscMessage(listener.recvfrom(65536)[0]).address == "/depthfusion/pong"
    finally:
        client.close()
        listener.close()


def test_bundles_run_every_message_and_ignore_future_timetags(osc, osc_server):
    def bundle(*elements, timetag):
        body = b"#bundle\0" + struct.pack(">Q", timetag)
        return body + b"".join(struct.pack(">i", len(e)) + e for e in elements)

    far_future = (int(time.time()) + 2208988800 + 3600) << 32  # an hour ahead, NTP epoch
    osc.raw(bundle(osc_message("/depthfusion/steps", 12), osc_message("/depthfusion/guidance", 3.5),
                   timetag=far_future))
    assert {osc.recv(1)[0], osc.recv(1)[0]} == {"/depthfusion/steps", "/depthfusion/guidance"}
    assert osc_server.server.osc.params["steps"] == 12


HOSTILE = [
    b"#bundle\0" + b"\0" * 8 + struct.pack(">i", -8) + b"/a\0\0,\0\0\0",  # hangs python-osc 1.10.2
    b"/depthfusion/prompt\0,s\0\0\xff\xfe\xfd\0",  # invalid UTF-8
    b"\0" * 64,
    b"#bundle\0" + b"\0" * 8 + struct.pack(">i", 2**31 - 1),
    b"/depthfusion/steps\0\0,i\0\0",
]


def mutations(seed: int, count: int):
    rng = random.Random(seed)
    valid = [osc_message("/depthfusion/steps", 3), osc_message("/depthfusion/prompt", "a room at dawn"),
             b"#bundle\0" + b"\0" * 8 + struct.pack(">i", 20) + osc_message("/depthfusion/seed", 5)]
    for _ in range(count):
        packet = bytearray(rng.choice(valid))
        kind = rng.randrange(4)
        if kind == 0:
            for _ in range(rng.randint(1, 6)):
                packet[rng.randrange(len(packet))] = rng.randrange(256)
        elif kind == 1:
            packet = packet[: rng.randrange(1, len(packet))]
        elif kind == 2 and packet.startswith(b"#bundle"):
            packet[16:20] = struct.pack(">i", rng.choice([-4, -1, 0, 3, 2**31 - 1, -(2**31)]))
        else:
            packet = bytearray(rng.randbytes(rng.randrange(1, 96)))
        yield bytes(packet)


def test_hostile_and_fuzzed_packets_never_stop_the_server(osc):
    """After every bad packet the server still answers /ping within 50 ms."""
    worst = 0.0
    for packet in [*HOSTILE, *mutations(seed=1234, count=300)]:
        osc.raw(packet)
        started = time.perf_counter()
        osc.send("/depthfusion/ping")
        while osc.recv(1)[0] != "/depthfusion/pong":
            pass  # a mutated packet that is still valid OSC earns an echo or an /error first
        worst = max(worst, time.perf_counter() - started)
    assert worst < 0.05, f"slowest /ping after a bad packet: {worst * 1000:.1f} ms"


def test_a_garbage_flood_does_not_delay_valid_commands(osc):
    """Right after 2000 garbage datagrams the server answers /ping within a second.

    While the flood fills the socket's receive buffer the kernel drops datagrams, a /ping
    among them (UDP has no delivery guarantee), so the ping is re-sent every 50 ms, as a
    show-control heartbeat would be."""
    packets = list(mutations(seed=7, count=2000))
    flood = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for packet in packets:
            flood.sendto(packet, ("127.0.0.1", osc.port))
        started = time.perf_counter()
        answered = False
        while not answered and time.perf_counter() - started < 1.0:
            osc.send("/depthfusion/ping")
            answered = _pong_within(osc, 0.05)
        assert answered, "no /pong within 1 s of the flood"
    finally:
        flood.close()


def _pong_within(osc, seconds):
    """Whether a /pong arrives within ``seconds``."""
    deadline = time.perf_counter() + seconds
    while (left := deadline - time.perf_counter()) > 0:
        try:
            if osc.recv(left)[0] == "/depthfusion/pong":
                return True
        except TimeoutError:
            return False
    return False


def test_real_osc_tools_liblo(make_server):
    """Debian's liblo-tools: oscsend sets parameters and triggers a generation; oscdump receives
    the replies (at --osc-reply-port) and the events (at --osc-target)."""
    oscsend, oscdump = require_tool("oscsend"), require_tool("oscdump")
    dump_port = free_udp_port()
    dump = subprocess.Popen([oscdump, "-L", str(dump_port)], stdout=subprocess.PIPE, text=True)
    srv = make_server(DemoBackend(), osc=OscConfig(port=free_udp_port(), reply_port=dump_port,
                                                   targets=[f"127.0.0.1:{dump_port}"]))
    port = str(srv.server.osc.port)

    def send(address, types="", *values):
        subprocess.run([oscsend, "127.0.0.1", port, address, types, *map(str, values)], check=True, timeout=10)

    try:
        time.sleep(0.2)  # let oscdump bind
        send("/depthfusion/width", "i", 128)
        send("/depthfusion/height", "f", 64.0)
        send("/depthfusion/steps", "i", 2)
        send("/depthfusion/seamless", "F")
        send("/depthfusion/generate", "s", "a misty forest")
        send("/depthfusion/steps", "i", 0)
        send("/depthfusion/ping")
        awaited = ("/depthfusion/frame si", "/depthfusion/error ss", "/depthfusion/pong")  # in any order
        lines = queue.Queue()
        threading.Thread(target=lambda: [lines.put(line) for line in dump.stdout], daemon=True).start()
        text, deadline = "", time.monotonic() + 15
        while not all(a in text for a in awaited) and (left := deadline - time.monotonic()) > 0:
            with contextlib.suppress(queue.Empty):
                text += lines.get(timeout=left)
        assert "/depthfusion/width i 128" in text and "/depthfusion/height i 64" in text
        assert "/depthfusion/seamless i 0" in text  # one type per address: bools echo as int32
        assert "/depthfusion/queued si " in text and "/depthfusion/frame si" in text
        assert "/depthfusion/progress sii" in text
        assert "/depthfusion/error ss" in text and "/depthfusion/pong" in text
    finally:
        dump.kill()
        dump.wait()


def test_lan_needs_allow_lan_and_an_allow_list():
    with pytest.raises(ValueError, match="--allow-lan"):
        OscConfig(host="0.0.0.0").check()
    with pytest.raises(ValueError, match="--osc-allow"):
        OscConfig(host="0.0.0.0", allow_lan=True).check()
    with pytest.raises(ValueError, match="--osc-allow"):
        OscConfig(host="0.0.0.0", allow_lan=True, allow=["not-a-network"]).check()
    with pytest.raises(ValueError, match="on the network"):
        OscConfig(targets=["10.0.0.5:9001"]).check()
    with pytest.raises(ValueError, match="HOST:PORT"):
        OscConfig(targets=["localhost"]).check()
    with pytest.raises(ValueError, match="outside 1-65535"):
        OscConfig(port=70000).check()


def test_allow_list_filters_senders(make_server):
    srv = make_server(osc=OscConfig(host="0.0.0.0", port=free_udp_port(), allow_lan=True, allow=["10.0.0.0/8"]),
                      allow_lan=True)
    bridge = srv.server.osc
    assert bridge._allowed("127.0.0.1") and bridge._allowed("10.1.2.3")
    assert not bridge._allowed("192.168.1.20")


def test_osc_port_in_use_is_a_clear_error(osc_server):
    from generator.serving.server import GeneratorServer

    taken = osc_server.server.osc.port
    server = GeneratorServer(DemoBackend(), frames_address="tcp://127.0.0.1:*",
                             commands_address="tcp://127.0.0.1:*", osc=OscConfig(port=taken))
    with pytest.raises(OSError, match=f"cannot listen for OSC on 127.0.0.1:{taken}"):
        server.bind()


def test_docs_osc_md_is_generated_from_the_schema():
    assert (Path(ROOT) / "docs" / "osc.md").read_text(encoding="utf-8") == reference()


@pytest.mark.parametrize(
    "args, message",
    [
        (("--osc-host", "0.0.0.0"), "--allow-lan"),
        (("--osc-host", "0.0.0.0", "--allow-lan"), "--osc-allow"),
        (("--osc-target", "10.0.0.1:9001"), "on the network"),
        (("--osc-reply-port", "0"), "outside 1-65535"),
    ],
)
def test_serve_rejects_bad_osc_flags(args, message):
    import sys

    result = subprocess.run([sys.executable, "-m", "generator", "serve", "--model", "demo", *args], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and message in result.stderr, result.stderr


def type_tags(datagram):
    """(address, type tag string) of one OSC message, read from the raw bytes."""
    address, rest = datagram.split(b"\0", 1)
    rest = rest[(4 - (len(address) + 1) % 4) % 4:]
    return address.decode(), rest.split(b"\0", 1)[0].decode()


def test_every_reply_event_and_echo_has_one_fixed_type_tag_string(make_server, tmp_path):
    """Whatever the values (seeds at both ends of their range, random ones, bools), each address comes
    back with the same OSC 1.0 types: i, f and s only."""
    from generator.library import FrameLibrary

    events = OscClient(0)
    srv = make_server(DemoBackend(), library=FrameLibrary(tmp_path),
                      osc=OscConfig(port=free_udp_port(), targets=[f"127.0.0.1:{events.sock.getsockname()[1]}"]))
    client = OscClient(srv.server.osc.port)
    seen = {}

    def ask(address, *args):
        client.send(address, *args)
        address, tags = type_tags(client.recv_raw())
        seen.setdefault(address, set()).add(tags)
        return address

    try:
        for param, value in [("prompt", "ünï ✓"), ("negative_prompt", ""), ("steps", 2.0), ("guidance", 3),
                             ("width", "128"), ("height", 64), ("scheduler", "euler"), ("seamless", True),
                             ("seamless", "off"), ("cue", "act 1"), ("seed", 2**31 - 1), ("seed", 0)]:
            ask("/depthfusion/" + param, value)
        for seed in (2**31 - 1, 0, -1, -1, -1, -1):
            ask("/depthfusion/seed", seed)
            assert ask("/depthfusion/generate") == "/depthfusion/queued"
        wait_for(lambda: srv.server.status()["frames_published"] == 6 and srv.server.status()["state"] == "idle",
                 timeout=30, what="six frames")
        for _ in range(40):  # progress, frame and state events of the six jobs
            with contextlib.suppress(TimeoutError):
                address, tags = type_tags(events.recv_raw(0.5))
                seen.setdefault(address, set()).add(tags)
        ask("/depthfusion/status")
        ask("/depthfusion/recall", "act 1")
        ask("/depthfusion/cancel")
        ask("/depthfusion/steps", 0)
        ask("/depthfusion/ping")
        raw = osc_message("/depthfusion/seamless", True)  # T: a sender's bool, echoed as 1
        client.raw(raw)
        assert client.recv() == ("/depthfusion/seamless", [1])
    finally:
        client.close()
        events.close()
    assert seen == {
        "/depthfusion/prompt": {",s"}, "/depthfusion/negative_prompt": {",s"}, "/depthfusion/steps": {",i"},
        "/depthfusion/guidance": {",f"}, "/depthfusion/width": {",i"}, "/depthfusion/height": {",i"},
        "/depthfusion/scheduler": {",s"}, "/depthfusion/seamless": {",i"}, "/depthfusion/cue": {",s"},
        "/depthfusion/seed": {",i"}, "/depthfusion/queued": {",si"}, "/depthfusion/progress": {",sii"},
        "/depthfusion/frame": {",si"}, "/depthfusion/state": {",si"}, "/depthfusion/status": {",ssis"},
        "/depthfusion/recalled": {",s"}, "/depthfusion/cancelled": {",i"}, "/depthfusion/error": {",ss"},
        "/depthfusion/pong": {","},
    }


def test_typed_messages_refuse_values_outside_their_type():
    assert type_tags(osc_message("/x", 1, "a", "b", tags="is*")) == ("/x", ",iss")
    assert type_tags(osc_message("/x", 0, tags="is*")) == ("/x", ",i")
    for args, tags in [((2**31,), "i"), ((-(2**31) - 1,), "i"), (("7",), "i"), ((1, 2), "i"), ((), "si")]:
        with pytest.raises(ValueError):
            osc_message("/x", *args, tags=tags)


def test_osc_parameters_are_sticky_shared_and_separate_from_zeromq(make_server):
    """Values set over OSC stay for every later /generate from any sender; /generate's prompt is
    for that one job; /cue sticks; a ZeroMQ generate takes the defaults."""
    from td_bridge.params import defaults
    from td_bridge.receiver import CommandClient

    srv = make_server(DemoBackend(), osc=OscConfig(port=free_udp_port()))
    first, second = OscClient(srv.server.osc.port), OscClient(srv.server.osc.port)
    try:
        for address, value in [*SMALL, ("/depthfusion/cue", "act 1"), ("/depthfusion/prompt", "a set prompt")]:
            first.ask(address, value)
        jobs = [second.ask("/depthfusion/generate", "just this once")[1][0], second.ask("/depthfusion/generate")[1][0]]
        first.ask("/depthfusion/cue", "")
        jobs.append(first.ask("/depthfusion/generate")[1][0])
        with CommandClient(srv.commands) as zmq_client:
            jobs.append(zmq_client.generate(width=128, height=64, steps=2)["job_id"])
        params = [srv.server.jobs.get(j).params for j in jobs]
    finally:
        first.close()
        second.close()
    assert [(p["prompt"], p["cue"], p["steps"]) for p in params[:3]] == [
        ("just this once", "act 1", 2), ("a set prompt", "act 1", 2), ("a set prompt", "", 2)]
    assert (params[3]["prompt"], params[3]["cue"]) == (defaults()["prompt"], "")


@pytest.mark.parametrize("packet, address, problem", [
    (HOSTILE[0], "#bundle", "bundle element size -8"),
    (HOSTILE[1], "/depthfusion/prompt", "not valid UTF-8"),
    (HOSTILE[2], "", "must start with '/'"),
    (HOSTILE[4], "/depthfusion/steps", "arguments run past the packet"),
    (b"/depthfusion/steps\0\0,i", "/depthfusion/steps", "not a multiple of 4"),
    (b"/depthfusion/steps\0\0,x\0\0", "/depthfusion/steps", "unsupported type tag 'x'"),
])
def test_malformed_packets_get_an_error_reply(osc, packet, address, problem):
    osc.raw(packet)
    reply_address, (answered, message) = osc.recv()
    assert reply_address == "/depthfusion/error" and answered == address
    assert message.startswith("malformed OSC packet: ") and problem in message


def test_error_replies_are_rate_limited_per_sender(osc, osc_server):
    other = OscClient(osc_server.server.osc.port)
    try:
        started = time.monotonic()
        for _ in range(200):
            osc.raw(b"\0" * 8)
        other.raw(b"\0" * 8)  # another sender has its own allowance
        assert other.recv()[0] == "/depthfusion/error"
        errors = 0
        with contextlib.suppress(TimeoutError):
            while osc.recv(0.5)[0] == "/depthfusion/error":
                errors += 1
        allowance = 20 + 20 * (time.monotonic() - started)  # a burst of 20, then 20 a second
        assert 20 <= errors <= allowance, (errors, allowance)
        time.sleep(1.1)  # the allowance refills
        osc.raw(b"\0" * 8)
        assert osc.recv()[0] == "/depthfusion/error"
        assert osc.ask("/depthfusion/ping")[0] == "/depthfusion/pong"  # the flood never stopped commands
    finally:
        other.close()


def test_the_depth_check_of_a_generated_frame_is_an_osc_event(make_server):
    class LuminanceDepth:  # a stand-in depth model: brighter is nearer
        model, family, kind, metric = "luminance", "depth_anything", "relative", False

        def predict(self, rgb, flip=False):
            return rgb.astype("float32").mean(axis=2) / 255.0

    events = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    events.bind(("127.0.0.1", 0))
    events.settimeout(5)
    srv = make_server(DemoBackend(), estimator=lambda device: LuminanceDepth(), depth_check=True,
                      osc=OscConfig(port=free_udp_port(), targets=[f"127.0.0.1:{events.getsockname()[1]}"]))
    client = OscClient(srv.server.osc.port)
    try:
        for address, value in (("/depthfusion/width", 96), ("/depthfusion/height", 64), ("/depthfusion/steps", 2)):
            client.ask(address, value)
        client.ask("/depthfusion/generate", "a room")
        deadline, message = time.monotonic() + 10, None
        while time.monotonic() < deadline:
            message = OscMessage(events.recvfrom(65536)[0])
            if message.address == "/depthfusion/depth_check":
                break
        assert message is not None and message.address == "/depthfusion/depth_check"
        frame_id, abs_rel, delta1 = message.params
        with CommandClient(srv.commands) as zmq_client:
            check = zmq_client.get_frame(frame_id).meta["depth_check"]
        assert abs(abs_rel - check["abs_rel"]) < 1e-6 and abs(delta1 - check["delta1"]) < 1e-6  # float32 on OSC
    finally:
        client.close()
        events.close()
