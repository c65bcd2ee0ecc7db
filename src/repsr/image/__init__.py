"""Images as data: reading and writing files, the one float-to-integer pixel rule, MATLAB bicubic
resizing (and the one LR function), colour conversion, PSNR/SSIM. Pure functions over arrays and tensors.
"""
