"""A region on the sphere as an equirectangular mask (numpy only): what remix repaints.

A region is a box in longitude and latitude around a centre, in the view's own terms (td_bridge.geometry and the
component's Yaw/Pitch): ``yaw`` degrees to the left of straight ahead (the image centre), ``pitch`` degrees up,
``width`` degrees of longitude and ``height`` degrees of latitude. Longitude wraps, so a region centred behind the
viewer (yaw 180) covers both ends of the image. ``feather`` degrees outside the box the mask ramps linearly from 1
to 0 (per axis, multiplied), so a remix blends into what it keeps.
"""

from __future__ import annotations

import numpy as np

from .params import ParamError


class RegionError(ParamError):
    """A region or mask is malformed, or leaves nothing to repaint or nothing to keep."""


def sphere_region_mask(width: int, height: int, yaw: float, pitch: float, region_width: float,
                       region_height: float, feather: float = 0.0) -> np.ndarray:
    """(height, width) float32 mask in [0, 1] of a region on an equirect image (1: repaint, 0: keep)."""
    if width < 1 or height < 1:
        raise RegionError(f"the image must be at least 1x1, got {width}x{height}")
    if not 0.0 < region_width <= 360.0 or not 0.0 < region_height <= 180.0:
        raise RegionError(f"a region is (0, 360] degrees wide and (0, 180] high, got {region_width}x{region_height}")
    if not -90.0 <= pitch <= 90.0:
        raise RegionError(f"pitch must be in [-90, 90] degrees, got {pitch}")
    if not 0.0 <= feather <= 90.0:
        raise RegionError(f"feather must be in [0, 90] degrees, got {feather}")
    longitude = (np.arange(width) + 0.5) / width * 360.0 - 180.0  # pixel centres, positive to the right
    latitude = 90.0 - (np.arange(height) + 0.5) / height * 180.0
    across = np.abs((longitude + yaw + 180.0) % 360.0 - 180.0)  # the region's centre is at longitude -yaw
    beyond_x = np.maximum(across - region_width / 2.0, 0.0)
    beyond_y = np.maximum(np.abs(latitude - pitch) - region_height / 2.0, 0.0)
    return (_ramp(beyond_y, feather)[:, None] * _ramp(beyond_x, feather)[None, :]).astype(np.float32)


def _ramp(beyond: np.ndarray, feather: float) -> np.ndarray:
    """1 inside (beyond 0), falling linearly to 0 at ``feather`` degrees beyond the edge."""
    if feather == 0.0:
        return (beyond == 0.0).astype(np.float64)
    return np.clip(1.0 - beyond / feather, 0.0, 1.0)


def check_mask(mask: np.ndarray, width: int, height: int) -> np.ndarray:
    """A mask image as float32 (height, width) in [0, 1]: uint8 or uint16 grey (or RGB/RGBA whose colour channels
    are equal; alpha is ignored), or floats in [0, 1]; it must match the frame's size and both repaint and keep
    something."""
    mask = np.asarray(mask)
    if mask.ndim == 3:
        if mask.shape[2] not in (1, 3, 4):
            raise RegionError(f"a mask has 1, 3 or 4 channels, got {mask.shape[2]}")
        colour = mask[..., :3] if mask.shape[2] >= 3 else mask
        if not (colour == colour[..., :1]).all():
            raise RegionError("a colour mask must be grey (its red, green and blue equal): white repaints, black "
                              "keeps")
        mask = colour[..., 0]
    if mask.ndim != 2:
        raise RegionError(f"a mask is a 2-D grey image, got an array of shape {mask.shape}")
    if mask.shape != (height, width):
        raise RegionError(f"the mask is {mask.shape[1]}x{mask.shape[0]}; the frame is {width}x{height}")
    if mask.dtype == np.uint8 or mask.dtype == np.uint16:
        values = mask.astype(np.float32) / np.iinfo(mask.dtype).max
    elif mask.dtype == bool:
        values = mask.astype(np.float32)
    elif np.issubdtype(mask.dtype, np.floating):
        if not np.isfinite(mask).all() or mask.min() < 0.0 or mask.max() > 1.0:
            raise RegionError("a float mask holds values in [0, 1] (no NaN)")
        values = mask.astype(np.float32)
    else:
        raise RegionError(f"a mask is uint8, uint16, bool or float, got {mask.dtype}")
    return check_coverage(values)


def check_coverage(mask: np.ndarray) -> np.ndarray:
    """``mask`` itself, once it repaints some pixels and keeps some (a remix needs both: what to change, and a
    border to match)."""
    if not (mask > 0.0).any():
        raise RegionError("the mask repaints nothing (it is all black / zero)")
    if not (mask == 0.0).any():
        raise RegionError("the mask repaints the whole frame (no pixel is black / zero), keeping nothing: generate "
                          "a new frame instead")
    return mask
