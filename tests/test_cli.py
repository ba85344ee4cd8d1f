"""`python -m generator serve` and `generate` as a user runs them, in subprocesses."""

import json
import re
import signal

import numpy as np
import pytest

from conftest import Served, run_cli, wait_for
from generator.backends.demo import DemoBackend
from generator.images import read_rgb_png
from td_bridge.depth import read_depth_png
from td_bridge.receiver import CommandClient, FrameReceiver



def test_generate_writes_rgb_depth_and_metadata(tmp_path):
    out = tmp_path / "shot"
    result = run_cli("generate", "a gallery interior", "--model", "demo", "-o", str(out),
                     "--seed", "42", "--width", "256", "--height", "128", "--steps", "4")
    assert result.returncode == 0, result.stderr
    meta = json.loads((out / "metadata.json").read_text(encoding="utf-8"))
    assert meta["prompt"] == "a gallery interior" and meta["seed"] == 42 and meta["backend"] == "demo"
    assert meta["width"] == 256 and meta["depth"]["encoding"] == "inverse_relative"
    expected = DemoBackend().generate(meta["params"], lambda s, n: None, lambda: False)
    np.testing.assert_array_equal(read_rgb_png(out / "rgb.png"), expected.rgb)
    depth = read_depth_png(out / "depth.png")
    assert depth.dtype == np.uint16
    np.testing.assert_array_equal(depth, expected.depth)


def test_generate_refuses_to_overwrite(tmp_path):
    args = ("generate", "p", "--model", "demo", "-o", str(tmp_path), "--width", "128", "--height", "64")
    assert run_cli(*args).returncode == 0
    again = run_cli(*args)
    assert again.returncode == 2 and "--overwrite" in again.stderr
    assert run_cli(*args, "--overwrite").returncode == 0


@pytest.mark.parametrize(
    "args, message",
    [
        (("--steps", "0"), r"\[1, 500\]"),
        (("--width", "100"), "multiple of 8"),
        (("--guidance", "nan"), "not a valid float"),
        (("--model", "/nonexistent/ldm3d"), "neither an existing folder nor a hub id"),
    ],
)
def test_generate_rejects_bad_flags(tmp_path, args, message):
    result = run_cli("generate", "p", "-o", str(tmp_path / "x"), *args)
    assert result.returncode == 2 and re.search(message, result.stderr), result.stderr
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_serve_generates_and_stops_cleanly(sig):
    served = Served("--model", "demo", "--generate", "--width", "128", "--height", "64", "--seed", "3")
    try:
        with FrameReceiver(served.frames) as rx, CommandClient(served.commands) as client:
            # --generate queued one frame at start-up; a late joiner fetches it
            first = wait_for(lambda: client.status()["frames_published"] >= 1, timeout=20, what="start-up frame")
            assert first and client.get_frame().meta["seed"] == 3
            wait_for(lambda: rx.connected, what="subscription")
            job = client.generate(prompt="a desert landscape", seed=9, width=128, height=64, steps=2)
            frame = wait_for(lambda: (f := rx.latest()) and f.meta["job_id"] == job["job_id"] and f, what="frame")
            assert frame.rgb.shape == (64, 128, 3) and frame.meta["backend"] == "demo"
    finally:
        code = served.stop(sig)
    assert code == 0, "".join(served.log)
    assert "stopped" in "".join(served.log)


def test_serve_auto_falls_back_to_demo_with_one_log_line():
    served = Served("--model", "auto")
    try:
        with CommandClient(served.commands, timeout=10) as client:
            assert client.status()["backend"] == "demo"
    finally:
        served.stop()
    log = "".join(served.log)
    assert log.lower().count("using the demo backend") == 1, log


@pytest.mark.parametrize(
    "args, message",
    [
        (("--frames", "tcp://0.0.0.0:5555"), "--allow-lan"),
        (("--commands", "localhost"), "tcp://HOST:PORT"),
        (("--queue-size", "0"), "--queue-size"),
        (("--steps", "9999"), r"\[1, 500\]"),
        (("--demo-step-delay", "-1"), "step delay"),
    ],
)
def test_serve_rejects_bad_flags(args, message):
    result = run_cli("serve", "--model", "demo", *args, timeout=30)
    assert result.returncode == 2 and re.search(message, result.stderr), result.stderr


def test_serve_reports_a_port_in_use():
    first = Served("--model", "demo")
    try:
        result = run_cli("serve", "--model", "demo", "--frames", first.frames, "--commands", "tcp://127.0.0.1:*")
        assert result.returncode == 2 and "cannot bind" in result.stderr
    finally:
        first.stop()
