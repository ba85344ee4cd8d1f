"""Training LDM3D on your own RGBD data (issue 16), each stage one CLI verb.

- dataset: ``dataset build`` (images + captions, a Hugging Face dataset or the frame library → 16-bit depth)
  and the torch Dataset that packs items for the 6- or 4-channel VAE (packing)
- autoencoder: ``train autoencoder`` (widen SD's KL autoencoder to RGB + depth; losses in losses.py)
- unet: ``train unet`` (ε-prediction on the frozen widened autoencoder's latents)
- tiny_decoder: ``train tiny-decoder`` (distil the model's VAE decoder into a TAESD-sized RGB + depth decoder)
- lcm_lora: ``train lcm-lora`` (latent consistency distillation of the model into a few-step LoRA of its U-Net)
- latents: the model's own samples both learn from (``--from-model``, ``--from-teacher``)
- engine: what the trainers share on Hugging Face accelerate (config checks, checkpoints, exact resume, logs)
"""
