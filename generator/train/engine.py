"""What the trainers share, on Hugging Face accelerate: data order, the loop, checkpoints, exact resume, logs.

- Data order is ours, not the DataLoader's: epoch ``e`` is a permutation drawn from ``seed`` and ``e``; each global
  batch is ``batch_size × processes`` consecutive indices of it, process ``p`` taking slice ``p``. The position
  (epoch, micro-batch) is saved with every checkpoint, so a resumed run reads exactly the batches an
  uninterrupted one would have read.
- A checkpoint (``OUTPUT/checkpoints/step-NNNNNNNN``) is accelerate's ``save_state`` (models, optimisers, learning
  rate schedulers, gradient scaler, every process's RNG states, registered objects such as the EMA) plus
  ``trainer.json`` (step, data position). ``--resume latest`` continues from the newest.
- Logs: ``OUTPUT/logs/STAGE.csv`` (one row every ``log_every`` steps; rows past a resumed step are dropped), and
  TensorBoard through accelerate's tracker when asked for and installed.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import shutil
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterator

import torch

from .dataset import RGBDDataset
from .options import ConfigError

log = logging.getLogger("depthfusion.train")

CHECKPOINTS, STATE_FILE = "checkpoints", "trainer.json"


class TrainingDiverged(ValueError):
    """A loss became NaN or infinite."""


def make_accelerator(config: SimpleNamespace, stage: str):
    """An Accelerator for the config; TensorBoard only where the package imports."""
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    log_with = None
    if config.log_with == "tensorboard":
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            raise ConfigError("log_with tensorboard needs the tensorboard package: pip install tensorboard "
                              "(the CSV log is written either way)") from None
        log_with = "tensorboard"
    output = Path(config.output)
    accelerator = Accelerator(gradient_accumulation_steps=config.grad_accum, mixed_precision=config.mixed_precision,
                              cpu=config.cpu, log_with=log_with,
                              project_config=ProjectConfiguration(project_dir=str(output),
                                                                  logging_dir=str(output / "logs")))
    if log_with:
        accelerator.init_trackers(stage, config={k: v for k, v in vars(config).items() if v is not None})
    return accelerator


class BatchPlan:
    """Which dataset indices process ``rank`` of ``world`` reads, micro-batch by micro-batch (module docstring)."""

    def __init__(self, size: int, batch_size: int, world: int, rank: int, seed: int) -> None:
        self.size, self.batch_size, self.world, self.rank, self.seed = size, batch_size, world, rank, seed
        self.per_epoch = size // (batch_size * world)
        if self.per_epoch == 0:
            raise ConfigError(f"the dataset has {size} items, fewer than one batch ({batch_size} × {world} "
                              "processes); lower batch_size or add data")

    def epoch(self, epoch: int, start: int = 0) -> list[list[int]]:
        order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch))
        step = self.batch_size * self.world
        return [order[b * step + self.rank * self.batch_size:b * step + (self.rank + 1) * self.batch_size].tolist()
                for b in range(start, self.per_epoch)]


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Tensors stacked (``pixel_values``, ``latents``), everything else listed (``caption``)."""
    return {k: torch.stack([i[k] for i in items]) if torch.is_tensor(items[0][k]) else [i[k] for i in items]
            for k in items[0]}


class CsvLog:
    """``logs/STAGE.csv``; a resumed run first drops the rows past its step, and a row with new columns (a
    validation metric) widens the file."""

    def __init__(self, path: Path, resumed_step: int | None) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        rows = self._read()
        self._rewrite([r for r in rows if resumed_step is not None and int(float(r["step"])) <= resumed_step])

    def _read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        with self.path.open(newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))

    def _rewrite(self, rows: list[dict[str, Any]]) -> None:
        self.columns = list(dict.fromkeys(k for r in rows for k in r))
        with self.path.open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, self.columns)
            writer.writeheader()
            writer.writerows(rows)

    def write(self, row: dict[str, Any]) -> None:
        if set(row) - set(self.columns):
            self._rewrite(self._read() + [row])
            return
        with self.path.open("a", newline="", encoding="utf-8") as f:
            csv.DictWriter(f, self.columns).writerow(row)


def find_checkpoint(output: Path, resume: str) -> Path:
    """The checkpoint ``resume`` names: ``latest`` (the newest under OUTPUT/checkpoints) or a folder."""
    if resume == "latest":
        found = sorted((output / CHECKPOINTS).glob("step-*"))
        found = [f for f in found if (f / STATE_FILE).is_file()]
        if not found:
            raise ConfigError(f"resume latest: no checkpoint under {output / CHECKPOINTS}")
        return found[-1]
    folder = Path(resume)
    if not (folder / STATE_FILE).is_file():
        raise ConfigError(f"resume: {folder} is not a checkpoint folder (no {STATE_FILE})")
    return folder


class Trainer:
    """The loop; a stage provides ``setup`` (dataset, models, optimisers, all prepared), ``train_batch`` (one
    micro-batch: forward, backward, optimiser steps; returns its metrics) and ``save_output``. ``models`` are
    what gradient accumulation keeps from syncing until the last micro-batch of a step."""

    stage = "train"

    def __init__(self, config: SimpleNamespace, accelerator: Any = None) -> None:
        from accelerate.utils import set_seed

        self.config = config
        self.output = Path(config.output)
        self.accelerator = accelerator or make_accelerator(config, self.stage)
        set_seed(config.seed, device_specific=True)  # each process its own noise, as diffusers' scripts do
        self.step, self.epoch, self.position = 0, 0, 0
        self.dataset: RGBDDataset | None = None
        self.models: list[torch.nn.Module] = []

    # stage hooks ------------------------------------------------------------

    def setup(self) -> None:
        raise NotImplementedError

    def train_batch(self, batch: dict[str, Any]) -> dict[str, float]:
        raise NotImplementedError

    def save_output(self) -> Path:
        raise NotImplementedError

    def validate(self) -> dict[str, float]:
        """Metrics (and, for the U-Net, sample images) every ``validate_every`` steps."""
        return {}

    # shared -----------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    def lr_schedule(self, optimizer: torch.optim.Optimizer):
        warmup = self.config.warmup_steps
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup) if warmup else 1.0)

    def clip(self, parameters: Any) -> None:
        if self.config.max_grad_norm and self.accelerator.sync_gradients:
            self.accelerator.clip_grad_norm_(parameters, self.config.max_grad_norm)

    def update(self, loss: torch.Tensor, real: torch.Tensor | None = None, fake: torch.Tensor | None = None) -> dict:
        """One optimiser step of ``self.model`` on ``loss``; with ``real`` and ``fake`` (images in [-1, 1]) also one
        hinge-loss step of the discriminator ``self.disc`` (real and fake in one forward: one pass through the
        data-parallel wrapper). Returns {"d_loss": …} when the discriminator stepped."""
        from .losses import hinge_d_loss

        acc = self.accelerator
        acc.backward(loss)
        self.clip(self.model.parameters())
        self.opt.step()
        self.sched.step()
        self.opt.zero_grad(set_to_none=True)
        if real is None:
            return {}
        self.disc.requires_grad_(True)
        with acc.autocast():
            scores_real, scores_fake = self.disc(torch.cat([real, fake.detach()])).chunk(2)
            d_loss = hinge_d_loss(scores_real, scores_fake)
        acc.backward(d_loss)
        self.clip(self.disc.parameters())
        self.d_opt.step()
        self.d_sched.step()
        self.d_opt.zero_grad(set_to_none=True)
        return {"d_loss": d_loss.item()}

    def _batches(self) -> Iterator[dict[str, Any]]:
        plan = BatchPlan(len(self.dataset), self.config.batch_size, self.accelerator.num_processes,
                         self.accelerator.process_index, self.config.seed)
        while True:
            # its own generator: a DataLoader draws a base seed when iterated, which must not come from the global
            # RNG (a resumed run creates the loader at another step than an uninterrupted one)
            loader = torch.utils.data.DataLoader(self.dataset, batch_sampler=plan.epoch(self.epoch, self.position),
                                                 num_workers=self.config.workers, collate_fn=collate,
                                                 generator=torch.Generator().manual_seed(self.epoch))
            for batch in loader:
                self.position += 1
                yield batch
            self.epoch, self.position = self.epoch + 1, 0

    def _mean(self, metrics: dict[str, float]) -> dict[str, float]:
        """Metrics averaged over the processes (every process logs at the same steps, with the same keys)."""
        if self.accelerator.num_processes == 1:
            return metrics
        values = torch.tensor(list(metrics.values()), dtype=torch.float64, device=self.device)
        return dict(zip(metrics, self.accelerator.reduce(values, "mean").tolist()))

    def save_checkpoint(self) -> Path:
        folder = self.output / CHECKPOINTS / f"step-{self.step:08d}"
        self.accelerator.wait_for_everyone()
        self.accelerator.save_state(str(folder))
        if self.accelerator.is_main_process:
            state = {"stage": self.stage, "step": self.step, "epoch": self.epoch, "position": self.position,
                     "processes": self.accelerator.num_processes, "batch_size": self.config.batch_size,
                     "grad_accum": self.config.grad_accum, "seed": self.config.seed}
            (folder / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")
            done = sorted(f for f in (self.output / CHECKPOINTS).glob("step-*") if (f / STATE_FILE).is_file())
            for old in done[:-self.config.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        return folder

    def load_checkpoint(self, folder: Path) -> None:
        state = json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))
        if state.get("stage") != self.stage:
            raise ConfigError(f"{folder} is a checkpoint of `train {state.get('stage')}`, not `train {self.stage}`")
        same = {k: getattr(self.config, k) for k in ("batch_size", "grad_accum", "seed")}
        same["processes"] = self.accelerator.num_processes
        changed = [f"{k} {state.get(k)} → {v}" for k, v in same.items() if state.get(k) != v]
        if changed:
            raise ConfigError(f"{folder} was saved with other settings ({', '.join(changed)}): an exact resume "
                              "needs the same ones")
        self.accelerator.load_state(str(folder))
        self.step, self.epoch, self.position = state["step"], state["epoch"], state["position"]
        log.info("resumed from %s at step %d (epoch %d, micro-batch %d)", folder, self.step, self.epoch,
                 self.position)

    def run(self) -> Path:
        """Train to ``steps``, checkpointing and logging; returns the folder of the trained model."""
        from tqdm import tqdm

        self.setup()
        resumed = None
        if self.config.resume:
            self.load_checkpoint(find_checkpoint(self.output, self.config.resume))
            resumed = self.step
        csv_log = CsvLog(self.output / "logs" / f"{self.stage}.csv", resumed) if self.accelerator.is_main_process \
            else None
        batches, started = self._batches(), time.perf_counter()
        bar = tqdm(total=self.config.steps, initial=self.step, desc=f"train {self.stage}", unit="step",
                   disable=not self.accelerator.is_local_main_process)
        while self.step < self.config.steps:
            with self.accelerator.accumulate(*self.models):
                metrics = self.train_batch(next(batches))
            if not self.accelerator.sync_gradients:
                continue
            self.step += 1
            bar.update(1)
            if not all(math.isfinite(v) for v in metrics.values()):
                raise TrainingDiverged(f"step {self.step}: a loss is not finite ({metrics}); lower the learning "
                                         "rate or use bf16/fp32")
            every = self.config.validate_every
            extra = self.validate() if every and (self.step % every == 0 or self.step == self.config.steps) else {}
            if extra or self.step % self.config.log_every == 0 or self.step == self.config.steps:
                row = {"step": self.step, "epoch": self.epoch, **self._mean(metrics), **extra,
                       "seconds": round(time.perf_counter() - started, 3)}
                bar.set_postfix({k: f"{v:.4g}" for k, v in metrics.items() if k == "loss"}, refresh=False)
                self.accelerator.log(row, step=self.step)
                if csv_log is not None:
                    csv_log.write(row)
            if self.step % self.config.checkpoint_every == 0:
                self.save_checkpoint()
        bar.close()
        self.accelerator.wait_for_everyone()
        folder = self.save_output()
        self.accelerator.end_training()
        return folder
