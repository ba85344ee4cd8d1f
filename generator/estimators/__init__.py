"""Depth estimation: an image or a 360° panorama → an RGBD frame in DepthFusion's encoding.

- checkpoints: known models and licences;  model: DepthModel on transformers (DPT, Depth Anything, ZoeDepth)
- pano: equirectangular → perspective views → global scale/shift alignment → feathered blend
- alignment: least-squares scale and shift in disparity, AbsRel and δ1
- frame: estimate_rgbd / estimated_frame (an RGB array in, a frame out);  inputs: reading user images
- command: the ``depth`` CLI verb

Only model.py (and command.py, which loads it) needs torch and transformers.
"""
