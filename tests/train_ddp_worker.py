"""Run `train unet` in 2 processes on the CPU (torch.distributed gloo through accelerate), forked.

``run_two(config, out)`` forks both ranks from the calling process (the tests call it: the children inherit the
imported modules instead of importing them again); ``python tests/train_ddp_worker.py CONFIG.json OUT`` does the
same from a fresh process. Every rank writes OUT/rank-R.safetensors (its U-Net after training) and
OUT/rank-R.json (processes seen, the dataset indices it read).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def rank_environment(rank: int, port: int) -> None:
    """What torchrun would set for rank ``rank`` of 2 on this machine, gloo on loopback."""
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2",
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "ACCELERATE_USE_CPU": "true"})
    if sys.platform in ("linux", "darwin"):  # gloo on loopback, not the interface the host name resolves to
        os.environ["GLOO_SOCKET_IFNAME"] = "lo" if sys.platform == "linux" else "lo0"


def fork_ranks(entry: Any, args: tuple, timeout: float = 240) -> list[int | None]:
    """Fork ranks 0 and 1 of ``entry(rank, port, *args)``, wait for them; their exit codes (None: still running
    after ``timeout``, then killed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    context = multiprocessing.get_context("fork")
    ranks = [context.Process(target=entry, args=(r, port, *args)) for r in range(2)]
    for process in ranks:
        process.start()
    for process in ranks:
        process.join(timeout=timeout)
    codes = [p.exitcode for p in ranks]
    for process in ranks:
        if process.exitcode is None:
            process.kill()
    return codes


def rank_main(rank: int, port: int, config: dict, out: Path) -> None:
    rank_environment(rank, port)
    from accelerate.state import AcceleratorState
    from safetensors.torch import save_file

    from generator.train.engine import BatchPlan
    from generator.train.options import UNET, UNET_DEFAULTS, resolve
    from generator.train.unet import UNetTrainer

    AcceleratorState._reset_state(reset_partial_state=True)  # a forked child must not reuse its parent's state
    trainer = UNetTrainer(resolve(config, UNET, UNET_DEFAULTS))
    trainer.run()
    acc = trainer.accelerator
    unet = acc.unwrap_model(trainer.unet)
    save_file({k: v.contiguous() for k, v in unet.state_dict().items()}, str(out / f"rank-{rank}.safetensors"))
    plan = BatchPlan(len(trainer.dataset), trainer.config.batch_size, acc.num_processes, acc.process_index,
                     trainer.config.seed)
    (out / f"rank-{rank}.json").write_text(json.dumps({"processes": acc.num_processes, "rank": acc.process_index,
                                                       "read": plan.epoch(0)[:trainer.config.steps]}))
    acc.end_training()
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def run_two(config: dict, out: Path, timeout: float = 240) -> list[int | None]:
    """Fork both training ranks, wait for them; their exit codes."""
    return fork_ranks(rank_main, (config, out), timeout)


def main() -> int:
    codes = run_two(json.loads(Path(sys.argv[1]).read_text()), Path(sys.argv[2]))
    return 0 if codes == [0, 0] else 1


if __name__ == "__main__":
    sys.exit(main())
