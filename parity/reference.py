"""A PyTorch reimplementation of the article's model and diffusion functions.

This is the reference that jaxddpm is checked against, and the only module of the project
that imports torch. Module attribute names follow the article, so ``state_dict`` keys are
the article's (``time_mlp.1.weight``, ``down_blocks.0.bn1.running_var``, ...). Functions
that the article writes with module-level tables take a ``tables`` dict here, and those
that draw noise accept it as an argument, so both frameworks can be fed the same numbers.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

TABLE_NAMES = (
    "betas",
    "alphas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "sqrt_recip_alphas",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "posterior_variance",
)


def linear_beta_schedule(timesteps: int, start: float = 1e-4, end: float = 2e-2, dtype=None) -> torch.Tensor:
    return torch.linspace(start, end, timesteps, dtype=dtype)


def article_tables(timesteps: int = 300, start: float = 1e-4, end: float = 2e-2, dtype=None) -> dict[str, torch.Tensor]:
    """The article's eight precomputed tables, computed the article's way in ``dtype``."""
    betas = linear_beta_schedule(timesteps, start, end, dtype=dtype)
    alphas = 1.0 - betas
    alphas_cumprod = torch.cumprod(alphas, dim=0)
    alphas_cumprod_prev = F.pad(alphas_cumprod[:-1], (1, 0), value=1.0)
    return dict(
        betas=betas,
        alphas=alphas,
        alphas_cumprod=alphas_cumprod,
        alphas_cumprod_prev=alphas_cumprod_prev,
        sqrt_recip_alphas=torch.sqrt(1.0 / alphas),
        sqrt_alphas_cumprod=torch.sqrt(alphas_cumprod),
        sqrt_one_minus_alphas_cumprod=torch.sqrt(1.0 - alphas_cumprod),
        posterior_variance=betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod),
    )


def get_index_from_list(vals: torch.Tensor, t: torch.Tensor, x_shape) -> torch.Tensor:
    batch_size = t.shape[0]
    out = vals.gather(-1, t.cpu())
    return out.reshape(batch_size, *((1,) * (len(x_shape) - 1))).to(t.device)


def forward_diffusion_sample(x_0, t, tables, noise=None):
    """Return (x_t, noise); draws the noise like the article when none is given."""
    if noise is None:
        noise = torch.randn_like(x_0)
    a = get_index_from_list(tables["sqrt_alphas_cumprod"], t, x_0.shape)
    b = get_index_from_list(tables["sqrt_one_minus_alphas_cumprod"], t, x_0.shape)
    return a * x_0 + b * noise, noise


def get_loss(model, x_0, t, tables, noise=None):
    x_noisy, noise = forward_diffusion_sample(x_0, t, tables, noise)
    noise_pred = model(x_noisy, t)
    return F.mse_loss(noise, noise_pred)


@torch.no_grad()
def sample_timestep(model, x, t, tables, noise=None):
    """The standard DDPM ancestral step; no noise is added where t == 0."""
    betas_t = get_index_from_list(tables["betas"], t, x.shape)
    sqrt_one_minus_t = get_index_from_list(tables["sqrt_one_minus_alphas_cumprod"], t, x.shape)
    sqrt_recip_alphas_t = get_index_from_list(tables["sqrt_recip_alphas"], t, x.shape)
    model_mean = sqrt_recip_alphas_t * (x - betas_t * model(x, t) / sqrt_one_minus_t)
    posterior_variance_t = get_index_from_list(tables["posterior_variance"], t, x.shape)
    if noise is None:
        noise = torch.randn_like(x)
    last = (t == 0).reshape(-1, *((1,) * (x.ndim - 1)))
    return torch.where(last, model_mean, model_mean + torch.sqrt(posterior_variance_t) * noise)


@torch.no_grad()
def sample_chain(model, x_T, tables, noises=None):
    """Run the reverse chain from x_T with a Python loop; ``noises[i]`` is used at t = i."""
    x = x_T
    for i in range(tables["betas"].shape[0] - 1, -1, -1):
        t = torch.full((x.shape[0],), i, dtype=torch.long, device=x.device)
        x = sample_timestep(model, x, t, tables, None if noises is None else noises[i])
    return x


class SinusoidalPositionEmbeddings(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.dim = dim

    def forward(self, t):
        half_dim = self.dim // 2
        scale = math.log(10000) / (half_dim - 1)
        freqs = torch.exp(torch.arange(half_dim, device=t.device) * -scale)
        angles = t[:, None] * freqs[None, :]
        return torch.cat([angles.sin(), angles.cos()], dim=-1)


class ConvBlock(nn.Module):
    def __init__(self, in_channels, out_channels, time_emb_dim, upsample=False):
        super().__init__()
        self.time_mlp = nn.Linear(time_emb_dim, out_channels)
        self.upsample = upsample
        self.conv1 = nn.Conv2d(in_channels * 2 if upsample else in_channels, out_channels, kernel_size=3, padding=1)
        if upsample:
            self.transform = nn.ConvTranspose2d(out_channels, out_channels, kernel_size=4, stride=2, padding=1)
        else:
            self.transform = nn.Conv2d(out_channels, out_channels, kernel_size=4, stride=2, padding=1)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU()

    def forward(self, x, t):
        h = self.bn1(self.relu(self.conv1(x)))
        time_emb = self.relu(self.time_mlp(t))[(...,) + (None,) * 2]
        h = h + time_emb
        h = self.bn2(self.relu(self.conv2(h)))
        return self.transform(h)


class SimpleUNet(nn.Module):
    """The article's U-Net; the defaults are the article's sizes (62,438,883 parameters)."""

    def __init__(
        self,
        image_channels: int = 3,
        channels: Sequence[int] = (64, 128, 256, 512, 1024),
        out_channels: int = 3,
        time_emb_dim: int = 32,
    ):
        super().__init__()
        down_channels = tuple(channels)
        up_channels = tuple(reversed(down_channels))
        self.time_mlp = nn.Sequential(
            SinusoidalPositionEmbeddings(time_emb_dim), nn.Linear(time_emb_dim, time_emb_dim), nn.ReLU()
        )
        self.init_conv = nn.Conv2d(image_channels, down_channels[0], kernel_size=3, padding=1)
        self.down_blocks = nn.ModuleList(
            [ConvBlock(down_channels[i], down_channels[i + 1], time_emb_dim) for i in range(len(down_channels) - 1)]
        )
        self.up_blocks = nn.ModuleList(
            [
                ConvBlock(up_channels[i], up_channels[i + 1], time_emb_dim, upsample=True)
                for i in range(len(up_channels) - 1)
            ]
        )
        self.final_conv = nn.Conv2d(up_channels[-1], out_channels, kernel_size=1)

    def forward(self, x, t):
        t_emb = self.time_mlp(t)
        x = self.init_conv(x)
        skip_connections = []
        for block in self.down_blocks:
            x = block(x, t_emb)
            skip_connections.append(x)
        for block in self.up_blocks:
            x = torch.cat([x, skip_connections.pop()], dim=1)
            x = block(x, t_emb)
        return self.final_conv(x)
