"""Tiny random-weight depth models in the transformers layout, built on the spot (~0.5 MB, milliseconds).

Same classes as the real checkpoints with toy sizes: DPT (a 4-layer ViT of width 32 on 16 px patches),
Depth Anything (a 4-layer DINOv2 backbone, relative or metric) and ZoeDepth (a 4-layer BEiT backbone, one bin
head of 8 bins), each saved with its image processor so AutoModelForDepthEstimation / AutoImageProcessor and
``pipeline("depth-estimation")`` load it from the folder.
"""

from __future__ import annotations

from pathlib import Path

import torch

NECK = {"neck_hidden_sizes": [16, 16, 32, 32], "fusion_hidden_size": 16}
VIT = {"hidden_size": 32, "num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 37}
STAGES = ["stage1", "stage2", "stage3", "stage4"]


def build(kind: str, folder: Path, seed: int = 0) -> Path:
    """Write a tiny ``dpt``, ``depth_anything``, ``depth_anything_metric`` or ``zoedepth`` model into ``folder``."""
    import transformers as tf

    torch.manual_seed(seed)
    if kind == "dpt":
        model = tf.DPTForDepthEstimation(tf.DPTConfig(image_size=32, patch_size=16, backbone_out_indices=[0, 1, 2, 3],
                                                      **VIT, **NECK))
        processor = tf.DPTImageProcessor(size={"height": 32, "width": 32})
    elif kind in ("depth_anything", "depth_anything_metric"):
        backbone = tf.Dinov2Config(image_size=32, patch_size=4, out_features=STAGES, reshape_hidden_states=False, **VIT)
        metric = {"depth_estimation_type": "metric", "max_depth": 20} if kind.endswith("metric") else {}
        model = tf.DepthAnythingForDepthEstimation(tf.DepthAnythingConfig(
            backbone_config=backbone, patch_size=4, reassemble_hidden_size=32, head_hidden_size=8, **NECK, **metric))
        processor = tf.DPTImageProcessor(size={"height": 28, "width": 28}, keep_aspect_ratio=True,
                                         ensure_multiple_of=4, do_pad=False)
        if metric:  # random features are ~1e-6 here: widen them so the metric sigmoid leaves its flat middle
            with torch.no_grad():
                model.head.conv3.weight.mul_(1e6)
    elif kind == "zoedepth":
        backbone = tf.BeitConfig(image_size=32, patch_size=4, use_relative_position_bias=True, out_features=STAGES,
                                 reshape_hidden_states=False, **VIT)
        model = tf.ZoeDepthForDepthEstimation(tf.ZoeDepthConfig(
            backbone_config=backbone, bottleneck_features=16, num_relative_features=8, bin_embedding_dim=8,
            num_attractors=[4, 2, 2, 1], bin_configurations=[{"n_bins": 8, "min_depth": 0.5, "max_depth": 10.0}],
            initializer_range=0.2, **NECK))  # at the default 0.02 every pixel comes out softplus(0) = ln 2 m
        processor = tf.ZoeDepthImageProcessor(size={"height": 32, "width": 32})
    else:
        raise ValueError(f"unknown tiny depth model {kind!r}")
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder
