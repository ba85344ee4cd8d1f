"""Frame library: recall from disk to published, index load, durable save.

    python bench/library.py [--recalls 100] [--entries 10000] [--folder DIR]

*Recall*: a library of 16 frames at 1024×512 (demo scenes with film grain, so that the PNGs
are as hard to decode as a model's output); a GeneratorServer with a one-frame memory, so that
`CommandClient.recall(frame_id)`, cycling through them, reads each from disk while a
`FrameReceiver` waits for it; then one frame recalled again and again (memory after the first).
Time runs from just before the request is sent to the decoded frame in the receiving thread,
so it holds reading both PNGs, the checks and the publish. Where the process may drop the page
cache (root on Linux) a cold-cache series follows the warm one.
*Index load*: ``--entries`` entries with real metadata.json files and small PNGs (the index
never decodes PNGs), then `FrameLibrary(root)` timed without a journal (every folder read, as
on the first start after the journal is lost) and with it, warm and, where possible, cold; then
`verify()`, the check of every folder the server runs on a thread after start.
*Save*: `FrameLibrary.save` of a 1024×512 frame (PNG encode + 3 fsyncs + rename), which the
worker does before a frame is published.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from generator.backends.demo import DemoBackend  # noqa: E402
from generator.frames import make_frame, new_frame_id  # noqa: E402
from generator.library import JOURNAL, FrameLibrary  # noqa: E402
from generator.serving.server import GeneratorServer  # noqa: E402
from td_bridge.params import validate_generation  # noqa: E402
from td_bridge.receiver import CommandClient, FrameReceiver  # noqa: E402


def drop_page_cache() -> bool:
    """Flush and drop the kernel's page cache; False where not permitted."""
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def summary(ms: list[float]) -> dict[str, float]:
    a = np.array(ms)
    return {"n": len(a), "p50_ms": round(float(np.percentile(a, 50)), 2),
            "p99_ms": round(float(np.percentile(a, 99)), 2), "max_ms": round(float(a.max()), 2)}


def photo_like_frame(seed: int) -> tuple[dict, np.ndarray, np.ndarray]:
    """A 1024×512 demo frame with film grain: the demo's smooth shading compresses ~30× better
    than a diffusion model's output would, which would flatter the PNG decode in recall."""
    params = validate_generation({"prompt": "a gallery interior", "seed": seed, "width": 1024, "height": 512})
    header, result = make_frame(DemoBackend(), params, lambda s, n: None, lambda: False)
    rng = np.random.default_rng(seed)
    rgb = np.clip(result.rgb + rng.normal(0, 6, result.rgb.shape), 0, 255).astype(np.uint8)
    depth = np.clip(result.depth + rng.normal(0, 40, result.depth.shape), 0, 65535).astype(np.uint16)
    return header, rgb, depth


def bench_save(root: Path, frames: list) -> tuple[dict, list[str]]:
    library = FrameLibrary(root)
    times, ids = [], []
    for header, rgb, depth in frames:
        start = time.perf_counter()
        library.save(header, rgb, depth)
        times.append((time.perf_counter() - start) * 1e3)
        ids.append(header["frame_id"])
    return summary(times), ids


def bench_recall(root: Path, ids: list[str], recalls: int, *, cold: bool = False, repeat: bool = False) -> dict:
    """Recalls cycling over ``ids``: with a one-frame memory every recall reads the disk; with
    ``repeat`` the same frame again and again (memory after the first)."""
    server = GeneratorServer(DemoBackend(), frames_address="tcp://127.0.0.1:*", commands_address="tcp://127.0.0.1:*",
                             library=FrameLibrary(root), history=32 if repeat else 1)
    server.bind()
    stop = threading.Event()
    thread = threading.Thread(target=server.serve, args=(stop,), daemon=True)
    thread.start()
    times = []
    try:
        with FrameReceiver(server.frames_endpoint) as rx, CommandClient(server.commands_endpoint) as client:
            while not rx.connected:
                time.sleep(0.01)
            for i in range(recalls):
                frame_id = ids[0] if repeat else ids[i % len(ids)]
                if cold and not drop_page_cache():
                    return {"skipped": "cannot drop the page cache here (needs root on Linux)"}
                rx.take()
                start = time.perf_counter()
                client.recall(frame_id)
                frame = rx.wait(5.0)
                times.append((time.perf_counter() - start) * 1e3)
                if frame is None or frame.frame_id != frame_id:
                    raise RuntimeError(f"recall {i}: expected {frame_id}, got {frame and frame.frame_id}")
    finally:
        stop.set()
        thread.join(10)
    return summary(times)


def fill_index(root: Path, entries: int, template: dict) -> None:
    """``entries`` frames with realistic metadata and tiny PNGs, written without fsync (set-up only)."""
    from generator.library import _png_bytes

    small_rgb, small_depth = _png_bytes(np.zeros((8, 16, 3), np.uint8)), _png_bytes(np.zeros((8, 16), np.uint16))
    for i in range(entries):
        frame_id = new_frame_id()[:-8] + f"{i:08x}"
        folder = root / frame_id[:8] / frame_id
        folder.mkdir(parents=True)
        meta = {**template, "frame_id": frame_id, "prompt": f"scene {i}", "created_at": template["created_at"] + i}
        (folder / "metadata.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
        (folder / "rgb.png").write_bytes(small_rgb)
        (folder / "depth.png").write_bytes(small_depth)


def bench_index(root: Path) -> dict:
    """Start-up index loads: from the folders alone (no journal yet), then from the journal,
    each with a warm and, where possible, a cold page cache; then the background check."""
    def load(cold: bool) -> dict:
        if cold and not drop_page_cache():
            return {"skipped": "cannot drop the page cache here (needs root on Linux)"}
        start = time.perf_counter()
        library = FrameLibrary(root)
        return {"entries": len(library), "broken": len(library.skipped), "s": round(time.perf_counter() - start, 3)}

    results = {}
    for cold in (False, True):
        (root / JOURNAL).unlink(missing_ok=True)
        results[f"folders_{'cold' if cold else 'warm'}"] = load(cold)  # writes the journal
    results["journal_warm"] = load(False)
    results["journal_cold"] = load(True)
    library = FrameLibrary(root)
    drop_page_cache()
    start = time.perf_counter()
    problems = library.verify()
    results["verify_cold"] = {"broken": len(problems), "s": round(time.perf_counter() - start, 3)}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recalls", type=int, default=100)
    parser.add_argument("--entries", type=int, default=10000)
    parser.add_argument("--folder", type=Path, default=None, help="scratch folder (default: a temporary one)")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="depthfusion-bench-", dir=args.folder))
    try:
        frames = [photo_like_frame(seed) for seed in range(16)]
        save, ids = bench_save(scratch / "frames", frames)
        results = {"save_1024x512": save,
                   "recall_disk_warm": bench_recall(scratch / "frames", ids, args.recalls),
                   "recall_disk_cold": bench_recall(scratch / "frames", ids, min(args.recalls, 30), cold=True),
                   "recall_repeat": bench_recall(scratch / "frames", ids, args.recalls, repeat=True)}
        fill_index(scratch / "index", args.entries, frames[0][0])
        results["index"] = bench_index(scratch / "index")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
