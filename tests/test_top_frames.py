"""Frames for TouchDesigner's Script TOPs: rows flipped, contiguous, prepared off the main thread."""

import threading

import numpy as np
import pytest

from conftest import SMALL, wait_for
from td_bridge.protocol import Frame
from td_bridge.receiver import CommandClient, FrameReceiver
from td_bridge.top_frames import TopFrame, from_top, mask_from_top, to_top


def test_to_top_flips_rows_and_adds_the_channel_axis():
    rgb = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
    depth = np.arange(4 * 6, dtype=np.uint16).reshape(4, 6) * 1000
    rgb.flags.writeable = depth.flags.writeable = False  # as decoded from a ZeroMQ buffer
    top = to_top(Frame(rgb, depth, {"frame_id": "f", "seq": 3}))
    assert top.rgb.shape == (4, 6, 3) and top.rgb.dtype == np.uint8
    assert top.depth.shape == (4, 6, 1) and top.depth.dtype == np.uint16
    assert top.rgb.flags.c_contiguous and top.depth.flags.c_contiguous
    np.testing.assert_array_equal(top.rgb[0], rgb[3])  # TD's row 0 is the image's bottom row
    np.testing.assert_array_equal(top.depth[:, :, 0], depth[::-1])
    assert (top.frame_id, top.seq, top.width, top.height) == ("f", 3, 6, 4)
    assert top.poles == pytest.approx((depth[0].mean() / 65535, depth[-1].mean() / 65535), rel=1e-6)


def test_from_top_turns_a_tops_image_into_an_upload():
    rgba = np.zeros((3, 4, 4), np.float32)  # numpyArray(): float, row 0 at the bottom
    rgba[..., 0] = np.array([0.0, 0.5, 1.0], np.float32)[:, None]
    rgba[..., 1], rgba[..., 2], rgba[..., 3] = -0.5, 2.0, 0.25  # out of [0, 1]: clipped; alpha dropped
    rgb = from_top(rgba)
    assert rgb.shape == (3, 4, 3) and rgb.dtype == np.uint8 and rgb.flags.c_contiguous
    assert rgb[:, 0].tolist() == [[255, 0, 255], [128, 0, 255], [0, 0, 255]]  # rows top first
    grey = from_top(rgba[..., :1])
    assert grey[:, 0].tolist() == [[255] * 3, [128] * 3, [0] * 3]
    with pytest.raises(ValueError, match=r"\(H, W, 1-4\)"):
        from_top(np.zeros((3, 4), np.float32))


def test_mask_from_top_takes_the_first_channel_top_first_at_the_frames_size():
    rgba = np.zeros((2, 4, 4), np.float32)  # numpyArray(): row 0 at the bottom
    rgba[1, 2:, 0] = 1.0  # the top row's right half white in red
    rgba[0, :1, 0] = 0.5  # the bottom row's first pixel grey
    rgba[..., 1:] = 1.0  # green, blue and alpha do not count
    mask = mask_from_top(rgba)
    assert mask.dtype == np.uint8 and mask.flags.c_contiguous
    assert mask.tolist() == [[0, 0, 255, 255], [128, 0, 0, 0]]
    big = mask_from_top(rgba, (8, 4))  # (width, height): each pixel becomes a 2x2 block
    assert big.shape == (4, 8) and np.array_equal(big, np.repeat(np.repeat(mask, 2, 0), 2, 1))
    small = mask_from_top(np.repeat(np.repeat(rgba, 3, 0), 3, 1), (4, 2))  # block centres: the 3x3 blocks' own
    assert np.array_equal(small, mask)
    with pytest.raises(ValueError, match=r"\(H, W, 1-4\)"):
        mask_from_top(np.zeros((0, 4, 1), np.float32))


def test_the_receiver_prepares_frames_on_its_own_thread(server):
    threads = []

    def prepare(frame):
        threads.append(threading.current_thread())
        return to_top(frame)

    with FrameReceiver(server.frames, prepare=prepare) as rx, CommandClient(server.commands) as client:
        wait_for(lambda: rx.connected)
        client.generate(prompt="a desert at noon", seed=2, **SMALL)
        top = wait_for(rx.take, what="prepared frame")
        plain = client.get_frame()
    assert isinstance(top, TopFrame) and top.frame_id == plain.frame_id
    np.testing.assert_array_equal(top.rgb[::-1], plain.rgb)
    np.testing.assert_array_equal(top.depth[::-1, :, 0], plain.depth)
    assert threads and all(t is not threading.main_thread() for t in threads)


def test_a_failing_prepare_is_counted_and_the_receiver_goes_on(server):
    calls = []

    def prepare(frame):
        calls.append(frame.seq)
        if len(calls) == 1:
            raise MemoryError("no room for the copy")
        return to_top(frame)

    with FrameReceiver(server.frames, prepare=prepare) as rx, CommandClient(server.commands) as client:
        wait_for(lambda: rx.connected)
        client.generate(prompt="p", seed=1, **SMALL)
        wait_for(lambda: rx.stats().errors == 1, what="the error to be counted")
        assert "prepare: MemoryError('no room for the copy')" == rx.stats().last_error and rx.latest() is None
        client.generate(prompt="p", seed=2, **SMALL)
        assert isinstance(wait_for(rx.take, what="next frame"), TopFrame)
