"""Inception-v3 as FID computes it, in plain torch (no torchvision), loading the public FID weights.

The network is the TensorFlow "2015-12-05" Inception-v3 that FID was defined with, in the form pytorch-fid and
torch-fidelity use: torchvision's Inception-v3 layout with 1008 output classes, no auxiliary classifier, and
TensorFlow's pooling quirks (the 3×3 average pools in the A, C and first E blocks leave the zero padding out of
the average; the last E block, Mixed_7c, max-pools instead). Inputs in [0, 1] are resized to 299×299
(bilinear) and scaled to [-1, 1] by 2x − 1, as pytorch-fid does; torch-fidelity and torchmetrics scale uint8 by
(x − 128)/128 after their own resize (TensorFlow-style, or antialiased), so our FID and IS are pytorch-fid's.

State-dict names (what ``pt_inception-2015-12-05-6726825d.pth`` holds; 94 convolutions):
``<block>.conv.weight`` and ``<block>.bn.{weight,bias,running_mean,running_var}`` for the stem blocks
``Conv2d_1a_3x3 Conv2d_2a_3x3 Conv2d_2b_3x3 Conv2d_3b_1x1 Conv2d_4a_3x3`` and for every branch
``Mixed_<id>.<branch>`` of ``Mixed_5b 5c 5d`` (A: branch1x1, branch5x5_1/_2, branch3x3dbl_1/_2/_3, branch_pool),
``Mixed_6a`` (B: branch3x3, branch3x3dbl_1/_2/_3), ``Mixed_6b 6c 6d 6e`` (C: branch1x1, branch7x7_1/_2/_3,
branch7x7dbl_1…_5, branch_pool), ``Mixed_7a`` (D: branch3x3_1/_2, branch7x7x3_1…_4), ``Mixed_7b 7c``
(E: branch1x1, branch3x3_1, branch3x3_2a/_2b, branch3x3dbl_1/_2/_3a/_3b, branch_pool); then ``fc.weight``
(1008, 2048) and ``fc.bias``. BatchNorm's ``num_batches_tracked`` counters are ignored when loading.

Outputs: the 2048-d pool features (FID) and the 1008 logits without the fc bias (Inception Score's
convention, see inception_score.py).
"""

from __future__ import annotations

import hashlib
import logging
import os
import urllib.error
import urllib.request
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger("depthfusion.evaluate")

WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
WEIGHTS_URL = f"https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/{WEIGHTS_FILE}"
WEIGHTS_SHA256_PREFIX = "6726825d"  # the name's suffix: the start of the file's SHA-256 (torch hub's convention)
INPUT_SIZE = 299
FEATURES, CLASSES = 2048, 1008


class _Conv(nn.Module):
    """Convolution without bias, batch norm (TensorFlow's ε = 0.001), ReLU."""

    def __init__(self, cin: int, cout: int, kernel: int | tuple[int, int], stride: int = 1,
                 padding: int | tuple[int, int] = 0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg_pool_tf(x: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class _BlockA(nn.Module):  # Mixed_5b…5d: 35×35
    def __init__(self, cin: int, pool: int) -> None:
        super().__init__()
        self.branch1x1 = _Conv(cin, 64, 1)
        self.branch5x5_1, self.branch5x5_2 = _Conv(cin, 48, 1), _Conv(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = _Conv(cin, 64, 1)
        self.branch3x3dbl_2, self.branch3x3dbl_3 = _Conv(64, 96, 3, padding=1), _Conv(96, 96, 3, padding=1)
        self.branch_pool = _Conv(cin, pool, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch1x1(x), self.branch5x5_2(self.branch5x5_1(x)),
                          self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                          self.branch_pool(_avg_pool_tf(x))], 1)


class _BlockB(nn.Module):  # Mixed_6a: 35×35 → 17×17
    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3 = _Conv(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = _Conv(cin, 64, 1)
        self.branch3x3dbl_2, self.branch3x3dbl_3 = _Conv(64, 96, 3, padding=1), _Conv(96, 96, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch3x3(x), self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                          F.max_pool2d(x, 3, stride=2)], 1)


def _seven(cin: int, cout: int, vertical: bool) -> _Conv:
    """A 7×1 (vertical) or 1×7 convolution keeping the size."""
    return _Conv(cin, cout, (7, 1), padding=(3, 0)) if vertical else _Conv(cin, cout, (1, 7), padding=(0, 3))


class _BlockC(nn.Module):  # Mixed_6b…6e: 17×17 with factorised 7×7 convolutions
    def __init__(self, cin: int, c7: int) -> None:
        super().__init__()
        self.branch1x1 = _Conv(cin, 192, 1)
        self.branch7x7_1, self.branch7x7_2 = _Conv(cin, c7, 1), _seven(c7, c7, vertical=False)
        self.branch7x7_3 = _seven(c7, 192, vertical=True)
        self.branch7x7dbl_1 = _Conv(cin, c7, 1)
        self.branch7x7dbl_2, self.branch7x7dbl_3 = _seven(c7, c7, vertical=True), _seven(c7, c7, vertical=False)
        self.branch7x7dbl_4, self.branch7x7dbl_5 = _seven(c7, c7, vertical=True), _seven(c7, 192, vertical=False)
        self.branch_pool = _Conv(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seven = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        double = self.branch7x7dbl_1(x)
        for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            double = layer(double)
        return torch.cat([self.branch1x1(x), seven, double, self.branch_pool(_avg_pool_tf(x))], 1)


class _BlockD(nn.Module):  # Mixed_7a: 17×17 → 8×8
    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3_1, self.branch3x3_2 = _Conv(cin, 192, 1), _Conv(192, 320, 3, stride=2)
        self.branch7x7x3_1 = _Conv(cin, 192, 1)
        self.branch7x7x3_2, self.branch7x7x3_3 = _seven(192, 192, vertical=False), _seven(192, 192, vertical=True)
        self.branch7x7x3_4 = _Conv(192, 192, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seven = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), seven, F.max_pool2d(x, 3, stride=2)], 1)


class _BlockE(nn.Module):  # Mixed_7b, 7c: 8×8 with split 1×3 / 3×1 outputs
    def __init__(self, cin: int, max_pool: bool) -> None:
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = _Conv(cin, 320, 1)
        self.branch3x3_1 = _Conv(cin, 384, 1)
        self.branch3x3_2a = _Conv(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = _Conv(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1, self.branch3x3dbl_2 = _Conv(cin, 448, 1), _Conv(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = _Conv(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = _Conv(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = _Conv(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        single = self.branch3x3_1(x)
        double = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pooled = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else _avg_pool_tf(x)
        return torch.cat([self.branch1x1(x), self.branch3x3_2a(single), self.branch3x3_2b(single),
                          self.branch3x3dbl_3a(double), self.branch3x3dbl_3b(double), self.branch_pool(pooled)], 1)


class FIDInceptionV3(nn.Module):
    """(N, 3, H, W) images in [0, 1] → ((N, 2048) pool features, (N, 1008) logits without the fc bias)."""

    def __init__(self) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = _Conv(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = _Conv(32, 32, 3)
        self.Conv2d_2b_3x3 = _Conv(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = _Conv(64, 80, 1)
        self.Conv2d_4a_3x3 = _Conv(80, 192, 3)
        self.Mixed_5b, self.Mixed_5c, self.Mixed_5d = _BlockA(192, 32), _BlockA(256, 64), _BlockA(288, 64)
        self.Mixed_6a = _BlockB(288)
        self.Mixed_6b, self.Mixed_6c = _BlockC(768, 128), _BlockC(768, 160)
        self.Mixed_6d, self.Mixed_6e = _BlockC(768, 160), _BlockC(768, 192)
        self.Mixed_7a = _BlockD(768)
        self.Mixed_7b, self.Mixed_7c = _BlockE(1280, max_pool=False), _BlockE(2048, max_pool=True)
        self.fc = nn.Linear(FEATURES, CLASSES)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.interpolate(images, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
        x = 2.0 * x - 1.0
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(F.max_pool2d(x, 3, stride=2)))
        x = F.max_pool2d(x, 3, stride=2)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c,
                      self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
            x = block(x)
        pool = x.mean(dim=(2, 3))
        return pool, pool @ self.fc.weight.T


def load_state(network: nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """Load ``state`` strictly, BatchNorm's num_batches_tracked counters aside; a mismatch names the keys."""
    counters = ".num_batches_tracked"
    state = {k: v for k, v in state.items() if not k.endswith(counters)}
    own = network.state_dict()
    expected = {k for k in own if not k.endswith(counters)}
    missing, unexpected = sorted(expected - state.keys()), sorted(state.keys() - expected)
    wrong = sorted(k for k in expected & state.keys() if tuple(state[k].shape) != tuple(own[k].shape))
    if missing or unexpected or wrong:
        raise ValueError(f"{where} is not the FID Inception-v3 state dict: missing {missing[:3]}, unexpected "
                         f"{unexpected[:3]}, wrong shapes {wrong[:3]} ({len(missing)}/{len(unexpected)}/{len(wrong)})")
    state.update({k: v for k, v in own.items() if k.endswith(counters)})
    network.load_state_dict(state, strict=True)


def cache_path(root: Path | None = None) -> Path:
    """Where the weights are kept: inception/<file> under ``root`` (default: evaluate's cache folder)."""
    from .cache import default_cache

    return Path(root or default_cache()) / "inception" / WEIGHTS_FILE


def fetch_weights(target: Path | None = None, url: str = WEIGHTS_URL) -> Path:
    """The cached weights file, downloaded first if missing and checked against its SHA-256 prefix."""
    target = target or cache_path()
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    log.info("downloading the FID Inception weights (~92 MB) from %s", url)
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(partial, "wb") as out:
            digest = hashlib.sha256()
            while chunk := response.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
    except (urllib.error.URLError, OSError) as exc:
        partial.unlink(missing_ok=True)
        raise OSError(f"cannot download the FID Inception weights from {url} ({exc}). Download the file where there "
                      f"is internet and put it at {target}, or pass it with --inception-weights FILE") from None
    if not digest.hexdigest().startswith(WEIGHTS_SHA256_PREFIX):
        partial.unlink(missing_ok=True)
        raise OSError(f"the file downloaded from {url} has SHA-256 {digest.hexdigest()[:16]}…, not "
                      f"{WEIGHTS_SHA256_PREFIX}…; not kept")
    os.replace(partial, target)
    return target


def load_inception(weights: Path | None = None, device: str | torch.device = "cpu") -> FIDInceptionV3:
    """The FID Inception-v3 with the given weights file (default: the cached public one, fetched if missing)."""
    path = Path(weights) if weights is not None else fetch_weights()
    if not path.is_file():
        raise OSError(f"{path}: no such Inception weights file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a file that is not a state dict
        raise ValueError(f"{path}: not a PyTorch state dict ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict):
        raise ValueError(f"{path}: holds a {type(state).__name__}, not a state dict")
    network = FIDInceptionV3()
    load_state(network, state, str(path))
    return network.to(device).eval().requires_grad_(False)


class InceptionFeatures:
    """The FID feature extractor: uint8 (H, W, 3) images of any sizes → (pool features, unbiased logits).

    Each image is resized to 299×299 on its own (so sizes may differ), then run in batches. ``name`` identifies
    the weights, so cached reference statistics are never reused across different extractors.
    """

    def __init__(self, network: FIDInceptionV3, name: str, device: str | torch.device = "cpu",
                 batch_size: int = 32) -> None:
        self.network, self.name, self.device, self.batch_size = network, name, torch.device(device), batch_size

    @classmethod
    def load(cls, weights: Path | None = None, device: str | torch.device = "cpu") -> InceptionFeatures:
        path = Path(weights) if weights is not None else fetch_weights()
        network = load_inception(path, device)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
        return cls(network, f"fid-inception-v3:{digest}", device)

    def __call__(self, images: list) -> tuple:
        import numpy as np

        pools, logits = [], []
        for start in range(0, len(images), self.batch_size):
            batch = torch.cat([_to_input(image) for image in images[start:start + self.batch_size]])
            with torch.inference_mode():
                pool, logit = self.network(batch.to(self.device))
            pools.append(pool.double().cpu().numpy())
            logits.append(logit.double().cpu().numpy())
        return np.concatenate(pools), np.concatenate(logits)


def _to_input(image) -> torch.Tensor:
    """(1, 3, 299, 299) float in [0, 1] from an (H, W, 3) uint8 image."""
    x = torch.tensor(image).permute(2, 0, 1)[None].float() / 255.0  # a copy: decoded images may be read-only
    return F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
