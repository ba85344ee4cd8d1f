"""RGB + 16-bit depth ↔ the VAE's input/output tensor, in the backend's encodings.

The 6-channel VAE (``Intel/ldm3d``) sees depth as three 8-bit channels (0, high byte, low byte), the 4-channel
VAEs (``ldm3d-4c``, ``ldm3d-pano``) as one channel depth16/65535; everything scaled from [0, 1] to [-1, 1]. The
encoding is td_bridge.depth's and the decoding the backend's (``Variant.decode_depth``), so what a trained model
decodes is read exactly as generation reads it.
"""

from __future__ import annotations

import numpy as np
import torch

from td_bridge.depth import DEPTH_MAX, depth16_to_vae6, from_uint16

from ..backends.ldm3d import Variant

CHANNELS = (6, 4)


def check_channels(channels: int) -> int:
    if channels not in CHANNELS:
        raise ValueError(f"channels must be 6 (RGB + 3×8-bit depth, Intel/ldm3d) or 4 (RGB + depth, ldm3d-4c/pano), "
                         f"got {channels}")
    return channels


def pack(rgb: np.ndarray, depth16: np.ndarray, channels: int) -> torch.Tensor:
    """(C, H, W) float32 in [-1, 1] from (H, W, 3) uint8 RGB and (H, W) uint16 depth."""
    check_channels(channels)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"rgb must be (H, W, 3) uint8, got {rgb.dtype} {rgb.shape}")
    if depth16.dtype != np.uint16 or depth16.shape != rgb.shape[:2]:
        raise ValueError(f"depth must be uint16 of the RGB's size {rgb.shape[:2]}, got {depth16.dtype} {depth16.shape}")
    depth = depth16_to_vae6(depth16) if channels == 6 else from_uint16(depth16)[..., None]
    image = np.concatenate([rgb.astype(np.float32) / np.float32(255.0), depth], axis=2)
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))) * 2.0 - 1.0


def unpack(image: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 RGB, uint16 depth) from one (C, H, W) tensor in [-1, 1], decoded as generation decodes it."""
    channels = check_channels(image.shape[0])
    array = ((image.detach().float().cpu() + 1.0) / 2.0).clamp(0, 1).permute(1, 2, 0).numpy()
    rgb = np.clip(np.round(array[..., :3] * 255.0), 0, 255).astype(np.uint8)
    return rgb, Variant(channels=channels, scale_factor=1).decode_depth(array)


def depth_map(images: torch.Tensor) -> torch.Tensor:
    """Differentiable depth in [-1, 1], (B, 1, H, W), from a batch in [-1, 1]: for 6 channels the two bytes
    recombined as the decoder reads them, 256·255·c4 + 255·c5 over 65535 (channel 3 is unused)."""
    unit = (images[:, 3:] + 1.0) / 2.0
    if images.shape[1] == 6:
        unit = (255.0 * 256.0 * unit[:, 1:2] + 255.0 * unit[:, 2:3]) / DEPTH_MAX
    return unit * 2.0 - 1.0
