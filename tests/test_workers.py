"""Several workers on one queue (generator.serving.workers): two demo workers run two jobs at once, headers and status
name the workers, a lost device stops only its worker, out of memory and other failures fail only the job, cancel
reaches a job on any worker, live runs on the first worker beside jobs on the others; serve's --device parsing."""

import time

import pytest

from conftest import Served, run_cli, wait_for
from generator.backends import DemoBackend
from generator.serving.workers import LOST_DEVICE, OUT_OF_MEMORY, device_fault, parse_devices
from td_bridge.receiver import CommandClient, CommandError
from test_live import Collector

DELAY = 0.05  # seconds per demo step
SMALL = {"width": 128, "height": 64, "steps": 2}
LOST = RuntimeError("CUDA error: an illegal memory access was encountered")


class OutOfMemoryError(RuntimeError):
    """Named as torch's (torch.cuda.OutOfMemoryError), which the server recognises by name."""


class FailsOn(DemoBackend):
    """The demo backend, except that the prompt "boom" raises ``error`` after a few steps' time."""

    def __init__(self, error: Exception, step_delay: float = DELAY) -> None:
        super().__init__(step_delay=step_delay)
        self.error = error

    def generate(self, params, progress, cancelled):
        if params["prompt"] == "boom":
            time.sleep(4 * self.step_delay)
            raise self.error
        return super().generate(params, progress, cancelled)


def job_of(client, job_id, states=("done", "cancelled", "failed"), timeout=10.0):
    return wait_for(lambda: (j := client.job(job_id))["state"] in states and j, timeout, f"job {job_id}")


def workers(client):
    return client.status()["workers"]


def running_on(client, job_id):
    """The index of the worker running ``job_id`` (waits until one does)."""
    return wait_for(lambda: next((w["index"] + 1 for w in workers(client) if w["job_id"] == job_id), None),
                    what=f"a worker to run {job_id}") - 1


def test_two_workers_run_two_jobs_at_once(make_server):
    srv = make_server([DemoBackend(step_delay=0.1), DemoBackend(step_delay=0.1)], devices=["cuda:0", "cuda:1"])
    frames = Collector(srv.frames)
    try:
        with CommandClient(srv.commands) as c:
            assert [(w["index"], w["device"], w["state"], w["job_id"], w["error"]) for w in workers(c)] == [
                (0, "cuda:0", "idle", None, None), (1, "cuda:1", "idle", None, None)]
            ids = [c.generate(prompt="a room", seed=seed, width=128, height=64, steps=10)["job_id"] for seed in (1, 2)]
            busy = wait_for(lambda: (w := workers(c)) and {x["job_id"] for x in w} == set(ids) and w, what="both busy")
            assert {w["state"] for w in busy} == {"busy"} and c.status()["state"] == "generating"
            done = [job_of(c, job_id) for job_id in ids]
        wait_for(lambda: len(frames.frames) == 2, what="both frames")
    finally:
        frames.close()
    assert [d["state"] for d in done] == ["done", "done"]
    by_job = {f.meta["job_id"]: f.meta["worker"] for f in frames.frames}
    assert sorted(by_job) == sorted(ids)
    assert sorted((w["index"], w["device"]) for w in by_job.values()) == [(0, "cuda:0"), (1, "cuda:1")]
    # at the same time: each started before the other finished, and both took well under the two jobs' sum
    first, second = done
    assert first["started_at"] < second["finished_at"] and second["started_at"] < first["finished_at"]
    wall = max(d["finished_at"] for d in done) - min(d["started_at"] for d in done)
    assert wall < 1.6 * max(d["finished_at"] - d["started_at"] for d in done)


def test_a_lost_device_stops_its_worker_and_the_other_keeps_serving(make_server):
    srv = make_server([FailsOn(LOST), FailsOn(LOST)], devices=["cuda:0", "cuda:1"])
    with CommandClient(srv.commands) as c:
        long = c.generate(prompt="a room", seed=1, width=128, height=64, steps=20)["job_id"]
        healthy = running_on(c, long)
        boom = c.generate(prompt="boom", seed=2, **SMALL)["job_id"]  # the other worker is the only one free
        failed = job_of(c, boom)
        lost = 1 - healthy
        assert failed["state"] == "failed"
        assert f"device cuda:{lost} failed (worker {lost} stops)" in failed["error"]
        assert "illegal memory access" in failed["error"]
        state = workers(c)[lost]
        assert state["state"] == "failed" and "illegal memory access" in state["error"]
        more = [c.generate(prompt="a forest", seed=seed, **SMALL)["job_id"] for seed in (3, 4)]
        assert [job_of(c, job_id)["state"] for job_id in [long, *more]] == ["done"] * 3
        frames = [c.get_frame(job_of(c, job_id)["frame_id"]) for job_id in more]
        assert {f.meta["worker"]["index"] for f in frames} == {healthy}
        assert workers(c)[lost]["state"] == "failed" and workers(c)[healthy]["state"] == "idle"


def test_when_every_device_failed_jobs_are_refused(make_server):
    srv = make_server(FailsOn(LOST))
    with CommandClient(srv.commands) as c:
        boom = c.generate(prompt="boom", seed=1, **SMALL)["job_id"]
        waiting = c.generate(prompt="a room", seed=2, **SMALL)["job_id"]  # queued while boom runs
        assert job_of(c, boom)["state"] == "failed"
        after = job_of(c, waiting)
        assert after["state"] == "failed" and "every device failed" in after["error"]
        with pytest.raises(CommandError) as info:
            c.generate(prompt="a room", seed=3, **SMALL)
        assert info.value.code == "unavailable" and "cpu" in str(info.value)
        assert workers(c)[0]["state"] == "failed"


@pytest.mark.parametrize("error, message", [
    (OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), "out of memory on cpu (worker 0 goes on)"),
    (ValueError("latents have the wrong shape"), "ValueError: latents have the wrong shape"),
])
def test_out_of_memory_and_other_failures_fail_only_the_job(make_server, error, message):
    srv = make_server(FailsOn(error))
    with CommandClient(srv.commands) as c:
        failed = job_of(c, c.generate(prompt="boom", seed=1, **SMALL)["job_id"])
        assert failed["state"] == "failed" and message in failed["error"]
        assert workers(c)[0] | {"job_id": None} == {"index": 0, "device": "cpu", "state": "idle", "job_id": None,
                                                    "error": None}
        assert job_of(c, c.generate(prompt="a room", seed=2, **SMALL)["job_id"])["state"] == "done"


def test_device_faults_are_read_from_torch_exceptions():
    torch = pytest.importorskip("torch")
    assert device_fault(torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB")) == OUT_OF_MEMORY
    assert device_fault(RuntimeError("MPS backend out of memory")) == OUT_OF_MEMORY
    assert device_fault(RuntimeError("CUDA error: device-side assert triggered")) == LOST_DEVICE
    assert device_fault(torch.AcceleratorError("CUDA error: unspecified launch failure")) == LOST_DEVICE
    assert device_fault(RuntimeError("mat1 and mat2 shapes cannot be multiplied")) is None
    assert device_fault(ValueError("CUDA error: not a RuntimeError")) is None


def test_cancel_reaches_a_job_on_the_second_worker(make_server):
    srv = make_server([DemoBackend(step_delay=DELAY), DemoBackend(step_delay=DELAY)])
    with CommandClient(srv.commands) as c:
        first = c.generate(prompt="a room", seed=1, width=128, height=64, steps=30)["job_id"]
        first_on = running_on(c, first)
        second = c.generate(prompt="a room", seed=2, width=128, height=64, steps=40)["job_id"]
        assert running_on(c, second) == 1 - first_on
        wait_for(lambda: c.job(second)["step"] >= 2, what="two steps")
        assert c.cancel(second) == [second]
        cancelled = job_of(c, second)
        assert cancelled["state"] == "cancelled" and cancelled["step"] <= 20 and cancelled["frame_id"] is None
        assert c.job(first)["state"] == "running"
        assert job_of(c, first)["state"] == "done"


def test_live_runs_on_the_first_worker_while_the_second_runs_a_job(make_server):
    srv = make_server([DemoBackend(step_delay=0.005), DemoBackend(step_delay=0.1)])
    frames = Collector(srv.frames)
    try:
        with CommandClient(srv.commands) as c:
            c.live(on=True, prompt="a room", seed=1, live_fps=20, transition=0, **SMALL)
            wait_for(lambda: frames.frames, what="the first live frame")
            c.live(prompt="a forest", transition=30)  # a long blend: live frames keep coming
            wait_for(lambda: len(frames.frames) >= 3, what="live frames")
            assert workers(c)[0]["state"] == "live"
            job_id = c.generate(prompt="a forest", seed=3, width=128, height=64, steps=10)["job_id"]
            assert running_on(c, job_id) == 1
            job = job_of(c, job_id)
            assert job["state"] == "done"
            c.live(on=False)
        wait_for(lambda: any(f.meta["job_id"] == job_id for f in frames.frames), what="the job's frame")
    finally:
        frames.close()
    made = [f for f in frames.frames if f.meta["job_id"] == job_id]
    live = [f for f in frames.frames if f.meta["kind"] == "live"]
    assert [f.meta["worker"]["index"] for f in made] == [1] and {f.meta["worker"]["index"] for f in live} == {0}
    during = [f for f in live if job["started_at"] < f.meta["created_at"] < job["finished_at"]]
    assert len(during) >= 5, f"{len(during)} live frames while a {job['finished_at'] - job['started_at']:.2f} s job ran"


def test_device_lists_are_parsed_and_checked(monkeypatch):
    assert parse_devices("auto") == ["auto"]
    assert parse_devices("cpu,cpu") == ["cpu", "cpu"]
    assert parse_devices(" cuda:0, cuda:1 ") == ["cuda:0", "cuda:1"]
    for text, message in [("gpu", "'gpu' is not a device"), ("cuda:0,", "'' is not a device"),
                          ("cuda:x,cpu", "'cuda:x' is not a device"), ("auto,cpu", "auto picks one device"),
                          ("cuda:1,cuda:1", "cuda:1 named twice"), ("cuda,cuda:0", "cuda:0 named twice"),
                          ("mps,mps", "mps named twice"), (",".join(["cpu"] * 65), "at most 64")]:
        with pytest.raises(ValueError, match=message):
            parse_devices(text)
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="sees no CUDA GPU"):
        parse_devices("all")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    assert parse_devices("all") == ["cuda:0", "cuda:1", "cuda:2"]


def test_serve_refuses_a_bad_device_list():
    result = run_cli("serve", "--model", "demo", "--device", "cuda:0,gpu1", "--osc-port", "0",
                     "--frames", "tcp://127.0.0.1:*", "--commands", "tcp://127.0.0.1:*")
    assert result.returncode == 2 and "'gpu1' is not a device" in result.stderr, result.stderr


def test_serve_runs_one_worker_per_listed_device():
    served = Served("--model", "demo", "--no-library", "--osc-port", "0", "--device", "cpu,cpu")
    try:
        assert any("on cpu, cpu" in line for line in served.log)
        with CommandClient(served.commands) as c:
            assert [(w["index"], w["device"]) for w in workers(c)] == [(0, "cpu"), (1, "cpu")]
            job = job_of(c, c.generate(prompt="a room", seed=1, **SMALL)["job_id"])
            assert job["state"] == "done" and c.get_frame(job["frame_id"]).meta["worker"]["device"] == "cpu"
    finally:
        assert served.stop() == 0


def test_each_worker_loads_its_own_estimator_on_its_own_device(make_server):
    import numpy as np

    class Luminance:  # a stand-in depth model: brighter is nearer
        model, family, kind, metric = "luminance", "depth_anything", "relative", False

        def predict(self, rgb, flip=False):
            return rgb.astype("float32").mean(axis=2) / 255.0

    loads = []
    srv = make_server([DemoBackend(step_delay=0.05), DemoBackend(step_delay=0.05)], devices=["cuda:0", "cuda:1"],
                      estimator=lambda device: loads.append(device) or Luminance())
    rgb = np.random.default_rng(0).integers(0, 255, (32, 64, 3), dtype=np.uint8)
    with CommandClient(srv.commands) as c:
        blocker = c.generate(prompt="a room", seed=1, width=128, height=64, steps=20)["job_id"]
        first = running_on(c, blocker)
        estimate = c.estimate(rgb)["job_id"]  # the other worker takes it
        assert job_of(c, estimate)["state"] == "done"
        job_of(c, blocker)
        again = c.estimate(rgb)["job_id"]  # whichever worker takes it, it loads nothing it has
        assert job_of(c, again)["state"] == "done"
    assert loads[0] == ["cuda:0", "cuda:1"][1 - first] and len(loads) == len(set(loads)) <= 2
