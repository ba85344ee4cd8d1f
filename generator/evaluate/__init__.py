"""``python -m generator evaluate``: the LDM3D paper's measurements on your own model.

- fid: Gaussian feature statistics and the Fréchet distance (FID, rFID);  inception_score: IS with splits
- inception: our Inception-v3 (the FID variant) loading the public FID weights, and the feature extractor on it
- clip: CLIP similarity, max(100·cos, 0);  depth: AbsRel / RMSE / δ1 after alignment, and MARE for panoramas
- ssim: SSIM and PSNR;  images: reading image sets;  captions: caption files (text or MS-COCO JSON)
- text2rgbd / autoencoder / fewstep (a few-step set-up against the 50-step teacher): the commands, cli: their
  flags and real networks;  cache, report, plots
  (Pillow line plots), paper (published numbers): what they share

The metric math takes features, probabilities and depth maps as arrays, so every network is injectable; only
inception, clip and the commands load torch models.
"""
