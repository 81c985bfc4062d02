"""Fields every configuration has, with the article's values where it gives them."""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()

    c.data = ml_collections.ConfigDict()
    c.data.source = "tfds"  # tfds | digits | folder
    c.data.name = "oxford_flowers102"  # TFDS dataset name
    c.data.splits = "train+validation+test"  # TFDS splits to concatenate
    c.data.data_dir = ""  # prepared TFDS directory ('' = TFDS default)
    c.data.download = True  # let TFDS download and prepare when the data is missing
    c.data.path = ""  # image folder, for source=folder
    c.data.image_size = 64  # images are resized (not cropped) to image_size x image_size
    c.data.channels = 3  # 3 = RGB, 1 = greyscale
    c.data.random_flip = True  # random horizontal flip, drawn on the device per step
    c.data.holdout = 0  # images kept out of training for evaluation (a fixed random choice)
    c.data.cache_dir = ""  # where decoded TFDS images are cached ('' = ~/.cache/jaxddpm)

    c.model = ml_collections.ConfigDict()
    c.model.name = "simple_unet"  # simple_unet (the article's) | ddpm_unet (residual, GroupNorm, attention)
    c.model.num_classes = 0  # > 0: class-conditional on the dataset's labels (classifier-free guidance)
    # simple_unet:
    c.model.channels = (64, 128, 256, 512, 1024)
    c.model.time_emb_dim = 32
    c.model.upsample_impl = "phases"  # phases | subpixel | dilated (same math)
    c.model.conv_impl = "auto"  # auto | xla | cpu: how convolutions and their gradients are computed (same math)
    # ddpm_unet:
    c.model.base_channels = 64
    c.model.channel_mult = (1, 2, 2, 2)  # one level per entry; all but the last halve H and W
    c.model.num_res_blocks = 2
    c.model.attention_resolutions = (16,)  # feature-map sides that get self-attention
    c.model.dropout = 0.1
    c.model.norm_groups = 32
    c.model.time_scale_shift = False  # the time embedding scales and shifts each block's second GroupNorm (not added)
    c.model.upsample_conv = True  # a 3x3 convolution after each up level's nearest-neighbour upsampling
    # ddpm_unet options for other checkpoints of the family (jaxddpm convert --from-diffusers sets them):
    c.model.time_flip_sin_to_cos = False  # time embedding [cos, sin] instead of [sin, cos]
    c.model.time_freq_shift = 1.0  # frequencies exp(-k log(10000) / (dim/2 - shift))
    c.model.downsample_padding = "same"  # same | after (one row/column after) | both (one on every side)
    c.model.norm_eps = 1e-6  # GroupNorm epsilon
    c.model.attention_head_dim = 0  # channels per attention head; 0 = one head
    c.model.qkv_layout = "fused"  # fused | separate (q, k, v projections stored apart)
    c.model.mid_scale = 1.0  # the middle blocks' outputs are divided by this
    c.model.dtype = "float32"  # compute dtype: float32 | bfloat16 (parameters stay float32)

    c.diffusion = ml_collections.ConfigDict()
    c.diffusion.schedule = "linear"
    c.diffusion.num_timesteps = 300
    c.diffusion.beta_start = 1e-4
    c.diffusion.beta_end = 0.02
    c.diffusion.prediction = "eps"  # what the model predicts: eps (the article) | x0 | v
    c.diffusion.min_snr_gamma = 0.0  # > 0: min-SNR-gamma loss weighting (5.0 is common)

    c.train = ml_collections.ConfigDict()
    c.train.seed = 0
    c.train.batch_size = 128
    c.train.learning_rate = 1e-3
    c.train.lr_schedule = "constant"  # constant (the article's) | cosine (decay to 0 at the last step)
    c.train.warmup_steps = 0  # linear learning-rate warmup from 0 over this many steps
    c.train.adam_betas = (0.9, 0.999)  # Adam's (b1, b2): PyTorch's defaults, the article's
    c.train.grad_clip_norm = 0.0  # 0 = off
    c.train.timestep_sampling = "uniform"  # uniform (the article's: independent draws) | stratified (a batch covers [0, T) evenly; same expected loss)
    c.train.num_epochs = 300
    c.train.num_steps = 0  # > 0 overrides num_epochs
    c.train.ema_decay = 0.999
    c.train.ema_start = 0  # the EMA copies the parameters until this step, then averages
    c.train.label_dropout = 0.1  # share of labels replaced by "no label" (conditional models)
    c.train.sharding = "replicated"  # train state over the devices: replicated | fsdp (split large arrays)
    c.train.log_every_steps = 100
    c.train.steps_per_call = 8  # training steps per compiled call (a loop on the device); 1 = one per call

    c.checkpoint = ml_collections.ConfigDict()
    c.checkpoint.every_steps = 5000
    c.checkpoint.keep = 3

    c.sample = ml_collections.ConfigDict()
    c.sample.every_steps = 10000  # sample grid during training; 0 = only at the end
    c.sample.num = 64
    c.sample.sampler = "ancestral"  # ancestral (the article's, T steps) | ddim
    c.sample.steps = 50  # ddim only: number of steps
    c.sample.eta = 0.0  # ddim only: 0 = deterministic, 1 = ancestral-like noise
    c.sample.clip_x0 = False  # clip the predicted x0 to [-1, 1] (the article's sampler does not)
    c.sample.variance = "fixed_small"  # ancestral: posterior variance (the article's) | fixed_large (beta_t)
    c.sample.guidance = 1.0  # conditional models: 0 = unconditional, 1 = conditional, > 1 = guided
    c.sample.label = -1  # conditional models: the class to draw; -1 cycles through all classes
    return c
