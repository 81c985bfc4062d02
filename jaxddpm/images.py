"""PNG output: sample grids, the forward-diffusion strip and the loss curve."""

from __future__ import annotations

import json
import math
import os

import numpy as np
from PIL import Image

from jaxddpm.data import to_uint8


def grid(images_uint8: np.ndarray, columns: int | None = None, pad: int = 2, scale: int = 1) -> np.ndarray:
    """Tile N HxWxC images into one image, ``columns`` wide (square by default)."""
    n, h, w, c = images_uint8.shape
    columns = columns or math.ceil(math.sqrt(n))
    rows = math.ceil(n / columns)
    out = np.full((rows * (h + pad) + pad, columns * (w + pad) + pad, c), 255, np.uint8)
    for i, image in enumerate(images_uint8):
        r, col = divmod(i, columns)
        out[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + col * (w + pad) : pad + col * (w + pad) + w] = image
    if scale > 1:
        out = out.repeat(scale, axis=0).repeat(scale, axis=1)
    return out


def save_png(path: str, image_uint8: np.ndarray) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    Image.fromarray(image_uint8[..., 0] if image_uint8.shape[-1] == 1 else image_uint8).save(path)


def save_grid(path: str, images: np.ndarray, columns: int | None = None) -> None:
    """Save NHWC images (uint8, or floats in [-1, 1]) as a PNG grid, upscaled so that small
    images stay visible."""
    images = np.asarray(images)
    scale = max(1, 128 // images.shape[1])
    save_png(path, grid(images if images.dtype == np.uint8 else to_uint8(images), columns, scale=scale))


def save_loss_curve(metrics_path: str, out_path: str) -> None:
    """Plot the loss column of ``metrics.jsonl`` against the step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps, losses = [], []
    with open(metrics_path) as f:
        for line in f:
            row = json.loads(line)
            steps.append(row["step"])
            losses.append(row["loss"])
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot(steps, losses)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (MSE of predicted noise)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_path)
    plt.close(fig)
