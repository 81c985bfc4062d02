"""The article's run: Oxford Flowers102 (all 8,189 images) at 64x64, full SimpleUNet,
T = 300 linear, Adam 1e-3, batch 128, 300 epochs."""

from jaxddpm.configs import default


def get_config():
    return default.get_config()
