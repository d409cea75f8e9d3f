"""BasicSR-exact image-quality metrics (PSNR, SSIM, PSNR-B) and the conventions
(Y channel, border, quantisation) every score states."""
