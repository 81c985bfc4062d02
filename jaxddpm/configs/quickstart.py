"""A few minutes on a laptop CPU: the UCI handwritten digits that ship with jaxddpm (1,797 8x8
greyscale images, upscaled to 16x16; 1,500 for training, 297 held out) and a small
SimpleUNet. Needs no network."""

from jaxddpm.configs import default


def get_config():
    c = default.get_config()
    c.data.source = "digits"
    c.data.image_size = 16
    c.data.channels = 1
    c.data.holdout = 297  # 1,500 training images; the rest score the model (jaxddpm eval)
    c.data.random_flip = False  # digits are not mirror-symmetric
    c.model.channels = (32, 64, 128)
    c.model.time_emb_dim = 32
    c.train.batch_size = 64
    c.train.num_epochs = 0
    c.train.num_steps = 2000
    c.train.learning_rate = 1e-3
    c.train.ema_decay = 0.995
    c.train.log_every_steps = 250
    c.checkpoint.every_steps = 500
    c.sample.every_steps = 0
    c.sample.num = 64
    return c
