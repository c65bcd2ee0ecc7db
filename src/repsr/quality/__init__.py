"""Measuring models: the one `evaluate` (PSNR/SSIM against bicubic), the degraded benchmark, and the
artifact gate every shipped model passes.
"""
