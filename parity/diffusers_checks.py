"""Number-by-number checks of jaxddpm against diffusers on the original DDPM models'
configurations (a randomly initialised ``UNet2DModel`` and its ``DDPMScheduler``).

    python -m parity.diffusers_checks --config cifar10-32            # a table; exit 0 if all pass
    python -m parity.diffusers_checks --config celebahq-256 --batch 1 --json

The diffusers model is saved with ``save_pretrained`` and read back through
`parity.diffusers_format` (the same path as ``jaxddpm convert --from-diffusers``), so the
checks cover the conversion as well. Tolerances: the network in float32 at most 1e-4
absolute, in float64 1e-10 relative; the scheduler's tables and steps, which diffusers keeps in
float32 whatever the model's precision, within float32 rounding (see each check).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import torch

from jaxddpm import diffusion
from jaxddpm.factory import build_schedule
from jaxddpm.kernels import ConvPolicy
from jaxddpm.models.layers import sinusoidal_embedding
from jaxddpm.schedule import BETA_SCHEDULES, tables_from_betas
from jaxddpm.terminal import ArgumentParser
from parity import diffusers_format
from parity.checks import EPS32, CheckResult, compare, nchw, nhwc, precision

# Field values of the published config.json files of google/ddpm-cifar10-32 and
# google/ddpm-celebahq-256 (the UNet2DModel and the DDPMScheduler).
_COMMON_UNET = dict(
    act_fn="silu", attention_head_dim=None, center_input_sample=False, downsample_padding=0, flip_sin_to_cos=False,
    freq_shift=1, in_channels=3, out_channels=3, layers_per_block=2, mid_block_scale_factor=1, norm_eps=1e-6,
    norm_num_groups=32, time_embedding_type="positional",
)
_COMMON_SCHEDULER = dict(beta_start=1e-4, beta_end=0.02, beta_schedule="linear", clip_sample=True, num_train_timesteps=1000,
                         trained_betas=None)
CONFIGS = {
    "cifar10-32": (
        dict(_COMMON_UNET, sample_size=32, block_out_channels=[128, 256, 256, 256],
             down_block_types=["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"],
             up_block_types=["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"]),
        dict(_COMMON_SCHEDULER, variance_type="fixed_large"),
    ),
    "celebahq-256": (
        dict(_COMMON_UNET, sample_size=256, block_out_channels=[128, 128, 256, 256, 512, 512],
             down_block_types=["DownBlock2D"] * 4 + ["AttnDownBlock2D", "DownBlock2D"],
             up_block_types=["UpBlock2D", "AttnUpBlock2D"] + ["UpBlock2D"] * 4),
        dict(_COMMON_SCHEDULER, variance_type="fixed_small"),
    ),
}
FORWARD_TOL32 = 1e-4  # absolute, on outputs of order 1
# The float64 forward pass computes its 3x3 convolutions with jaxddpm's Winograd form (matrix
# products) at every size: XLA:CPU's own float64 convolutions are many times slower.
FLOAT64_CONVS = ConvPolicy(impl="cpu", winograd_max_pixels=2**30, winograd_min_channels=1)
TOL64 = 1e-10  # relative
STEP_TIMESTEPS = (999, 500, 1, 0)


@dataclasses.dataclass
class Setup:
    name: str
    unet: torch.nn.Module  # diffusers UNet2DModel, float32
    scheduler_config: dict
    pipe: object  # jaxddpm.Pipeline converted from the saved diffusers folder
    x: np.ndarray  # (B, H, W, C) inputs
    t: np.ndarray  # (B,) timesteps
    seed: int


def random_unet(unet_config: dict, seed: int = 0):
    """A UNet2DModel with diffusers' random initialisation, its norm and bias parameters
    perturbed so that they matter."""
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    unet = UNet2DModel(**unet_config).eval()
    with torch.no_grad():
        for key, p in unet.named_parameters():
            if "norm" in key or key.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    return unet


def save_diffusers(unet, scheduler_config: dict, directory: str) -> None:
    """``unet.save_pretrained(directory)`` and a scheduler_config.json beside it."""
    unet.save_pretrained(directory)
    with open(f"{directory}/{diffusers_format.SCHEDULER_CONFIG}", "w") as f:
        json.dump(dict(scheduler_config, _class_name="DDPMScheduler"), f)


def build(name: str, batch: int = 2, seed: int = 0, *, configs: tuple[dict, dict] | None = None, unet=None,
          pipe=None) -> Setup:
    """The setup of configuration ``name`` (or the given ``configs``: UNet2DModel and
    scheduler config): a `random_unet` (or ``unet``), saved and converted to a jaxddpm
    Pipeline (or ``pipe``, converted from it already), and inputs."""
    unet_config, scheduler_config = configs or CONFIGS[name]
    unet = unet if unet is not None else random_unet(unet_config, seed)
    if pipe is None:
        with tempfile.TemporaryDirectory() as tmp:
            save_diffusers(unet, scheduler_config, tmp)
            pipe, _ = diffusers_format.pipeline_from_diffusers(tmp)
    rng = np.random.default_rng(seed)
    size, channels = unet_config["sample_size"], unet_config["in_channels"]
    x = rng.standard_normal((batch, size, size, channels)).astype(np.float32)
    t = np.linspace(999, 0, batch).round().astype(np.int64) if batch > 1 else np.array([500])
    return Setup(name, unet, scheduler_config, pipe, x, t, seed)


def _torch_forward(unet, x: np.ndarray, t: np.ndarray, dtype) -> np.ndarray:
    with torch.no_grad():
        return nhwc(unet(nchw(x).to(dtype), torch.from_numpy(t)).sample)


def check_forward(s: Setup) -> list[CheckResult]:
    """The noise prediction on the same inputs: float32 as both libraries run it."""
    ours = jax.jit(lambda v, x, t: s.pipe.model.apply(v, x, t, False))(s.pipe.variables, jnp.asarray(s.x), jnp.asarray(s.t))
    return [compare("forward float32", np.asarray(ours), _torch_forward(s.unet, s.x, s.t, torch.float32), FORWARD_TOL32)]


class _Float64Timesteps(torch.nn.Module):
    """diffusers' sinusoidal timestep embedding computed in float64 (diffusers computes it in
    float32 whatever the model's dtype); the same formula."""

    def __init__(self, original):
        super().__init__()
        self.dim, self.flip, self.shift = original.num_channels, original.flip_sin_to_cos, original.downscale_freq_shift

    def forward(self, t):
        half = self.dim // 2
        exponent = -math.log(10000.0) * torch.arange(half, dtype=torch.float64) / (half - self.shift)
        angles = t[:, None].double() * torch.exp(exponent)[None, :]
        parts = [torch.cos(angles), torch.sin(angles)] if self.flip else [torch.sin(angles), torch.cos(angles)]
        return torch.cat(parts, dim=-1)


def check_forward_float64(s: Setup) -> list[CheckResult]:
    """The network in float64 in both frameworks (diffusers' float32 time embedding replaced by
    the same formula in float64; `check_embedding` compares the float32 embeddings)."""
    reference = copy.deepcopy(s.unet).double()
    reference.time_proj = _Float64Timesteps(s.unet.time_proj)
    with precision(True):
        model = s.pipe.model.clone(dtype=jnp.float64, param_dtype=jnp.float64, conv_policy=FLOAT64_CONVS)
        variables = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), s.pipe.variables)
        ours = np.asarray(jax.jit(lambda v, x, t: model.apply(v, x, t, False))(variables, jnp.asarray(s.x, jnp.float64), jnp.asarray(s.t)))
        theirs = _torch_forward(reference, s.x.astype(np.float64), s.t, torch.float64)
    return [compare("forward float64", ours, theirs, TOL64, relative=True)]


def check_embedding(s: Setup) -> list[CheckResult]:
    """The float32 sinusoidal embedding of every timestep. Both compute exp and sin/cos in
    float32, so angles up to 999 rad may differ by a few ulps of 999 (6e-5 each)."""
    from diffusers.models.embeddings import get_timestep_embedding

    m = s.pipe.model
    t = np.arange(s.pipe.config.diffusion.num_timesteps)
    ours = sinusoidal_embedding(jnp.asarray(t), m.base_channels, flip_sin_to_cos=m.time_flip_sin_to_cos, freq_shift=m.time_freq_shift)
    theirs = get_timestep_embedding(torch.from_numpy(t), m.base_channels, flip_sin_to_cos=m.time_flip_sin_to_cos,
                                    downscale_freq_shift=m.time_freq_shift)
    return [compare("time embedding float32", np.asarray(ours), theirs, 3 * 2**9 * EPS32)]  # 3 ulps of 999


def _scheduler(s: Setup, **overrides):
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler(**dict(s.scheduler_config, **overrides))
    scheduler.set_timesteps(scheduler.config.num_train_timesteps)
    return scheduler


def check_tables(s: Setup) -> list[CheckResult]:
    """betas and alphas_cumprod. jaxddpm computes its tables in float64 and rounds once;
    diffusers multiplies T float32 factors, so its product may be off by up to T ulps."""
    scheduler, schedule = _scheduler(s), build_schedule(s.pipe.config)
    tol = scheduler.config.num_train_timesteps * EPS32
    return [
        compare("scheduler betas", np.asarray(schedule.betas), scheduler.betas, 2 * EPS32, relative=True),
        compare("scheduler alphas_cumprod", np.asarray(schedule.alphas_cumprod), scheduler.alphas_cumprod, tol, relative=True),
    ]


class _NoiseFeed:
    """Stands in for diffusers' ``randn_tensor`` in `DDPMScheduler.step`, handing out given noise."""

    def __init__(self, noises):
        self.noises = list(noises)

    def __call__(self, shape, generator=None, device=None, dtype=None, **_):
        noise = self.noises.pop(0)
        assert tuple(noise.shape) == tuple(shape), (noise.shape, shape)
        return noise.to(dtype or torch.float32)


def _with_noise(noises):
    from diffusers.schedulers import scheduling_ddpm

    class Patch:
        def __enter__(self):
            self.saved = scheduling_ddpm.randn_tensor
            scheduling_ddpm.randn_tensor = _NoiseFeed(noises)

        def __exit__(self, *exc):
            scheduling_ddpm.randn_tensor = self.saved

    return Patch()


def check_steps(s: Setup) -> list[CheckResult]:
    """One reverse step from given x_t, predicted noise and step noise, for both variances, at
    timesteps from T - 1 to 0. Held to 1e-4 / sqrt(abar_t) plus the error the scheduler's
    float32 table brings: its abar_t (a product of t + 1 float32 factors) differs from the
    float64 value by d_t, which the coefficients' 1 - abar_t magnifies to d_t / (1 - abar_t)
    relative at small t (times the largest |x_t|, for two coefficients); at large t,
    x0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar) magnifies rounding by 1 / sqrt(abar)."""
    rng = np.random.default_rng(s.seed + 1)
    schedule, clip = build_schedule(s.pipe.config), bool(s.pipe.config.sample.clip_x0)
    d = s.pipe.config.diffusion
    abar64 = tables_from_betas(BETA_SCHEDULES[d.schedule](d.num_timesteps, d.beta_start, d.beta_end))["alphas_cumprod"]
    shape = s.x.shape
    results = []
    for variance in ("fixed_small", "fixed_large"):
        scheduler = _scheduler(s, variance_type=variance)
        for t in STEP_TIMESTEPS:
            x, eps, noise = (rng.standard_normal(shape).astype(np.float32) for _ in range(3))
            with _with_noise([nchw(noise)]):
                theirs = nhwc(scheduler.step(nchw(eps), t, nchw(x)).prev_sample)
            tt = jnp.full((shape[0],), t, jnp.int32)
            ours = diffusion.p_sample_step(schedule, jnp.asarray(eps), jnp.asarray(x), tt, jnp.asarray(noise), clip_x0=clip, variance=variance)
            abar = float(scheduler.alphas_cumprod[t])
            table_error = abs(abar - abar64[t]) / (1.0 - abar64[t]) * 2 * float(np.abs(x).max())
            tol = 1e-4 / math.sqrt(abar) + table_error
            results.append(compare(f"step {variance} t={t}", np.asarray(ours), theirs, tol))
    return results


def check_chain(s: Setup, steps: int = 10) -> list[CheckResult]:
    """``steps`` reverse steps of the network and the scheduler from t = T - 1, with the same
    starting noise and step noise, against diffusers' sampling loop (`DDPMPipeline`'s).
    Held to the float32 forward tolerance times the number of steps."""
    rng = np.random.default_rng(s.seed + 2)
    config = s.pipe.config
    schedule, clip, variance = build_schedule(config), bool(config.sample.clip_x0), config.sample.variance
    x_T = rng.standard_normal(s.x.shape).astype(np.float32)
    noises = [rng.standard_normal(s.x.shape).astype(np.float32) for _ in range(steps)]
    timesteps = list(range(config.diffusion.num_timesteps - 1, config.diffusion.num_timesteps - 1 - steps, -1))

    scheduler = _scheduler(s)
    x = nchw(x_T)
    with _with_noise([nchw(n) for n in noises]), torch.no_grad():
        for t in timesteps:
            x = scheduler.step(s.unet(x, t).sample, t, x).prev_sample
    theirs = nhwc(x)

    model = s.pipe.model

    @jax.jit
    def step(variables, x, t, noise):
        tt = jnp.full((x.shape[0],), t, jnp.int32)
        eps = model.apply(variables, x, tt, False)
        return diffusion.p_sample_step(schedule, eps, x, tt, noise, clip_x0=clip, variance=variance)

    ours = jnp.asarray(x_T)
    for t, noise in zip(timesteps, noises):
        ours = step(s.pipe.variables, ours, t, jnp.asarray(noise))
    return [compare(f"{steps}-step chain ({variance}{', clip' if clip else ''})", np.asarray(ours), theirs, steps * FORWARD_TOL32)]


CHECKS = {"forward": check_forward, "forward_float64": check_forward_float64, "embedding": check_embedding,
          "tables": check_tables, "steps": check_steps, "chain": check_chain}


def run_checks(name: str, batch: int = 2, seed: int = 0, only=None, chain_steps: int = 10) -> list[tuple[str, CheckResult]]:
    s = build(name, batch, seed)
    results = []
    for check, fn in CHECKS.items():
        if only and check not in only:
            continue
        out = fn(s, chain_steps) if check == "chain" else fn(s)
        results.extend((check, r) for r in out)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m parity.diffusers_checks",
                            description="Check jaxddpm against diffusers on the original DDPM models' configurations.")
    parser.add_argument("--config", choices=tuple(CONFIGS), default="cifar10-32")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--chain-steps", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", nargs="+", choices=tuple(CHECKS))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.batch < 1 or args.chain_steps < 1:
        print("error: --batch and --chain-steps must be at least 1", file=sys.stderr)
        return 2
    from parity.report import format_table

    results = run_checks(args.config, args.batch, args.seed, args.only, args.chain_steps)
    if args.json:
        print(json.dumps([dict(check=c, **r._asdict()) for c, r in results], indent=1))
    else:
        size = CONFIGS[args.config][0]["sample_size"]
        print(f"diffusers parity: {args.config} (random weights), {size}x{size}, batch {args.batch}, seed {args.seed}")
        print(format_table(results))
    return 0 if all(r.passed for _, r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
