"""Stream batching for live mode: one U-Net call advances several frames, each at its own step.

StreamDiffusion's "stream batch" on our LDM3D backend. A new frame enters at every call of
:meth:`StreamBatch.advance`; one batched U-Net call then takes every frame in flight one step further, each at its
own timestep (the U-Net takes one timestep per row), with its own text embeddings and its own classifier-free
guidance (a guided frame is two rows, [unconditional, prompt]). Each frame's own scheduler then steps its own
latents, so every frame runs exactly the maths of the sequential loop (:meth:`LDM3DBackend._denoise`).

The trade: with N steps a frame comes out N calls after it entered (N frames of latency), but once the batch is
full one frame comes out per call, and each call is a single U-Net forward of N to 2N rows instead of N forwards
of one or two rows: on a GPU that a small batch leaves underused, a bigger batch costs far less than proportionally
more time, so throughput rises (StreamDiffusion's measurements; not measured here).

Results equal sequential denoising up to rounding: the per-frame maths is the same, but GEMM and convolution
kernels may round a batch of 2N rows differently from a batch of one or two (they do on AVX-512 CPUs, see the
design notes), so frames agree within a small tolerance, not bit for bit on every machine.

Frames share a call only when they can: the same latent shape, the same LoRA weights (a LoRA's weight is set on the
whole U-Net, not per row) and the same seamless setting (a property of the convolutions). A frame that differs
from the frames in flight waits: the call first finishes the frames in flight (advancing them without taking
anyone in, and returning their results too), then lets the new frame enter and take its first step. Frames with
fewer steps (img2img) may come out before older frames that entered with more.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .base import RGBD, Cancelled, CancelledFn
from .ldm3d import DenoiseState, LDM3DBackend


@dataclass
class _Frame:
    """A frame in flight: its state, its current latents and how many of its steps have run."""

    state: DenoiseState
    latents: torch.Tensor
    steps: list[Any]  # its timesteps as host numbers, for the scheduler
    done: int = 0

    @property
    def rows(self) -> int:
        return 2 if self.state.guided else 1

    @property
    def finished(self) -> bool:
        return self.done >= len(self.steps)


def _key(state: DenoiseState) -> tuple:
    """What frames sharing one U-Net call must have in common."""
    return (tuple(state.latents.shape), tuple(state.embeddings.shape[1:]), tuple(sorted(state.weights.items())),
            bool(state.params["seamless"]))


class StreamBatch:
    """Frames in flight on one LDM3D backend, advanced together one step per :meth:`advance`.

    A state is used up as it runs (its scheduler and step-noise generator advance; its ``latents`` field stays as
    prepared): prepare a new one for every frame. Every call sets the frames' LoRA weights and seamless again, since
    preparing another frame, or a job run between two calls, changes them on the shared models. Not thread-safe:
    drive it from one thread, the one that prepares the states."""

    def __init__(self, backend: LDM3DBackend) -> None:
        self.backend = backend
        self._frames: list[_Frame] = []  # oldest first

    @property
    def in_flight(self) -> int:
        return len(self._frames)

    def advance(self, entering: DenoiseState | None, cancelled: CancelledFn) -> list[tuple[DenoiseState, RGBD]]:
        """Take ``entering`` (a :meth:`LDM3DBackend.prepare` state, or None) in and advance every frame in flight by
        one step in one U-Net call; returns the frames whose last step ran, oldest first. An ``entering`` frame
        that cannot share a call with the frames in flight (see the module notes) enters only after they have
        finished, in this same call. Raises Cancelled, dropping every frame, when ``cancelled()`` is true at the
        start of a step; an error drops them too."""
        results: list[tuple[DenoiseState, RGBD]] = []
        with torch.inference_mode():
            if entering is not None and self._frames and _key(entering) != _key(self._frames[0].state):
                while self._frames:
                    results += self._step(cancelled)
            if entering is not None:
                self._frames.append(_Frame(entering, entering.latents, entering.timesteps.tolist()))
            results += self._step(cancelled)
        return results

    def flush(self, cancelled: CancelledFn) -> list[tuple[DenoiseState, RGBD]]:
        """Finish every frame in flight (advancing without taking new ones); returns them all."""
        results: list[tuple[DenoiseState, RGBD]] = []
        while self._frames:
            results += self.advance(None, cancelled)
        return results

    def clear(self) -> None:
        """Drop every frame in flight (on stop)."""
        self._frames = []

    # ------------------------------------------------------------ one step of every frame in flight

    def _step(self, cancelled: CancelledFn) -> list[tuple[DenoiseState, RGBD]]:
        if cancelled():
            self.clear()
            raise Cancelled()
        if not self._frames:
            return []
        try:
            return self._run()
        except BaseException:
            self.clear()  # some frames may have stepped and others not: none of them can go on
            raise

    def _run(self) -> list[tuple[DenoiseState, RGBD]]:
        backend, frames = self.backend, self._frames
        state = frames[0].state  # a prepare() or a job since they entered may have set other LoRAs or seamless
        backend.apply(state.weights, state.params["seamless"])
        running = [frame for frame in frames if not frame.finished]
        if running:
            inputs, embeddings, timesteps = [], [], []
            for frame in running:
                state = frame.state
                latents = torch.cat([frame.latents] * 2) if state.guided else frame.latents
                inputs.append(state.scheduler.scale_model_input(latents, frame.steps[frame.done]))
                embeddings.append(state.embeddings)
                timesteps.append(state.timesteps[frame.done].reshape(1).expand(frame.rows))
            if len({t.dtype for t in timesteps}) > 1:  # integer and float schedules together: the U-Net's time
                timesteps = [t.float() for t in timesteps]  # embedding takes them as float32 either way
            noise = backend.unet(torch.cat(inputs), torch.cat(timesteps),
                                 encoder_hidden_states=torch.cat(embeddings)).sample
            for frame, prediction in zip(running, noise.split([frame.rows for frame in running])):
                state = frame.state
                prediction = backend.guide(prediction, state)
                frame.latents = state.scheduler.step(prediction, frame.steps[frame.done], frame.latents,
                                                     **state.options).prev_sample
                frame.done += 1
        finished = [frame for frame in frames if frame.finished]
        self._frames = [frame for frame in frames if not frame.finished]
        return [(frame.state, backend.result(frame.state, backend._decode(frame.latents))) for frame in finished]
