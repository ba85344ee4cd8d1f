"""The published numbers our reports put beside ours (values as published; where the setting is not stated,
the report says so)."""

from __future__ import annotations

# LDM3D at 512×512 on MS-COCO captions, depth against ZoeDepth-N (Stan et al. 2023, arXiv 2305.10853; the same
# values are in the metadata of the Intel/ldm3d-4c model card)
LDM3D_COCO = {"source": "LDM3D paper (arXiv 2305.10853), 512x512 MS-COCO; depth vs ZoeDepth-N",
              "fid": 27.82, "is": 28.79, "clip": 26.61, "abs_rel": 0.0911, "rmse": 0.334}
# Intel/ldm3d-pano's model card (LDM3D-VR, arXiv 2311.03226)
LDM3D_PANO = {"source": "Intel/ldm3d-pano model card", "fid": 118.07, "is": 4.687, "clip": 27.21, "mare": 1.54}


def published(pano: bool) -> dict[str, float | str]:
    return LDM3D_PANO if pano else LDM3D_COCO
