"""Denoising networks; they map (x_t, t[, x_self_cond, y]) to an image-shaped tensor."""

from ddim.models.unet import UNet, UNetConfig

__all__ = ["UNet", "UNetConfig"]
