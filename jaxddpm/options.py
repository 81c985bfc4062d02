"""The allowed values of every enumerated option, in one place: validation, error messages
and the command line's ``choices`` all read them here, without loading JAX. (The
convolution forms' values live with `jaxddpm.kernels.ConvPolicy`; the beta schedules with
`jaxddpm.schedule.BETA_SCHEDULES`.)"""

DATA_SOURCES = ("tfds", "digits", "folder")
MODELS = ("simple_unet", "ddpm_unet")
SAMPLERS = ("ancestral", "ddim")
LR_SCHEDULES = ("constant", "cosine")
TIMESTEP_SAMPLING = ("uniform", "stratified")  # training timesteps: independent (the article's) | evenly covering [0, T)
VARIANCES = ("fixed_small", "fixed_large")  # reverse-step variance: posterior (the article's) | beta_t
DTYPES = ("float32", "bfloat16")
PREDICTIONS = ("eps", "x0", "v")  # what a model's output estimates
SHARDING_MODES = ("replicated", "fsdp")
METRICS = ("bpd", "quality", "fid")
DOWNSAMPLE_PADDINGS = ("same", "after", "both")  # ddpm_unet: see jaxddpm.models.ddpm_unet
QKV_LAYOUTS = ("fused", "separate")

# FID from fewer samples is biased upwards; published FIDs use 50,000.
FID_PUBLISHED_SAMPLES = 50_000
FID_WARN_BELOW = 10_000
