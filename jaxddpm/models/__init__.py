"""The noise predictors: the article's `SimpleUNet` and the residual `DDPMUNet` of the
original DDPM code. Both are called as ``model.apply(variables, x_t, t, train, labels=None)``."""

from jaxddpm.models.ddpm_unet import DDPMUNet
from jaxddpm.models.layers import BatchNorm, ConvTranspose4x4, GroupNorm, group_norm, label_embedding, sinusoidal_embedding
from jaxddpm.models.simple_unet import ConvBlock, SimpleUNet

__all__ = ["BatchNorm", "ConvBlock", "ConvTranspose4x4", "DDPMUNet", "GroupNorm", "SimpleUNet", "group_norm", "label_embedding", "sinusoidal_embedding"]
