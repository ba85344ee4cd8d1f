"""Batch verbs over several processes: which items are this process's, waiting for all, who reports.

``accelerate launch`` and ``torchrun`` start one process per GPU, on one machine or several, and tell each its
place in RANK, WORLD_SIZE and LOCAL_RANK (with MASTER_ADDR and MASTER_PORT for meeting); without them a run is
one process and nothing changes. Item i goes to process i % WORLD_SIZE, the same split on every run, so a resumed
run finds each item's result under its key where the last run left it. The processes meet over
torch.distributed's gloo backend (CPU and TCP: any machine, Windows included) only to wait for each other and to
add up counts, with a long timeout: one process may wait hours for another's share.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Iterator, Mapping, Sequence, TypeVar

T = TypeVar("T")
WAIT = timedelta(days=7)  # how long a process waits at a barrier for the slowest share


@dataclass(frozen=True)
class Shard:
    """This process's place among ``world`` processes (rank 0 is the main one)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def sharded(self) -> bool:
        return self.world > 1

    def mine(self, items: Sequence[T]) -> list[T]:
        """Item i when i % world == rank."""
        return [item for index, item in enumerate(items) if index % self.world == self.rank]

    def device(self, requested: str) -> str:
        """``auto`` and ``cuda`` mean this process's own GPU (cuda:LOCAL_RANK) when several processes run."""
        if not self.sharded or requested not in ("auto", "cuda"):
            return requested
        import torch

        if not torch.cuda.is_available():
            return requested
        return f"cuda:{self.local_rank % torch.cuda.device_count()}"

    def barrier(self) -> None:
        """Wait until every process gets here."""
        self.total(0)

    def total(self, count: int) -> int:
        """The sum of ``count`` over the processes; every process waits for all."""
        if not self.sharded:
            return count
        import torch
        import torch.distributed as dist

        value = torch.tensor([count], dtype=torch.int64)
        dist.all_reduce(value)
        return int(value.item())

    def describe(self) -> str:
        return f"process {self.rank + 1} of {self.world}"


def _integer(environ: Mapping[str, str], name: str, default: int) -> int:
    text = environ.get(name, "").strip()
    if not text:
        return default
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{name}={text!r}: expected a whole number (set by accelerate launch or torchrun)") from None


def from_environment(environ: Mapping[str, str] = os.environ) -> Shard:
    """The place RANK, WORLD_SIZE and LOCAL_RANK give; one process when they are not set."""
    world = _integer(environ, "WORLD_SIZE", 1)
    rank, local_rank = _integer(environ, "RANK", 0), _integer(environ, "LOCAL_RANK", 0)
    if world < 1 or not 0 <= rank < world or local_rank < 0:
        raise ValueError(f"RANK={rank}, WORLD_SIZE={world}, LOCAL_RANK={local_rank}: need 0 <= RANK < WORLD_SIZE "
                         "and LOCAL_RANK >= 0")
    if world > 1:
        missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if not environ.get(name, "").strip()]
        if missing:
            raise ValueError(f"WORLD_SIZE={world} but {' and '.join(missing)} not set: start the processes with "
                             "accelerate launch or torchrun")
    return Shard(rank, world, local_rank)


@contextmanager
def join() -> Iterator[Shard]:
    """This process's shard, its process group open while the block runs (none for one process)."""
    shard = from_environment()
    if not shard.sharded:
        yield shard
        return
    import torch.distributed as dist

    dist.init_process_group("gloo", rank=shard.rank, world_size=shard.world, timeout=WAIT)
    try:
        yield shard
    finally:
        dist.destroy_process_group()
