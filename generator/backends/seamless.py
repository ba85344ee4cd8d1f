"""Horizontal wrap-around for convolutions: seamless 360° panoramas.

Every zero-padded Conv2d in a model is switched to pad circularly across the width (the
0°/360° seam) and with zeros across the height (the poles). Group norms and attention are
already indifferent to where the seam lies, so with this on a U-Net or VAE treats the image
as a cylinder and the left and right edges meet without a visible edge.
"""

from __future__ import annotations

from functools import partial

import torch.nn.functional as F
from torch import nn


def _wrap_pad(module: nn.Conv2d, args: tuple, pad_h: int, pad_w: int) -> tuple:
    x = args[0]
    if pad_w:
        x = F.pad(x, (pad_w, pad_w, 0, 0), mode="circular")
    if pad_h:
        x = F.pad(x, (0, 0, pad_h, pad_h))
    return (x, *args[1:])


def set_seamless(model: nn.Module, enabled: bool) -> int:
    """Switch horizontal wrap-around on or off for every padded Conv2d; returns how many."""
    count = 0
    for module in model.modules():
        if not isinstance(module, nn.Conv2d) or module.padding_mode != "zeros":
            continue
        hook = getattr(module, "_depthfusion_wrap", None)
        if enabled and hook is None and isinstance(module.padding, tuple) and any(module.padding):
            pad_h, pad_w = module.padding
            module._depthfusion_padding = module.padding
            module.padding = (0, 0)
            module._depthfusion_wrap = module.register_forward_pre_hook(partial(_wrap_pad, pad_h=pad_h, pad_w=pad_w))
            count += 1
        elif not enabled and hook is not None:
            hook.remove()
            module.padding = module._depthfusion_padding
            del module._depthfusion_wrap, module._depthfusion_padding
            count += 1
    return count


def is_seamless(model: nn.Module) -> bool:
    return any(hasattr(m, "_depthfusion_wrap") for m in model.modules())


