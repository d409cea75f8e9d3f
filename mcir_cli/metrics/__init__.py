"""BasicSR-exact image-quality metrics (`basicsr`: PSNR, SSIM, PSNR-B) and the conventions
(`conventions`: Y channel, border, quantisation) every score states."""
