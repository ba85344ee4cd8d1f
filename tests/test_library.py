"""The frame library: durable saves, rebuild after crashes, recall by id and cue, CLI."""

import errno
import json
import os
import re
import signal
import time
import zipfile

import numpy as np
import pytest

from conftest import SMALL, Served, run_cli, wait_for
from generator import library as library_module
from generator.backends.demo import DemoBackend
from generator.frames import make_frame
from generator.library import JOURNAL, PARTIAL, FrameLibrary, LibraryError
from td_bridge.params import validate_generation
from td_bridge.receiver import CommandClient, CommandError, FrameReceiver


def frame(prompt="a gallery interior", seed=1, cue="", **size):
    params = validate_generation({"prompt": prompt, "seed": seed, "cue": cue, **(size or SMALL)})
    header, result = make_frame(DemoBackend(), params, lambda step, total: None, lambda: False)
    return header, result.rgb, result.depth


def saved(library, **kwargs):
    header, rgb, depth = frame(**kwargs)
    return library.save(header, rgb, depth), rgb, depth


def entries_on_disk(root):
    return sorted(p for p in root.glob("*/*") if p.parent.name != PARTIAL)


# ------------------------------------------------------------------ FrameLibrary


def test_save_is_durable_and_reloads_after_a_restart(tmp_path):
    library = FrameLibrary(tmp_path)
    entry, rgb, depth = saved(library, prompt="a desert at night", seed=5, cue="act 1")
    day = entry.frame_id[:8]
    assert entry.path == tmp_path / day / entry.frame_id
    assert sorted(p.name for p in entry.path.iterdir()) == ["depth.png", "metadata.json", "rgb.png"]
    assert list((tmp_path / PARTIAL).iterdir()) == []
    meta = json.loads((entry.path / "metadata.json").read_text(encoding="utf-8"))
    assert meta["prompt"] == "a desert at night" and meta["seed"] == 5 and meta["model"] == "demo"
    assert meta["params"]["cue"] == "act 1" and meta["protocol"] == 1 and "generate_s" in meta["timings"]

    reopened = FrameLibrary(tmp_path)
    assert len(reopened) == 1 and reopened.skipped == []
    header, rgb2, depth2 = reopened.load(entry.frame_id)
    assert header["frame_id"] == entry.frame_id and depth2.dtype == np.uint16
    np.testing.assert_array_equal(rgb2, rgb)
    np.testing.assert_array_equal(depth2, depth)


def test_rebuild_removes_interrupted_writes_and_skips_broken_entries(tmp_path, caplog):
    library = FrameLibrary(tmp_path)
    good, _, _ = saved(library)
    broken = {}
    for problem in ("no_metadata", "bad_json", "other_id", "empty_png", "no_depth"):
        entry, _, _ = saved(library, prompt=problem)
        broken[problem] = entry.path
    (broken["no_metadata"] / "metadata.json").unlink()
    (broken["bad_json"] / "metadata.json").write_text("{ torn", encoding="utf-8")
    meta = json.loads((broken["other_id"] / "metadata.json").read_text(encoding="utf-8"))
    (broken["other_id"] / "metadata.json").write_text(json.dumps({**meta, "frame_id": "x"}), encoding="utf-8")
    (broken["empty_png"] / "rgb.png").write_bytes(b"")
    (broken["no_depth"] / "depth.png").unlink()
    interrupted = tmp_path / PARTIAL / "20261125T000000Z-00000000-abc"
    interrupted.mkdir()
    (interrupted / "rgb.png").write_bytes(b"\x89PNG half")
    (good.path.parent / "holiday photos").mkdir()
    (good.path.parent / ".DS_Store").write_bytes(b"finder")
    (tmp_path / "notes.txt").write_text("a user's file", encoding="utf-8")

    reopened = FrameLibrary(tmp_path)  # the journal vouches for the six frames until verify()
    assert not interrupted.exists()
    assert len(reopened) == 6 and len(reopened.skipped) == 1 and "not a frame folder" in reopened.skipped[0]
    problems = reopened.verify()
    assert [e.frame_id for e in reopened.find()] == [good.frame_id]
    assert len(problems) == 5 and len(reopened.skipped) == 6  # not .DS_Store, not notes.txt
    text = "\n".join(problems)
    for path in broken.values():
        assert str(path) in text
    assert "missing metadata.json" in text and "missing depth.png" in text and "is empty" in text
    assert "does not name this frame" in text and "Expecting property name" in text
    assert "library entry skipped" in caplog.text

    for start in (FrameLibrary(tmp_path), FrameLibrary(tmp_path)):  # the journal no longer lists them,
        assert [e.frame_id for e in start.find()] == [good.frame_id]  # so each start reads those folders
        assert len(start.skipped) == 6 and start.verify() == []
    (tmp_path / JOURNAL).unlink()
    assert [e.frame_id for e in FrameLibrary(tmp_path).find()] == [good.frame_id]


def test_a_damaged_journal_costs_nothing_but_time(tmp_path):
    library = FrameLibrary(tmp_path)
    kept = [saved(library, seed=seed)[0] for seed in range(3)]
    journal = tmp_path / JOURNAL
    lines = journal.read_bytes().splitlines(keepends=True)
    journal.write_bytes(b"not json\n" + lines[0] + b'{"add": {"frame_id": 5}}\n' + lines[1][:20])  # torn tail
    reopened = FrameLibrary(tmp_path)
    assert sorted(e.frame_id for e in reopened.find()) == sorted(e.frame_id for e in kept)
    assert reopened.skipped == [] and reopened.verify() == []
    assert len(journal.read_bytes().splitlines()) == 3  # rewritten whole


def test_frames_added_or_deleted_by_another_process_are_seen(tmp_path):
    server_side, other = FrameLibrary(tmp_path), FrameLibrary(tmp_path)  # e.g. serve and pregenerate
    entry, _, _ = saved(other, cue="late addition")
    assert server_side.get(entry.frame_id) is not None
    assert server_side.latest_for_cue("late addition").frame_id == entry.frame_id
    assert server_side.load(entry.frame_id)[0]["frame_id"] == entry.frame_id
    other.delete(entry.frame_id)
    assert server_side.get(entry.frame_id) is None and len(server_side) == 0
    compacted = FrameLibrary(tmp_path)  # a start that rewrites the journal: the others read it anew
    again, _, _ = saved(compacted)
    assert [e.frame_id for e in server_side.find()] == [again.frame_id]
    assert [e.frame_id for e in other.find()] == [again.frame_id]


def test_find_cue_delete_and_zip_export(tmp_path):
    library = FrameLibrary(tmp_path)
    first, _, _ = saved(library, prompt="A Misty Forest", cue="prologue")
    second, _, _ = saved(library, prompt="a desert", cue="prologue", seed=2)
    other, _, _ = saved(library, prompt="an ocean", cue="finale")
    assert [e.frame_id for e in library.find("misty")] == [first.frame_id]
    assert [e.frame_id for e in library.find("PROLOGUE")] == [second.frame_id, first.frame_id]
    assert [e.frame_id for e in library.find(limit=2)] == [other.frame_id, second.frame_id]
    assert library.latest_for_cue("prologue").frame_id == second.frame_id
    assert library.latest_for_cue("intermission") is None

    archive = tmp_path / "selection.zip"
    assert library.export_zip([first.frame_id, other.frame_id], archive) == 2
    with zipfile.ZipFile(archive) as z:
        names = sorted(z.namelist())
        assert names == sorted(f"{e.frame_id}/{n}" for e in (first, other)
                               for n in ("depth.png", "metadata.json", "rgb.png"))
        assert z.read(f"{first.frame_id}/rgb.png") == (first.path / "rgb.png").read_bytes()
    with pytest.raises(LibraryError, match="not in the library"):
        library.export_zip(["20991231T000000Z-00000000"], tmp_path / "none.zip")

    library.delete(second.frame_id)
    assert not second.path.exists() and library.latest_for_cue("prologue").frame_id == first.frame_id
    assert len(FrameLibrary(tmp_path)) == 2
    with pytest.raises(LibraryError, match="not in the library"):
        library.delete(second.frame_id)


def test_a_failed_write_leaves_nothing_behind(tmp_path, monkeypatch):
    library = FrameLibrary(tmp_path)
    header, rgb, depth = frame()
    calls = []

    def disk_full(path, data):
        calls.append(path.name)
        if path.name == "depth.png":
            raise OSError(errno.ENOSPC, "No space left on device")
        path.write_bytes(data)

    monkeypatch.setattr(library_module, "_write_file", disk_full)
    with pytest.raises(LibraryError, match=f"could not save frame {header['frame_id']}.*No space left"):
        library.save(header, rgb, depth)
    assert calls == ["rgb.png", "depth.png"]
    assert list((tmp_path / PARTIAL).iterdir()) == [] and entries_on_disk(tmp_path) == []
    assert len(library) == 0 and library.get(header["frame_id"]) is None


def test_a_library_path_that_is_a_file_is_a_clear_error(tmp_path):
    blocker = tmp_path / "library"
    blocker.write_text("in the way", encoding="utf-8")
    with pytest.raises(LibraryError, match=f"cannot create the frame library at {blocker}"):
        FrameLibrary(blocker)


# ------------------------------------------------------------------ server


def test_generated_frames_are_saved_then_recalled_by_cue_after_a_restart(make_server, tmp_path):
    first = make_server(library=FrameLibrary(tmp_path))
    with CommandClient(first.commands) as client:
        job = client.generate(prompt="a cathedral", seed=4, cue="act 2", **SMALL)
        done = wait_for(lambda: (j := client.job(job["job_id"]))["state"] == "done" and j, what="job")
        assert done["saved"] is True and done["error"] is None
        assert client.status()["library"] == {"root": str(tmp_path), "frames": 1}
        original = client.get_frame(done["frame_id"])
    first.close()

    second = make_server(library=FrameLibrary(tmp_path))  # nothing in memory: everything from disk
    with FrameReceiver(second.frames) as rx, CommandClient(second.commands) as client:
        wait_for(lambda: rx.connected)
        reply = client.recall(cue="act 2")
        assert reply["frame_id"] == done["frame_id"]
        recalled = wait_for(rx.latest, what="recalled frame")
        assert recalled.frame_id == done["frame_id"] and recalled.meta["prompt"] == "a cathedral"
        assert recalled.meta["seq"] == reply["seq"] and "recalled_at" in recalled.meta
        np.testing.assert_array_equal(recalled.rgb, original.rgb)
        np.testing.assert_array_equal(recalled.depth, original.depth)
        by_id = client.get_frame(done["frame_id"])
        np.testing.assert_array_equal(by_id.depth, original.depth)
        assert client.recall(done["frame_id"])["frame_id"] == done["frame_id"]

        listing = client.library(search="CATHEDRAL")
        assert listing["total"] == 1 and listing["frames"][0]["cue"] == "act 2"
        assert client.library(search="forest")["frames"] == []
        client.delete(done["frame_id"])
        assert client.library()["total"] == 0
        for call in (lambda: client.recall(cue="act 2"), lambda: client.get_frame(done["frame_id"]),
                     lambda: client.delete(done["frame_id"])):
            with pytest.raises(CommandError) as info:
                call()
            assert info.value.code == "not_found"


def test_a_recalled_frame_stays_in_memory_and_latest_means_on_screen(make_server, tmp_path, monkeypatch):
    library = FrameLibrary(tmp_path)
    older, _, _ = saved(library, cue="older")
    newer, _, _ = saved(library, cue="newer")
    srv = make_server(library=library, history=4)
    reads = []
    original_load = library.load
    monkeypatch.setattr(library, "load", lambda frame_id: reads.append(frame_id) or original_load(frame_id))
    with CommandClient(srv.commands) as client:
        server_id = client.ping()["server_id"]
        first = client.get_frame()  # this run has published nothing yet: the library's newest
        assert (first.frame_id, first.seq, first.meta["server_id"]) == (newer.frame_id, 0, server_id)
        assert first.meta["sent_at"] >= first.meta["created_at"]
        client.recall(cue="newer")
        client.recall(cue="newer")
        assert reads == [newer.frame_id]  # read once, then from memory
        fetched = client.get_frame(older.frame_id)  # fetched, not shown
        assert (fetched.frame_id, fetched.seq, fetched.meta["server_id"]) == (older.frame_id, 0, server_id)
        latest = client.get_frame()  # as last published: the second recall
        assert (latest.frame_id, latest.seq, latest.meta["server_id"]) == (newer.frame_id, 2, server_id)
        assert "recalled_at" in latest.meta and latest.meta["sent_at"] <= time.time()
        assert client.status()["last_frame_id"] == newer.frame_id
        client.delete(newer.frame_id)
        assert client.status()["last_frame_id"] is None
        assert client.get_frame().frame_id == older.frame_id  # back to the library's newest


def test_latest_with_an_empty_library_says_so(make_server, tmp_path):
    srv = make_server(library=FrameLibrary(tmp_path))
    with CommandClient(srv.commands) as client:
        assert client.status()["library"] == {"root": str(tmp_path), "frames": 0}  # an empty library is no null
        with pytest.raises(CommandError, match="no frame has been published yet and the library is empty"):
            client.get_frame()


@pytest.mark.parametrize(
    "cmd, args, message",
    [
        ("recall", {"cue": ""}, "1-100 characters"),
        ("recall", {"cue": 5}, "1-100 characters"),
        ("recall", {"cue": "a", "frame_id": "latest"}, "one of 'frame_id', 'cue' or 'name'"),
        ("get_frame", {"frame_id": "../etc"}, "must be an id"),
        ("library", {"search": 3}, "'search' must be text"),
        ("library", {"limit": 0}, r"'limit' must be an integer in \[1, 10000\]"),
        ("library", {"limit": True}, "'limit' must be an integer"),
        ("library", {"sort": "name"}, "takes 'search' and 'limit'"),
        ("delete", {}, "valid 'frame_id'"),
        ("delete", {"frame_id": "../../x"}, "valid 'frame_id'"),
    ],
)
def test_bad_library_requests_are_refused(make_server, tmp_path, cmd, args, message):
    srv = make_server(library=FrameLibrary(tmp_path))
    with CommandClient(srv.commands) as client:
        with pytest.raises(CommandError, match=message):
            client.request(cmd, args)
        assert client.ping()["pong"] is True


def test_without_a_library_the_library_commands_say_so(client):
    for cmd, args in (("library", {}), ("delete", {"frame_id": "20261125T000000Z-00000000"})):
        with pytest.raises(CommandError, match="--no-library") as info:
            client.request(cmd, args)
        assert info.value.code == "not_found"
    assert client.status()["library"] is None


def test_a_write_failure_is_reported_and_the_server_keeps_serving(make_server, tmp_path, monkeypatch):
    srv = make_server(library=FrameLibrary(tmp_path))

    def disk_full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    with FrameReceiver(srv.frames) as rx, CommandClient(srv.commands) as client:
        wait_for(lambda: rx.connected)
        with monkeypatch.context() as patch:
            patch.setattr(library_module, "_write_file", disk_full)
            job = client.generate(prompt="p", seed=1, **SMALL)
            done = wait_for(lambda: (j := client.job(job["job_id"]))["state"] == "done" and j, what="job")
        assert done["saved"] is False
        assert done["error"].startswith("not saved to the library: could not save frame")
        assert "No space left on device" in done["error"]
        shown = wait_for(rx.latest, what="the unsaved frame, still published")
        assert shown.frame_id == done["frame_id"]
        assert client.library()["total"] == 0 and list((tmp_path / PARTIAL).iterdir()) == []

        job = client.generate(prompt="p", seed=2, **SMALL)  # the disk has room again
        done = wait_for(lambda: (j := client.job(job["job_id"]))["state"] == "done" and j, what="job")
        assert done["saved"] is True and done["error"] is None
        assert [f["frame_id"] for f in client.library()["frames"]] == [done["frame_id"]]


def test_recall_while_a_generation_runs(make_server, tmp_path):
    library = FrameLibrary(tmp_path)
    kept, rgb, _ = saved(library, prompt="the opening look", cue="opening")
    srv = make_server(DemoBackend(step_delay=0.05), library=library)
    with FrameReceiver(srv.frames) as rx, CommandClient(srv.commands) as client:
        wait_for(lambda: rx.connected)
        job = client.generate(prompt="a slow one", seed=1, width=128, height=64, steps=40)
        wait_for(lambda: client.job(job["job_id"])["step"] >= 2, what="generation under way")
        client.recall(cue="opening")
        recalled = wait_for(rx.latest, what="recalled frame")
        assert recalled.frame_id == kept.frame_id
        np.testing.assert_array_equal(recalled.rgb, rgb)
        running = client.job(job["job_id"])
        assert running["state"] == "running" and running["step"] < 40
        fresh = wait_for(lambda: (f := rx.latest()) and f.meta.get("job_id") == job["job_id"] and f,
                         timeout=10, what="the generated frame")
        assert fresh.seq > recalled.seq and client.library()["total"] == 2


# ------------------------------------------------------------------ crash safety, in subprocesses


# The generator on a slow disk: each file is written half, announced, then finished after a pause,
# so that the test can kill the process at a known point inside a write.
SLOW_DISK = """
import sys, time
import generator.library as library
from generator.__main__ import main

def slow_write(path, data):
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
        f.flush()
        print("half-written", path.name, file=sys.stderr, flush=True)
        time.sleep(0.05)
        f.write(data[len(data) // 2 :])
        f.flush()
        library.os.fsync(f.fileno())

library._write_file = slow_write
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("torn", ["rgb.png", "depth.png", "metadata.json"])
def test_sigkill_in_the_middle_of_a_write_loses_no_acknowledged_frame(tmp_path, torn):
    """Kill the server while it is half-way through writing ``torn``; after a restart every frame
    acknowledged before the kill is whole and the torn one is gone."""
    acknowledged, torn_ids = {}, []  # frame id -> seed
    seed = 0
    for _ in range(2):
        served = Served("--model", "demo", "--library", str(tmp_path), "--queue-size", "1000", "--osc-port", "0",
                        python=("-c", SLOW_DISK))
        try:
            with CommandClient(served.commands, timeout=10) as client:
                jobs = {}
                for _ in range(20):
                    seed += 1
                    jobs[client.generate(prompt="a crash test", seed=seed, width=256, height=128)["job_id"]] = seed
                stop_after = len(acknowledged) + 3
                while len(acknowledged) < stop_after:
                    for job_id in list(jobs):
                        job = client.job(job_id)
                        if job["state"] == "done":
                            assert job["saved"] is True, job
                            acknowledged[job["frame_id"]] = jobs.pop(job_id)
                written = len(served.log)
                wait_for(lambda: any(f"half-written {torn}" in line for line in served.log[written:]),
                         timeout=10, what=f"a write of {torn} under way")
        finally:
            code = served.kill()
        assert code == (1 if os.name == "nt" else -signal.SIGKILL)
        leftovers = list((tmp_path / PARTIAL).iterdir())
        assert len(leftovers) == 1 and (leftovers[0] / torn).exists()  # the kill did tear a file
        torn_ids.append(leftovers[0].name.rsplit("-", 1)[0])

    served = Served("--model", "demo", "--library", str(tmp_path), "--osc-port", "0")
    try:
        with CommandClient(served.commands, timeout=10) as client:
            listing = client.library(limit=10000)
            kept = {f["frame_id"] for f in listing["frames"]}
            assert set(acknowledged) <= kept and not kept & set(torn_ids)
            demo = DemoBackend()
            for frame_id in kept:  # acknowledged or not: whatever is listed is whole
                got = client.get_frame(frame_id)
                params = validate_generation({"prompt": "a crash test", "seed": got.meta["seed"],
                                              "width": 256, "height": 128})
                expected = demo.generate(params, lambda s, n: None, lambda: False)
                np.testing.assert_array_equal(got.rgb, expected.rgb)
                np.testing.assert_array_equal(got.depth, expected.depth)
                if frame_id in acknowledged:
                    assert got.meta["seed"] == acknowledged[frame_id]
    finally:
        assert served.stop() == 0
    assert "library entry skipped" not in "".join(served.log)
    assert list((tmp_path / PARTIAL).iterdir()) == []


# ------------------------------------------------------------------ CLI


CUES_TOML = """
[defaults]
width = 128
height = 64
steps = 2

[[cue]]
name = "prologue"
prompt = "a misty forest at dawn"
seed = 3

[[cue]]
name = "finale"
prompt = "a cathedral of light"
seed = -1
"""


def test_pregenerate_fills_the_library_and_skips_what_is_there(tmp_path):
    library, cues = tmp_path / "library", tmp_path / "show.toml"
    cues.write_text(CUES_TOML, encoding="utf-8")
    first = run_cli("pregenerate", str(cues), "--model", "demo", "--library", str(library))
    assert first.returncode == 0, first.stderr
    assert "2 cues, 0 already" in first.stdout
    kept = FrameLibrary(library)
    prologue = kept.latest_for_cue("prologue")
    assert prologue.prompt == "a misty forest at dawn" and prologue.params["seed"] == 3
    assert prologue.params["width"] == 128 and kept.latest_for_cue("finale").params["seed"] >= 0

    again = run_cli("pregenerate", str(cues), "--model", "demo", "--library", str(library))
    assert again.returncode == 0 and "2 cues, 2 already" in again.stdout and len(FrameLibrary(library)) == 2

    cues.write_text(CUES_TOML.replace("seed = 3", "seed = 4"), encoding="utf-8")
    changed = run_cli("pregenerate", str(cues), "--model", "demo", "--library", str(library))
    assert changed.returncode == 0 and "2 cues, 1 already" in changed.stdout
    assert FrameLibrary(library).latest_for_cue("prologue").params["seed"] == 4


def test_pregenerate_reads_csv(tmp_path):
    cues = tmp_path / "show.csv"
    cues.write_text("name,prompt,seed,width,height,steps\nopening,a harbour,7,128,64,1\n"
                    "storm,a storm at sea,,128,64,1\n", encoding="utf-8")
    result = run_cli("pregenerate", str(cues), "--model", "demo", "--library", str(tmp_path / "lib"))
    assert result.returncode == 0, result.stderr
    kept = FrameLibrary(tmp_path / "lib")
    assert kept.latest_for_cue("opening").params["seed"] == 7
    assert kept.latest_for_cue("storm").prompt == "a storm at sea"


@pytest.mark.parametrize(
    "name, text, messages",
    [
        ("bad.toml", "[[cue]]\nname = 'a'\nsteps = 0\n[[cue]]\nprompt = 'x'\n",
         [r"cue 1 \(a\): .*steps", "cue 2: every cue needs a name"]),
        ("dup.toml", "[[cue]]\nname = 'a'\n[[cue]]\nname = 'a'\n", ["'a' appears twice"]),
        ("typo.toml", "[[cues]]\nname = 'a'\n", ["unknown top-level keys cues"]),
        ("broken.toml", "[[cue]\n", ["not valid TOML"]),
        ("empty.toml", "", ["no cues"]),
        ("bad.csv", "name,colour\na,red\n", ["line 2 \\(a\\): .*colour"]),
        ("noname.csv", "prompt\nx\n", ["header row must include a 'name' column"]),
        ("lora.toml", "[[cue]]\nname = 'a'\n[[cue]]\nname = 'b'\nlora_1 = 'style'\n",
         ["cue b: the demo backend takes no LoRAs"]),  # what the model cannot make, before cue a is made
    ],
)
def test_pregenerate_rejects_bad_cue_lists_before_generating(tmp_path, name, text, messages):
    cues = tmp_path / name
    cues.write_text(text, encoding="utf-8")
    result = run_cli("pregenerate", str(cues), "--model", "demo", "--library", str(tmp_path / "lib"))
    assert result.returncode == 2, result.stdout
    for message in messages:
        assert re.search(message, result.stderr), result.stderr
    assert len(FrameLibrary(tmp_path / "lib")) == 0


def test_library_cli_lists_exports_and_deletes(tmp_path):
    library = FrameLibrary(tmp_path / "lib")
    forest, _, _ = saved(library, prompt="a misty forest", cue="prologue")
    desert, _, _ = saved(library, prompt="a desert", seed=2)
    lib = ("--library", str(tmp_path / "lib"))
    listing = run_cli("library", *lib, "list")
    assert listing.returncode == 0 and listing.stdout.index(desert.frame_id) < listing.stdout.index(forest.frame_id)
    assert "[prologue]" in listing.stdout and "2 frames" in listing.stderr
    found = run_cli("library", *lib, "list", "--search", "forest")
    assert forest.frame_id in found.stdout and desert.frame_id not in found.stdout

    archive = tmp_path / "out.zip"
    exported = run_cli("library", *lib, "export", forest.frame_id, desert.frame_id, "-o", str(archive))
    assert exported.returncode == 0 and "wrote 2 frames" in exported.stdout
    assert len(zipfile.ZipFile(archive).namelist()) == 6
    again = run_cli("library", *lib, "export", forest.frame_id, "-o", str(archive))
    assert again.returncode == 2 and "already exists" in again.stderr

    missing = run_cli("library", *lib, "delete", forest.frame_id, "20991231T000000Z-00000000")
    assert missing.returncode == 2 and "not in the library" in missing.stderr
    assert len(FrameLibrary(tmp_path / "lib")) == 2  # nothing deleted when one id is wrong
    assert run_cli("library", *lib, "delete", forest.frame_id).returncode == 0
    assert [e.frame_id for e in FrameLibrary(tmp_path / "lib").find()] == [desert.frame_id]
    assert run_cli("library", *lib, "list", "--limit", "0").returncode == 2


def test_frame_ids_sort_in_creation_order():
    """Ids made within one second (issue 12: 6 of 19 out of order) sort as they were made."""
    from generator.frames import new_frame_id
    from td_bridge.protocol import is_valid_id

    ids = [new_frame_id() for _ in range(2000)]
    assert sorted(ids) == ids and len(set(ids)) == len(ids) and all(map(is_valid_id, ids))
    headers = [frame(seed=s)[0] for s in range(20)]
    made = [h["frame_id"] for h in headers]
    assert sorted(made) == made == [h["frame_id"] for h in sorted(headers, key=lambda h: h["created_at"])]
    assert made[0][:8] == time.strftime("%Y%m%d", time.gmtime(headers[0]["created_at"]))  # the day folder's date


def test_a_library_reply_stays_within_the_reply_limit(make_server, tmp_path):
    """Frames with the longest legal text in the costliest characters: the reply holds as many of the
    newest as fit in MAX_REPLY_BYTES and says it was cut."""
    from td_bridge import protocol as wire

    library = FrameLibrary(tmp_path)
    made = [saved(library, prompt="\x01" * 2000, cue=f"c{i}")[0].frame_id for i in range(60)]
    srv = make_server(library=library)
    with CommandClient(srv.commands) as client:
        reply = client.library(limit=100)
        assert reply["truncated"] is True and reply["total"] == 60
        assert [f["frame_id"] for f in reply["frames"]] == made[::-1][:len(reply["frames"])]
        assert len(wire.encode_json(reply)) <= wire.MAX_REPLY_BYTES and len(reply["frames"]) >= 20
        small = client.library(limit=5)
        assert small["truncated"] is False and len(small["frames"]) == 5
