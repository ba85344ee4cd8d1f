"""``python -m generator train lcm-lora``: distil an LDM3D model into a few-step LoRA (latent consistency distillation).

The method is LCM-LoRA's (Luo et al. 2023, "Latent Consistency Models" and "LCM-LoRA"), as diffusers'
``train_lcm_distill_lora_sd_wds.py`` runs it for Stable Diffusion, on LDM3D's RGBD latents:

- **Teacher and student are one U-Net.** The student is the teacher's U-Net with a LoRA adapter (peft; rank and
  alpha 64 by default, on the attention and feed-forward projections ``to_q to_k to_v to_out.0 proj_in proj_out
  ff.net.0.proj ff.net.2``; ``--lora-conv`` adds the ResNet convolutions and time-embedding projections). With the
  adapter switched off it *is* the teacher, so the teacher costs no second copy.
- **Skipping DDIM solver.** The training schedule's 1000 steps are cut into ``--num-ddim-timesteps`` N (50) steps
  of k = 1000/N; t_n = (n+1)·k − 1 — the grid diffusers' LCMScheduler samples along at generation. Per item: n at
  random, x_{t_n} = the data latent noised to t_n, and the teacher's guided DDIM step from t_n to t_n − k.
- **Guidance.** w ~ U[``--w-min``, ``--w-max``] per item; the teacher's prediction is ε_c + w·(ε_c − ε_u) (and the
  same for its x₀), ε_u from the empty prompt: the LCM papers' w, i.e. generation's ``--guidance`` = w + 1. An SD
  1.x U-Net has no guidance embedding, so the LoRA distils guidance in (generate with ``--guidance 1``).
- **Consistency function** f(x, t) = c_skip(t)·x + c_out(t)·x̂₀(x, t), c_skip = σ_d²/((10t)² + σ_d²), c_out =
  10t/√((10t)² + σ_d²), σ_d = 0.5: the boundary scalings of diffusers' LCMScheduler (``timestep_scaling`` 10), which
  the ``lcm`` sampler applies at generation.
- **Loss** between the student's f(x_{t_n}, t_n) and the target f(x̂_{t_n−k}, t_n − k) of the *same* student
  under no gradient: pseudo-Huber √(d² + c²) − c (``--loss huber``, c = ``--huber-c`` 0.001) or mean squared
  error (``--loss l2``). As in diffusers' LCM-LoRA script there is no separate EMA target network: the target is the
  online student (its full-model LCM script keeps an EMA target; a LoRA run does not).

Latents come from ``--dataset DIR`` (built by ``dataset build``; its images encoded by the model's VAE encoder at
every step, a posterior sample scaled by the VAE's scaling factor, 6- or 4-channel alike) or ``--from-teacher
PROMPTS`` (the teacher's own samples, our LDM3DBackend with ``--sample-steps``, made once into ``OUTPUT/latents/``
in the same files ``train tiny-decoder --from-model`` writes; no dataset needed). 2:1 data trains seamless by
default: the U-Net's (and VAE encoder's) convolutions wrap across the width and each latent is rolled by a random
number of columns. Validation renders ``--validation-prompts`` with the student (``lcm``, ``--validation-steps``,
guidance 1) and the teacher (DDIM, 50 steps, guidance 1 + the middle of the w range; once) and logs their mean
absolute RGB and depth distance, with previews in ``OUTPUT/validation/``. Checkpoints hold the LoRA weights only
(the frozen teacher is the model itself). Output: ``OUTPUT/lcm-lora.safetensors`` (diffusers naming, the file
``--lora`` loads) and ``OUTPUT/lcm-lora.json`` (teacher, rank, alpha, steps, guidance range, seamless …).
"""

from __future__ import annotations

import json
import logging
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterator

import numpy as np
import torch

from ..backends.base import BackendUnavailable
from ..backends.seamless import set_seamless
from .dataset import RGBDDataset
from .engine import Trainer
from .options import ConfigError
from .latents import (SEED_LIMIT, VAL_SEED_OFFSET, LatentSet, latent_jobs, latent_set, pending, read_prompts,
                      roll_and_crop, sample_into)

log = logging.getLogger("depthfusion.train.lcm_lora")

LORA_FILE, INFO_FILE, LATENTS = "lcm-lora.safetensors", "lcm-lora.json", "latents"
TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2")
CONV_TARGETS = ("conv1", "conv2", "conv_shortcut", "downsamplers.0.conv", "upsamplers.0.conv", "time_emb_proj")
TIMESTEP_SCALING, SIGMA_DATA = 10.0, 0.5  # diffusers' LCMScheduler: what the lcm sampler applies at generation
GENERATION_GRID = 50  # LCMScheduler's original_inference_steps: the grid the lcm sampler skips along


def boundary_scalings(timesteps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(c_skip, c_out) of the consistency function at integer ``timesteps``, shaped to broadcast over latents."""
    scaled = TIMESTEP_SCALING * timesteps.double()
    c_skip = SIGMA_DATA ** 2 / (scaled ** 2 + SIGMA_DATA ** 2)
    c_out = scaled / (scaled ** 2 + SIGMA_DATA ** 2).sqrt()
    return c_skip.float().view(-1, 1, 1, 1), c_out.float().view(-1, 1, 1, 1)


class DDIMSolver:
    """The skipping DDIM grid: t_n = (n + 1)·k − 1 for n < N, k = T/N; one deterministic DDIM step from t_n to
    t_n − k (to ᾱ at 0 from the first grid point, as diffusers' LCM scripts do)."""

    def __init__(self, alphas_cumprod: torch.Tensor, steps: int) -> None:
        train_steps = len(alphas_cumprod)
        self.k = train_steps // steps
        self.timesteps = torch.arange(1, steps + 1) * self.k - 1
        self.alphas = alphas_cumprod[self.timesteps]
        self.alphas_prev = torch.cat([alphas_cumprod[:1], alphas_cumprod[self.timesteps[:-1]]])

    def to(self, device: torch.device) -> DDIMSolver:
        self.timesteps, self.alphas, self.alphas_prev = (t.to(device) for t in
                                                        (self.timesteps, self.alphas, self.alphas_prev))
        return self

    def step(self, x0: torch.Tensor, eps: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        prev = self.alphas_prev[index].view(-1, 1, 1, 1)
        return prev.sqrt() * x0 + (1 - prev).sqrt() * eps


def predictions(output: torch.Tensor, sample: torch.Tensor, alphas: torch.Tensor,
                prediction_type: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(x̂₀, ε̂) from a U-Net output at noise level ᾱ (one per item) for epsilon or v prediction."""
    alpha, sigma = alphas.view(-1, 1, 1, 1).sqrt(), (1 - alphas.view(-1, 1, 1, 1)).sqrt()
    if prediction_type == "epsilon":
        return (sample - sigma * output) / alpha, output
    return alpha * sample - sigma * output, alpha * output + sigma * sample  # v_prediction


def consistency_loss(pred: torch.Tensor, target: torch.Tensor, kind: str, huber_c: float) -> torch.Tensor:
    if kind == "l2":
        return torch.nn.functional.mse_loss(pred.float(), target.float())
    return ((pred.float() - target.float()) ** 2 + huber_c ** 2).sqrt().sub(huber_c).mean()


def sample_teacher_latents(backend: Any, config: SimpleNamespace, prompts: list[str], seamless: bool, accelerator: Any,
                           folder: Path) -> LatentSet:
    """The teacher's own samples of ``prompts`` × ``samples_per_prompt`` seeds (final latents, not decoded), made
    once into ``folder`` with the records ``train tiny-decoder --from-model`` writes; processes share the work."""
    folder.mkdir(parents=True, exist_ok=True)
    jobs = latent_jobs(config, prompts, "train", seamless, folder)
    mine = pending(jobs, accelerator)
    if mine:
        sample_into(backend, mine, accelerator, f"teacher latents ({config.sample_steps} steps each)")
    accelerator.wait_for_everyone()
    return latent_set(jobs)


class LcmLoraTrainer(Trainer):
    """Latent consistency distillation of an LDM3D teacher into a LoRA of its own U-Net (module docstring)."""

    stage = "lcm-lora"

    def __init__(self, config: SimpleNamespace, accelerator: Any = None) -> None:
        if (config.dataset is None) == (config.from_teacher is None):
            raise ConfigError("give either --dataset DIR (images encoded by the model's VAE) or --from-teacher "
                              "PROMPTS (latents sampled by the teacher)")
        if config.w_min > config.w_max:
            raise ConfigError(f"--w-min {config.w_min:g} is above --w-max {config.w_max:g}")
        super().__init__(config, accelerator)

    # setup ------------------------------------------------------------------

    def _load_teacher(self) -> Any:
        from ..backends.ldm3d import LDM3DBackend

        config = self.config
        try:
            return LDM3DBackend.load(config.model, device=str(self.device), dtype="fp32", revision=config.revision,
                                     local_files_only=config.offline)
        except BackendUnavailable as exc:
            raise ConfigError(f"--model {config.model} is not a usable LDM3D teacher: {exc}") from None

    def _seamless(self, size: tuple[int, int]) -> bool:
        return self.config.seamless if self.config.seamless is not None else size[1] == 2 * size[0]

    def _sources(self, backend: Any) -> tuple[Any, tuple[int, int]]:
        """(training set, image size (h, w))."""
        config = self.config
        if config.dataset:
            data = RGBDDataset(Path(config.dataset), backend.variant.channels)
            return data, data.size
        size = (config.sample_height, config.sample_width)
        data = sample_teacher_latents(backend, config, read_prompts(config.from_teacher), self._seamless(size),
                                      self.accelerator, self.output / LATENTS)
        return data, size

    def setup(self) -> None:
        from diffusers import DDPMScheduler
        from peft import LoraConfig

        config = self.config
        backend = self.backend = self._load_teacher()
        scale = backend.variant.scale_factor
        for name in ("resolution",) + (("sample_width", "sample_height") if config.from_teacher else ()):
            if getattr(config, name) % scale:
                raise ConfigError(f"{name} {getattr(config, name)} is not a multiple of the model's scale factor "
                                  f"{scale}")
        self.noise = DDPMScheduler.from_config(backend.scheduler_config)
        if self.noise.config.prediction_type not in ("epsilon", "v_prediction"):
            raise ConfigError(f"the teacher's scheduler predicts {self.noise.config.prediction_type!r}; epsilon or "
                              "v_prediction are distilled here")
        train_steps = self.noise.config.num_train_timesteps
        if config.num_ddim_timesteps > train_steps:
            raise ConfigError(f"num_ddim_timesteps {config.num_ddim_timesteps} is more than the teacher's "
                              f"{train_steps} training timesteps")
        if config.num_ddim_timesteps != GENERATION_GRID:
            log.warning("num_ddim_timesteps %d: generation's lcm sampler skips along a %d-step grid, so the LoRA is "
                        "trained on timesteps it partly never visits", config.num_ddim_timesteps, GENERATION_GRID)
        self.dataset, size = self._sources(backend)  # the teacher samples before it has an adapter
        if size[0] % scale or size[1] % scale:
            raise ConfigError(f"the images are {size[1]}x{size[0]}, not multiples of the model's scale factor {scale}")
        self.size, self.scale, self.seamless = size, scale, self._seamless(size)
        cells = config.resolution // scale or max(size) // scale
        self.crop = (min(size[0] // scale, cells), size[1] // scale if self.seamless else min(size[1] // scale, cells))
        self.solver = DDIMSolver(self.noise.alphas_cumprod.float(), config.num_ddim_timesteps).to(self.device)

        unet = backend.unet
        targets = list(TARGETS + (CONV_TARGETS if config.lora_conv else ()))
        # LoRA first, then seamless padding: a convolution's LoRA copies its base layer's padding when made (sampling
        # the teacher may have left the padding circular)
        set_seamless(unet, False)
        unet.add_adapter(LoraConfig(r=config.rank, lora_alpha=config.alpha, init_lora_weights="gaussian",
                                    target_modules=targets))
        set_seamless(unet, self.seamless)
        set_seamless(backend.vae, self.seamless)  # panoramas are encoded seamlessly too
        if config.gradient_checkpointing:
            unet.enable_gradient_checkpointing()
        unet.train()
        trainable = [p for p in unet.parameters() if p.requires_grad]
        self.targets = targets
        optimizer = torch.optim.AdamW(trainable, lr=config.lr, betas=(config.adam_beta1, config.adam_beta2),
                                      eps=config.adam_eps, weight_decay=config.weight_decay)
        self.unet, self.opt, self.sched = self.accelerator.prepare(unet, optimizer, self.lr_schedule(optimizer))
        self.models = [self.unet]
        self.accelerator.register_save_state_pre_hook(self._save_lora_only)
        self.accelerator.register_load_state_pre_hook(self._load_lora_only)
        with torch.no_grad():
            self.uncond = backend._embed("", backend.tokenizer.model_max_length).float()
        self.prompts = [p.strip() for p in config.validation_prompts.split("|") if p.strip()]
        self._teacher_frames: list[Any] | None = None
        log.info("lcm-lora: teacher %s (%d-channel VAE), LoRA rank %d alpha %g on %s (%.2f M parameters), %d "
                 "training items of %dx%d (crops of %dx%d latents)%s, %d-step DDIM grid, w in [%g, %g], %s loss",
                 config.model, backend.variant.channels, config.rank, config.alpha, ", ".join(targets),
                 sum(p.numel() for p in trainable) / 1e6, len(self.dataset), size[1], size[0], self.crop[1],
                 self.crop[0], ", seamless" if self.seamless else "", config.num_ddim_timesteps, config.w_min,
                 config.w_max, config.loss)

    # checkpoints: the LoRA weights only (the frozen teacher is the model itself) -----------------------------

    @property
    def student(self) -> Any:
        return self.accelerator.unwrap_model(self.unet)

    def _lora_keys(self) -> set[str]:
        return {k for k in self.student.state_dict() if ".lora_" in k}

    def _save_lora_only(self, models: list[Any], weights: list[dict[str, Any]], output_dir: str) -> None:
        for i, model in enumerate(models):
            if self.accelerator.unwrap_model(model) is self.student and i < len(weights):
                weights[i] = {k: v for k, v in weights[i].items() if ".lora_" in k}

    def _load_lora_only(self, models: list[Any], input_dir: str) -> None:
        from safetensors.torch import load_file

        for i, model in enumerate(models):
            if self.accelerator.unwrap_model(model) is not self.student:
                continue
            path = Path(input_dir) / ("model.safetensors" if i == 0 else f"model_{i}.safetensors")
            state = {k.removeprefix("module."): v for k, v in load_file(str(path)).items()}
            if set(state) != self._lora_keys():
                raise ConfigError(f"{input_dir}: its LoRA weights do not match this run's adapter (another rank, "
                                  "targets or model?)")
            self.student.load_state_dict(state, strict=False)
            models.pop(i)  # loaded here: accelerate would expect the whole U-Net
            return

    # training ---------------------------------------------------------------

    @contextmanager
    def teacher(self) -> Iterator[Any]:
        """The U-Net with the adapter off: the teacher."""
        unet = self.student
        unet.disable_adapters()
        try:
            yield unet
        finally:
            unet.enable_adapters()

    @torch.no_grad()
    def latents_of(self, batch: dict[str, Any]) -> torch.Tensor:
        if "latents" in batch:
            return batch["latents"].to(self.device).float()
        vae = self.backend.vae
        x = batch["pixel_values"].to(self.device)
        return (vae.encode(x).latent_dist.sample() * vae.config.scaling_factor).float()

    @torch.no_grad()
    def embed(self, captions: list[str]) -> torch.Tensor:
        tokenizer = self.backend.tokenizer
        ids = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                        return_tensors="pt").input_ids.to(self.backend.device)
        return self.backend.text_encoder(ids)[0].float()

    def distillation_loss(self, latents: torch.Tensor, text: torch.Tensor, index: torch.Tensor, noise: torch.Tensor,
                          w: torch.Tensor) -> torch.Tensor:
        """The consistency loss for data ``latents`` noised by ``noise`` to grid points ``index`` at guidance ``w``
        (module docstring); gradients reach the LoRA through the student's prediction only."""
        config, acc, kind = self.config, self.accelerator, self.noise.config.prediction_type
        alphas_cumprod = self.solver.alphas  # ᾱ at the grid points
        start = self.solver.timesteps[index]
        end = (start - self.solver.k).clamp(min=0)
        noisy = self.noise.add_noise(latents, noise, start)
        c_skip, c_out = boundary_scalings(start)
        with acc.autocast():
            output = self.unet(noisy, start, text).sample.float()
        x0, _ = predictions(output, noisy, alphas_cumprod[index], kind)
        pred = c_skip * noisy + c_out * x0
        with torch.no_grad():
            with acc.autocast(), self.teacher() as teacher:  # ε_c and ε_u in one batch
                both = teacher(torch.cat([noisy, noisy]), torch.cat([start, start]),
                               torch.cat([text, self.uncond.expand(len(text), -1, -1)])).sample.float()
            x0s, epss = predictions(both, torch.cat([noisy, noisy]), alphas_cumprod[index].repeat(2), kind)
            (x0_c, x0_u), (eps_c, eps_u) = x0s.chunk(2), epss.chunk(2)
            w = w.view(-1, 1, 1, 1)
            previous = self.solver.step(x0_c + w * (x0_c - x0_u), eps_c + w * (eps_c - eps_u), index)
            with acc.autocast():
                target_output = self.student(previous, end, text).sample.float()
            target_x0, _ = predictions(target_output, previous, self.solver.alphas_prev[index], kind)
            end_skip, end_out = boundary_scalings(end)
            target = end_skip * previous + end_out * target_x0
        return consistency_loss(pred, target, config.loss, config.huber_c)

    def train_batch(self, batch: dict[str, Any]) -> dict[str, float]:
        config = self.config
        latents = roll_and_crop(self.latents_of(batch), self.crop, self.seamless)
        text = self.embed(batch["caption"])
        count = len(latents)
        index = torch.randint(0, config.num_ddim_timesteps, (count,), device=self.device)
        noise = torch.randn_like(latents)
        w = (config.w_max - config.w_min) * torch.rand(count, device=self.device) + config.w_min
        loss = self.distillation_loss(latents, text, index, noise, w)
        self.accelerator.backward(loss)
        self.clip(self.unet.parameters())
        self.opt.step()
        self.sched.step()
        self.opt.zero_grad(set_to_none=True)
        return {"loss": loss.item(), "lr": self.sched.get_last_lr()[0]}

    # validation and output --------------------------------------------------

    def _frame(self, prompt: str, seed: int, **values: Any) -> Any:
        from td_bridge.params import validate_generation

        height, width = (max(64, side) for side in self.size)
        params = validate_generation({"prompt": prompt, "seed": seed, "width": width, "height": height,
                                      "seamless": self.seamless, **values})
        return self.backend.generate(params, lambda step, total: None, lambda: False)

    def validate(self) -> dict[str, float]:
        """The student's ``lcm`` frames against the teacher's 50-step DDIM frames at the middle of the w range, on
        held-out seeds (main process); previews under ``OUTPUT/validation``."""
        if not self.accelerator.is_main_process or not self.prompts:
            return {}
        from td_bridge.depth import write_depth_png

        from ..images import write_rgb_png

        config, unet = self.config, self.student
        seeds = [(VAL_SEED_OFFSET + number) % SEED_LIMIT for number in range(len(self.prompts))]
        was_training = unet.training
        unet.eval()
        try:
            if self._teacher_frames is None:
                with self.teacher():
                    guidance = 1.0 + (config.w_min + config.w_max) / 2
                    self._teacher_frames = [self._frame(p, s, steps=config.validation_teacher_steps,
                                                        guidance=guidance, scheduler="ddim")
                                            for p, s in zip(self.prompts, seeds)]
                self._write(self.output / "validation" / "teacher", self._teacher_frames, write_rgb_png,
                            write_depth_png)
            frames = [self._frame(p, s, steps=config.validation_steps, guidance=1.0, scheduler="lcm")
                      for p, s in zip(self.prompts, seeds)]
        finally:
            unet.train(was_training)
            set_seamless(unet, self.seamless)
            set_seamless(self.backend.vae, self.seamless)
        self._write(self.output / "validation" / f"step-{self.step:08d}", frames, write_rgb_png, write_depth_png)
        return frame_distances(frames, self._teacher_frames, prefix="val_")

    @staticmethod
    def _write(folder: Path, frames: list[Any], write_rgb_png: Any, write_depth_png: Any) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        for number, frame in enumerate(frames):
            write_rgb_png(folder / f"{number:02d}.png", frame.rgb)
            write_depth_png(folder / f"{number:02d}.depth.png", frame.depth)

    def lora_state(self) -> dict[str, torch.Tensor]:
        """The adapter as the output file holds it: alpha/rank multiplied into lora_B, so that a loader that takes
        alpha = rank (ours, and diffusers' for a file without adapter metadata) applies the trained scale."""
        from peft.utils import get_peft_model_state_dict

        state = {k: v.detach().float().cpu().contiguous() for k, v in get_peft_model_state_dict(self.student).items()}
        factor = self.config.alpha / self.config.rank
        if factor != 1.0:
            state = {k: v * factor if ".lora_B." in k else v for k, v in state.items()}
        return state

    def save_output(self) -> Path:
        if self.accelerator.is_main_process:
            from diffusers.loaders import StableDiffusionLoraLoaderMixin

            config = self.config
            StableDiffusionLoraLoaderMixin.save_lora_weights(self.output, unet_lora_layers=self.lora_state(),
                                                             weight_name=LORA_FILE)
            source = {"dataset": str(config.dataset)} if config.dataset else {"from_teacher": str(config.from_teacher)}
            info = {"teacher": config.model, "vae_channels": self.backend.variant.channels, "rank": config.rank,
                    "alpha": config.alpha, "alpha_in_weights": config.alpha != config.rank,
                    "target_modules": self.targets, "steps": self.step, "num_ddim_timesteps": config.num_ddim_timesteps,
                    "w_range": [config.w_min, config.w_max],
                    "guidance_range": [1.0 + config.w_min, 1.0 + config.w_max], "loss": config.loss,
                    "huber_c": config.huber_c if config.loss == "huber" else None,
                    "timestep_scaling": TIMESTEP_SCALING, "seamless": self.seamless, "size": list(self.size),
                    "resolution": config.resolution, "source": source, "lr": config.lr,
                    "batch": config.batch_size * self.accelerator.num_processes * config.grad_accum,
                    "generate": f"--lora {self.output / LORA_FILE} --scheduler lcm --steps 4 --guidance 1"}
            (self.output / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
            log.info("LCM LoRA saved to %s: generate with --lora %s --scheduler lcm --steps 4 --guidance 1",
                     self.output / LORA_FILE, self.output / LORA_FILE)
        self.accelerator.wait_for_everyone()
        return self.output / LORA_FILE


def frame_distances(frames: list[Any], references: list[Any], prefix: str = "") -> dict[str, float]:
    """Mean absolute RGB (of 255) and depth (of 65535) distance, both on [0, 1], over pairs of frames."""
    rgb = np.mean([np.abs(f.rgb.astype(np.float64) - r.rgb).mean() / 255 for f, r in zip(frames, references)])
    depth = np.mean([np.abs(f.depth.astype(np.float64) - r.depth).mean() / 65535 for f, r in zip(frames, references)])
    return {f"{prefix}rgb_error": float(rgb), f"{prefix}depth_error": float(depth)}
