"""Horizontal wrap-around for convolutions: seamless 360° panoramas.

Every zero-padded Conv2d in a model is switched to pad circularly across the width (the
0°/360° seam) and with zeros across the height (the poles). Group norms and attention are
already indifferent to where the seam lies, so with this on a U-Net or VAE treats the image
as a cylinder and the left and right edges meet without a visible edge. diffusers' stride-2 downsamplers
without conv padding (a VAE encoder's; Qwen-Image's as a ZeroPad2d before the conv) pad one zero column on the
right themselves; that column becomes the first one. Causal 3D convolutions that zero-pad their input themselves (``_padding``, F.pad order: left, right,
top, bottom, front, back; Qwen-Image's video VAE) wrap the width of their input and cached frames instead.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn


def _wrap_pad(module: nn.Conv2d, args: tuple, pad_h: int, pad_w: int) -> tuple:
    x = args[0]
    if pad_w:
        x = F.pad(x, (pad_w, pad_w, 0, 0), mode="circular")
    if pad_h:
        x = F.pad(x, (0, 0, pad_h, pad_h))
    return (x, *args[1:])


def _wrap_right_pad(module: nn.Conv2d, args: tuple) -> tuple:
    x = args[0]  # padded by one zero column on the right: the first column comes round instead
    return (torch.cat([x[..., :-1], x[..., :1]], dim=-1), *args[1:])


def _wrap_width(module: nn.Module, args: tuple, pad: int) -> tuple:
    """A causal convolution's input (and cached frames) with ``pad`` columns of each side wrapped round."""
    return tuple(torch.cat([x[..., -pad:], x, x[..., :pad]], dim=-1) if isinstance(x, torch.Tensor) else x
                 for x in args)


def _set_causal(module: nn.Module, enabled: bool) -> int:
    """Wrap-around on or off for a self-padding causal Conv3d; 1 if it changed."""
    hook = getattr(module, "_depthfusion_causal_wrap", None)
    if enabled and hook is None and module._padding[0]:
        module._depthfusion_causal_padding, pad = module._padding, module._padding[0]
        module._padding = (0, 0, *module._padding[2:])
        module._depthfusion_causal_wrap = module.register_forward_pre_hook(partial(_wrap_width, pad=pad))
        return 1
    if not enabled and hook is not None:
        hook.remove()
        module._padding = module._depthfusion_causal_padding
        del module._depthfusion_causal_wrap, module._depthfusion_causal_padding
        return 1
    return 0


def _right_padded_conv(module: nn.Module) -> nn.Conv2d | None:
    """The padding-free conv after a (0, 1, 0, 1) zero pad: a diffusers Downsample2D's (it pads in its forward), or
    a Sequential of ZeroPad2d((0, 1, 0, 1)) and a Conv2d (Qwen-Image's and Wan's VAE downsamplers)."""
    if (getattr(module, "use_conv", False) and getattr(module, "padding", None) == 0
            and isinstance(getattr(module, "conv", None), nn.Conv2d)):
        return module.conv
    if (isinstance(module, nn.Sequential) and len(module) == 2 and isinstance(module[0], nn.ZeroPad2d)
            and tuple(module[0].padding) == (0, 1, 0, 1) and isinstance(module[1], nn.Conv2d)):
        return module[1]
    return None


def set_seamless(model: nn.Module, enabled: bool) -> int:
    """Switch horizontal wrap-around on or off for every padded Conv2d and self-padding causal Conv3d; returns how
    many."""
    count = 0
    for module in model.modules():
        if isinstance(module, nn.Conv3d) and isinstance(getattr(module, "_padding", None), tuple):
            count += _set_causal(module, enabled)
            continue
        conv = _right_padded_conv(module)
        if conv is not None:
            hook = getattr(conv, "_depthfusion_wrap_right", None)
            if enabled and hook is None:
                conv._depthfusion_wrap_right = conv.register_forward_pre_hook(_wrap_right_pad)
                count += 1
            elif not enabled and hook is not None:
                hook.remove()
                del conv._depthfusion_wrap_right
                count += 1
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
    return any(hasattr(m, "_depthfusion_wrap") or hasattr(m, "_depthfusion_wrap_right")
               or hasattr(m, "_depthfusion_causal_wrap") for m in model.modules())


