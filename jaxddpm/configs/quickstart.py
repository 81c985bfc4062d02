"""A few minutes on a laptop CPU: the UCI handwritten digits that ship with jaxddpm (1,797 8x8
greyscale images, upscaled to 16x16; 1,500 for training, 297 held out) and a small residual
U-Net. Needs no network.

The diffusion is the article's (T = 300, linear betas 1e-4..0.02, noise prediction with the
mean squared error, the ancestral sampler); the network is not: at this budget the article's
SimpleUNet draws many malformed digits, and a residual U-Net of about the same size
(GroupNorm, attention at 4x4) trained for fewer steps draws far better ones. Batches of 32
rather than 64: 11% fewer images per second on the CPU, twice the updates for the images seen, better
samples from both samplers (experiments/quickstart/: the ablation, its commands and its numbers).
"""

from jaxddpm.configs import default


def get_config():
    c = default.get_config()
    c.data.source = "digits"
    c.data.image_size = 16
    c.data.channels = 1
    c.data.holdout = 297  # 1,500 training images; the rest score the model (jaxddpm eval)
    c.data.random_flip = False  # digits are not mirror-symmetric
    c.model.name = "ddpm_unet"
    c.model.base_channels = 32
    c.model.channel_mult = (1, 2, 2)
    c.model.num_res_blocks = 1
    c.model.attention_resolutions = (4,)
    c.model.dropout = 0.0
    c.model.channels = (32, 64, 128)  # the article's SimpleUNet at this size: --config.model.name=simple_unet
    c.model.time_emb_dim = 32
    c.train.batch_size = 32
    c.train.num_epochs = 0
    c.train.num_steps = 1800
    c.train.learning_rate = 1e-3
    c.train.ema_decay = 0.995
    c.train.log_every_steps = 250
    c.checkpoint.every_steps = 500
    c.sample.every_steps = 0
    c.sample.num = 64
    return c
