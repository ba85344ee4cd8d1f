"""Autoencoder losses: an LPIPS-style perceptual distance, a PatchGAN discriminator, hinge loss, adaptive weight.

Written here from the published descriptions (no torchvision, which cannot sit beside the CPU test torch):

- Perceptual: the LPIPS recipe (Zhang et al. 2018): features of a fixed network at several depths, each
  unit-normalised over channels, squared differences weighted per channel, averaged over space, summed over
  depths. The channel weights are LPIPS's learned 1×1 ones (its ``vgg.pth``) by default; equal weights (the
  channel mean) are an explicit choice: distances then come out several times smaller (8–10× in a comparison
  with the ``lpips`` package), so a loss weight set for LPIPS means less. The network is any module returning a
  list of feature maps with a ``channels`` attribute; :class:`VGG16Features` is VGG16's convolutional trunk (taps
  after relu1_2, relu2_2, relu3_3, relu4_3, relu5_3) loading torchvision-layout ``features.N.*`` weights. Input
  scaling constants: LPIPS's ScalingLayer (shift −0.030, −0.088, −0.188; scale 0.458, 0.448, 0.450 on [-1, 1]
  input), from github.com/richzhang/PerceptualSimilarity.
- Discriminator: the PatchGAN of pix2pix / taming-transformers' NLayerDiscriminator (4×4 convolutions, 64
  filters doubling to ×8, LeakyReLU 0.2, batch norm, N(0, 0.02) initialisation) with ``in_channels`` 6 or 4.
- Hinge loss and the adaptive generator weight ‖∇nll‖ / (‖∇g‖ + 1e-4) at the decoder's last layer, clamped to
  [0, 1e4], as CompVis' LPIPSWithDiscriminator (disc_weight 0.5, kl_weight 1e-6, disc_start 50,001).
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .options import ConfigError

log = logging.getLogger("depthfusion.train.losses")

VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
VGG16_TAPS = (3, 8, 15, 22, 29)  # indices of the ReLUs after conv1_2, conv2_2, conv3_3, conv4_3, conv5_3
SHIFT, SCALE = (-0.030, -0.088, -0.188), (0.458, 0.448, 0.450)
LPIPS_URL = "https://github.com/richzhang/PerceptualSimilarity/raw/master/lpips/weights/v0.1/vgg.pth"
EQUAL_WARNING = ("perceptual distance with equal channel weights: this is not LPIPS. Its distances are several "
                 "times smaller than LPIPS's (8-10x in a comparison with the lpips package), so a "
                 "--perceptual-weight set for LPIPS (the CompVis recipe) weighs it less, and its values are not "
                 "LPIPS numbers")


class VGG16Features(nn.Module):
    """VGG16's convolutional trunk with torchvision's ``features.N`` layout; returns the five LPIPS taps."""

    channels = (64, 128, 256, 512, 512)

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = 3
        for spec in VGG16:
            if spec == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(width, spec, 3, padding=1), nn.ReLU(inplace=False)]
                width = spec
        self.features = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        taps = []
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in VGG16_TAPS:
                taps.append(x)
        return taps


class Perceptual(nn.Module):
    """LPIPS-style distance between two batches of 3-channel images in [-1, 1]: (B,) tensor. Frozen.

    ``weights``: one per-channel weight vector per tap (LPIPS's, see :func:`layer_weights`); None: equal weights."""

    def __init__(self, features: nn.Module, weights: list[torch.Tensor] | None = None) -> None:
        super().__init__()
        self.features = features
        channels = tuple(features.channels)
        if weights is not None and [w.numel() for w in weights] != list(channels):
            raise ConfigError(f"perceptual layer weights have {[w.numel() for w in weights]} channels, "
                              f"the network's taps {list(channels)}")
        initial = weights or [torch.full((c,), 1.0 / c) for c in channels]
        self.weights = nn.ParameterList([nn.Parameter(w.reshape(1, -1, 1, 1).float().abs()) for w in initial])
        self.register_buffer("shift", torch.tensor(SHIFT).reshape(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(SCALE).reshape(1, 3, 1, 1))
        self.requires_grad_(False).eval()

    def train(self, mode: bool = True) -> Perceptual:
        return super().train(False)  # always frozen, always in eval mode

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        both = self.features((torch.cat([x, y]) - self.shift) / self.scale)
        total = x.new_zeros(x.shape[0])
        for feature, weight in zip(both, self.weights):
            a, b = (feature / (feature.norm(dim=1, keepdim=True) + 1e-10)).chunk(2)
            total = total + ((a - b) ** 2 * weight).sum(dim=1).mean(dim=(1, 2))
        return total


def lpips_cache_path() -> Path:
    """Where DepthFusion looks for a copy of LPIPS's vgg.pth: lpips/vgg.pth under its cache folder."""
    from ..evaluate.cache import default_cache

    return default_cache() / "lpips" / "vgg.pth"


def lpips_weights_file() -> Path | None:
    """LPIPS's vgg.pth if it is at hand: inside an installed ``lpips`` package (found, not imported), else at
    :func:`lpips_cache_path`."""
    try:
        spec = importlib.util.find_spec("lpips")
    except ValueError:  # a module of that name without a spec
        spec = None
    folders = (spec.submodule_search_locations or []) if spec is not None else []
    places = [Path(folder) / "weights" / "v0.1" / "vgg.pth" for folder in folders] + [lpips_cache_path()]
    return next((p for p in places if p.is_file()), None)


def layer_weights(choice: str, taps: int) -> list[torch.Tensor] | None:
    """The per-channel weights of a perceptual network with ``taps`` taps. ``lpips`` (the default): LPIPS's learned
    ones from its vgg.pth (:func:`lpips_weights_file`; an error saying where to get it when there is none);
    ``equal``: None, with a warning that this is not LPIPS; else a file or hub id (``REPO:FILE``) in vgg.pth's
    layout (keys ``lin0.model.1.weight`` …)."""
    if choice == "equal":
        log.warning(EQUAL_WARNING)
        return None
    if choice == "lpips":
        path = lpips_weights_file()
        if path is None:
            raise ConfigError(f"LPIPS's learned layer weights (its vgg.pth) were not found. Install the lpips package "
                              f"(`pip install --no-deps lpips` is enough: the file ships inside it), or download "
                              f"{LPIPS_URL} (BSD licence) to {lpips_cache_path()}, or pass the file with "
                              "--perceptual-lin FILE. --perceptual-lin equal uses equal channel weights instead "
                              "(not LPIPS: smaller distances)")
        log.info("perceptual: LPIPS layer weights from %s", path)
    else:
        path = _weights_file(choice, "perceptual layer weights", "vgg.pth", "a vgg.pth file, lpips or equal")
    table = _load_file(path)
    try:
        return [table[f"lin{k}.model.1.weight"].flatten() for k in range(taps)]
    except KeyError as exc:
        raise ConfigError(f"{path}: no LPIPS layer weight {exc} (keys lin0.model.1.weight … lin{taps - 1})") from None


def load_perceptual(spec: str, lin: str = "lpips") -> Perceptual | None:
    """``none``; a VGG16 weights file (.safetensors, .pth/.bin) with torchvision's ``features.N`` keys; or a hub
    id (``timm/vgg16.tv_in1k``, optionally ``REPO:FILE``) holding one. ``lin``: the channel weights, as
    :func:`layer_weights` takes them."""
    if spec == "none":
        return None
    weights = layer_weights(lin, len(VGG16Features.channels))  # first: a missing vgg.pth costs no VGG16 download
    features = VGG16Features()
    state = _features_state(_weights_file(spec, "perceptual weights", "model.safetensors",
                                          "a local VGG16 weights file or --perceptual none"))
    missing, _unexpected = features.load_state_dict(state, strict=False)
    if missing:
        raise ConfigError(f"perceptual weights {spec}: missing {', '.join(missing[:4])}… (expected VGG16 "
                          "`features.N.weight/bias` keys, torchvision's layout)")
    return Perceptual(features, weights)


def _weights_file(spec: str, what: str, default_name: str, instead: str) -> Path:
    path = Path(spec).expanduser()
    if path.is_file():
        return path
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    repo, _, filename = spec.partition(":")
    try:
        return Path(hf_hub_download(repo, filename or default_name))
    except (LocalEntryNotFoundError, HfHubHTTPError, ValueError, OSError) as exc:
        raise ConfigError(f"{what} {spec!r}: not a file, and the hub gave none ({exc}); pass {instead}") from None


def _load_file(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        table = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # safetensors, pickle and zip errors have no common base
        raise ConfigError(f"cannot read weights from {path}: {type(exc).__name__}: {exc}") from None
    if not isinstance(table, dict):
        raise ConfigError(f"{path} holds a {type(table).__name__}, not a state dict")
    return table


def _features_state(path: Path) -> dict[str, torch.Tensor]:
    table = _load_file(path)
    prefixes = ("", "module.", "net.", "model.")  # torchvision / timm save `features.N`; wrappers add a prefix
    for prefix in prefixes:
        state = {k[len(prefix):]: v for k, v in table.items() if k.startswith(prefix + "features.")}
        if state:
            return state
    raise ConfigError(f"{path}: no `features.N` keys (VGG16 in torchvision's layout)")


class PatchDiscriminator(nn.Module):
    """PatchGAN: one real/fake logit per overlapping patch, for ``in_channels`` 6 or 4 (RGB + depth)."""

    def __init__(self, in_channels: int, width: int = 64, layers: int = 3) -> None:
        super().__init__()
        blocks: list[nn.Module] = [nn.Conv2d(in_channels, width, 4, 2, 1), nn.LeakyReLU(0.2)]
        multiple = 1
        for n in range(1, layers + 1):
            previous, multiple = multiple, min(2 ** n, 8)
            stride = 2 if n < layers else 1
            blocks += [nn.Conv2d(width * previous, width * multiple, 4, stride, 1, bias=False),
                       nn.BatchNorm2d(width * multiple), nn.LeakyReLU(0.2)]
        blocks.append(nn.Conv2d(width * multiple, 1, 4, 1, 1))
        self.net = nn.Sequential(*blocks)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0.0, 0.02)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.normal_(module.weight, 1.0, 0.02)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def hinge_d_loss(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    return 0.5 * (F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean())


def adaptive_weight(nll: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor) -> torch.Tensor:
    """‖∇nll‖ / (‖∇g‖ + 1e-4) at ``last_layer``, clamped to [0, 1e4] and detached."""
    nll_grad = torch.autograd.grad(nll, last_layer, retain_graph=True)[0]
    g_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    return (nll_grad.norm() / (g_grad.norm() + 1e-4)).clamp(0.0, 1e4).detach()
