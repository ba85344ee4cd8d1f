"""The server's estimate command (an uploaded image → an estimated frame through the normal frame path and
library) and the live depth check of generated frames, on a tiny random-weight Depth Anything model."""

import re

import numpy as np
import pytest
import zmq

from conftest import SMALL, wait_for
from td_bridge import protocol as wire
from td_bridge.receiver import CommandClient, CommandError
from test_server import peer, wait_job
from tiny_depth import build

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def estimator(tmp_path_factory):
    from generator.estimators.model import DepthModel

    folder = build("depth_anything", tmp_path_factory.mktemp("depth") / "tiny")
    model = DepthModel.load(str(folder), device="cpu")
    return lambda device: model


def photo(height=48, width=64, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_an_uploaded_image_becomes_a_published_library_frame(make_server, estimator, tmp_path):
    from generator.library import FrameLibrary

    library = FrameLibrary(tmp_path / "lib")
    server = make_server(estimator=estimator, library=library)
    image = photo()
    with CommandClient(server.commands, timeout=10) as client:
        queued = client.estimate(image, cue="my photo")
        assert queued["params"]["cue"] == "my photo" and "estimate_upload" in queued["params"]
        job = wait_job(client, queued["job_id"])
        assert job["state"] == "done" and job["saved"] is True, job
        frame = client.get_frame(job["frame_id"])
        np.testing.assert_array_equal(frame.rgb, image)
        assert frame.depth.dtype == np.uint16 and frame.depth.shape == (48, 64) and frame.depth.max() == 65535
        assert frame.meta["backend"] == "depth-estimation" and frame.meta["source"]["upload"] == {"width": 64,
                                                                                                 "height": 48}
        assert client.get_frame(cue="my photo").frame_id == job["frame_id"]
    header, rgb, depth = library.load(job["frame_id"])
    np.testing.assert_array_equal(depth, frame.depth)


@pytest.mark.parametrize("image, data, message", [
    ({"width": 64, "height": 48, "format": "rgb8"}, b"\0" * 100, "has 100 bytes; 64x48 rgb8 needs 9216"),
    ({"width": 64, "height": 48, "format": "rgba8"}, b"\0" * 9216, "format must be 'rgb8'"),
    ({"width": 0, "height": 48, "format": "rgb8"}, b"", "integers in [1, 16384]"),
    ({"width": 16384, "height": 16384, "format": "rgb8"}, b"", "at most 33,554,432 pixels"),
    ({"width": 8, "height": 8, "format": "rgb8"}, b"\0" * 192, "too small (at least 16 px a side)"),
    ({"width": 64, "height": 48}, b"\0" * 9216, "'image' must be"),
    ({"width": 64, "height": 48, "format": "rgb8"}, None, "data part is missing"),
])
def test_bad_uploads_get_an_error_and_nothing_is_queued(make_server, estimator, image, data, message):
    server = make_server(estimator=estimator)
    with peer(server, zmq.DEALER) as sock:
        body = wire.encode_request("u-1", "estimate", {"image": image})
        sock.send_multipart([body] if data is None else [body, data])
        reply = wire.decode_reply(sock.recv())
    assert not reply["ok"] and reply["id"] == "u-1" and message in reply["error"]["message"], reply
    with CommandClient(server.commands) as client:
        assert client.status()["queued"] == 0 and client.status()["state"] == "idle"


def test_a_data_part_is_refused_by_commands_that_take_none(server):
    with peer(server, zmq.DEALER) as sock:
        sock.send_multipart([wire.encode_request("p-1", "ping"), b"stray"])
        reply = wire.decode_reply(sock.recv())
    assert not reply["ok"] and "ping takes no data part" in reply["error"]["message"]


def test_without_an_estimator_the_command_says_how_to_get_one(server):
    with CommandClient(server.commands) as client, pytest.raises(CommandError, match="serve --estimator"):
        client.estimate(photo())


def test_uploads_wait_in_bounded_memory(make_server, estimator):
    from generator.backends.demo import DemoBackend

    server = make_server(DemoBackend(step_delay=0.5), estimator=estimator)
    with CommandClient(server.commands, timeout=10) as client:
        blocker = client.generate(prompt="hold the worker", **SMALL)["job_id"]
        jobs = [client.estimate(photo(seed=i))["job_id"] for i in range(4)]
        with pytest.raises(CommandError, match="4 uploaded images are waiting already"):
            client.estimate(photo())
        client.cancel(jobs[0])
        jobs.append(client.estimate(photo(seed=9))["job_id"])  # a cancelled job's image makes room
        client.cancel(blocker)
        assert [wait_job(client, j)["state"] for j in jobs] == ["cancelled"] + ["done"] * 4


def test_the_depth_check_reports_agreement_in_the_header_and_status(make_server, estimator):
    server = make_server(estimator=estimator, depth_check=True)
    with CommandClient(server.commands, timeout=10) as client:
        job = wait_job(client, client.generate(prompt="a room", seed=3, **SMALL)["job_id"])
        check = client.get_frame(job["frame_id"]).meta["depth_check"]
        assert set(check) >= {"model", "abs_rel", "delta1", "pixels"} and 0 <= check["delta1"] <= 1
        assert check["abs_rel"] >= 0 and check["pixels"] > 0
        status = wait_for(lambda: (s := client.status())["depth_check"] and s, what="the status's depth check")
        assert status["depth_check"]["job_id"] == job["id"] and status["depth_check"]["abs_rel"] == check["abs_rel"]


def test_the_depth_check_is_near_zero_for_an_agreeing_estimator(make_server):
    """A stand-in estimator that returns the frame's own depth (up to scale and shift) agrees exactly."""
    from generator.backends.demo import DemoBackend

    class Echo:
        model, family, kind, metric = "echo", "depth_anything", "relative", False

        def predict(self, rgb, flip=False):
            result = DemoBackend().generate(dict(params), lambda s, n: None, lambda: False)
            return 3.0 * result.depth.astype(np.float32) / 65535 + 0.5

    from td_bridge.params import validate_generation

    params = validate_generation({"prompt": "a room", "seed": 3, "width": 96, "height": 64, "steps": 2})  # not 2:1
    server = make_server(estimator=lambda device: Echo(), depth_check=True)
    with CommandClient(server.commands, timeout=10) as client:
        job = wait_job(client, client.generate(**params)["job_id"])
        check = client.get_frame(job["frame_id"]).meta["depth_check"]
    assert check["abs_rel"] < 1e-3 and check["delta1"] == 1.0, check


def test_depth_check_needs_an_estimator():
    from generator.backends.demo import DemoBackend
    from generator.serving.server import GeneratorServer

    with pytest.raises(ValueError, match="needs an estimator"):
        GeneratorServer(DemoBackend(), frames_address="tcp://127.0.0.1:*", commands_address="tcp://127.0.0.1:*",
                        depth_check=True)


def test_pregenerate_estimates_the_cues_that_name_an_image(tmp_path):
    from PIL import Image

    from conftest import run_cli
    from generator.library import FrameLibrary

    model = build("depth_anything", tmp_path / "tiny")
    Image.fromarray(photo(48, 96)).save(tmp_path / "photo.png")
    cues = tmp_path / "show.toml"
    cues.write_text('[[cue]]\nname = "photo"\nimage = "photo.png"\npano = "no"\n\n'
                    '[[cue]]\nname = "room"\nprompt = "a room"\nwidth = 128\nheight = 64\nsteps = 1\n', encoding="utf-8")
    lib = ("--model", "demo", "--estimator", str(model), "--library", str(tmp_path / "lib"))
    first = run_cli("pregenerate", str(cues), *lib, timeout=120)
    assert first.returncode == 0 and "2 cues, 0 already" in first.stdout, first.stderr
    kept = FrameLibrary(tmp_path / "lib")
    entry = kept.latest_for_cue("photo")
    assert entry.model == str(model) and entry.params["image"] == str(tmp_path / "photo.png")
    header, rgb, depth = kept.load(entry.frame_id)
    np.testing.assert_array_equal(rgb, photo(48, 96))
    assert header["backend"] == "depth-estimation" and header["params"]["image_sha256"] == entry.params["image_sha256"]
    assert run_cli("pregenerate", str(cues), *lib, timeout=120).stdout.startswith("2 cues, 2 already")
    Image.fromarray(photo(48, 96, seed=1)).save(tmp_path / "photo.png")  # a new photo under the same name
    assert run_cli("pregenerate", str(cues), *lib, timeout=120).stdout.startswith("2 cues, 1 already")


@pytest.mark.parametrize("cue, message", [
    ('image = "missing.png"', "missing.png: no such file"),
    ('image = "notes.txt"', "not an image Pillow can read"),
    ('image = "photo.png"\nsteps = 3', "an image cue takes only flip, pano, views; not steps"),
    ('image = "photo.png"\npano = "sometimes"', "pano"),
    ('image = ""', "image must be a path"),
])
def test_image_cues_are_checked_with_the_list(tmp_path, cue, message):
    from PIL import Image

    from generator.cues import read_cues
    from td_bridge.params import ParamError

    Image.fromarray(photo()).save(tmp_path / "photo.png")
    (tmp_path / "notes.txt").write_text("not a picture")
    (tmp_path / "show.toml").write_text(f'[[cue]]\nname = "a"\n{cue}\n', encoding="utf-8")
    with pytest.raises(ParamError, match=re.escape(message)):
        read_cues(tmp_path / "show.toml")
