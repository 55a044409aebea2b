"""Evaluation: reconstruction metrics of the autoencoders (PSNR, SSIM, LPIPS), and more."""
