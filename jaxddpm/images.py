"""PNG output: sample grids, the forward-diffusion strip and the loss curve."""

from __future__ import annotations

import json
import math
import os

import numpy as np
from PIL import Image, ImageDraw, ImageFont

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


def _nice_step(span: float, target: int = 6) -> float:
    """A 1, 2 or 5 times a power of ten that divides ``span`` into about ``target`` parts."""
    raw = span / max(target, 1)
    power = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1
    return next(m * power for m in (1, 2, 5, 10) if m * power >= raw)


def save_loss_curve(metrics_path: str, out_path: str, size: tuple[int, int] = (640, 360)) -> None:
    """Plot the loss column of ``metrics.jsonl`` against the step, the loss on a log scale
    (drawn with Pillow, so that plotting needs no further library)."""
    steps, losses = [], []
    with open(metrics_path) as f:
        for line in f:
            row = json.loads(line)
            if row["loss"] > 0:
                steps.append(row["step"])
                losses.append(row["loss"])
    width, height = size
    left, right, top, bottom = 70, 20, 20, 50
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    box = (left, top, width - right, height - bottom)
    draw.rectangle(box, outline="black")
    draw.text((left, height - 18), "step", fill="black", font=font)
    draw.text((4, 4), "training loss (MSE of predicted noise), log scale", fill="black", font=font)
    if steps:
        x0, x1 = 0, max(max(steps), 1)
        lo, hi = math.log10(min(losses)), math.log10(max(losses))
        lo, hi = (lo - 0.05, hi + 0.05) if hi - lo > 1e-9 else (lo - 0.5, hi + 0.5)

        def xy(step: float, loss: float) -> tuple[float, float]:
            fx = (step - x0) / (x1 - x0)
            fy = (math.log10(loss) - lo) / (hi - lo)
            return box[0] + fx * (box[2] - box[0]), box[3] - fy * (box[3] - box[1])

        tick = _nice_step(x1 - x0)
        for k in range(int(x1 // tick) + 1):
            x, _ = xy(k * tick, 10**lo)
            draw.line([(x, box[3]), (x, box[3] + 4)], fill="black")
            draw.text((x - 10, box[3] + 6), f"{k * tick:g}", fill="black", font=font)
        for exponent in range(math.floor(lo), math.ceil(hi) + 1):
            for mantissa in (1, 2, 5):
                value = mantissa * 10.0**exponent
                if lo <= math.log10(value) <= hi:
                    _, y = xy(x0, value)
                    draw.line([(box[0] - 4, y), (box[2], y)], fill=(225, 225, 225) if mantissa != 1 else (190, 190, 190))
                    draw.text((4, y - 6), f"{value:g}", fill="black", font=font)
        draw.rectangle(box, outline="black")
        draw.line([xy(s, v) for s, v in zip(steps, losses)] if len(steps) > 1 else [xy(steps[0], losses[0])] * 2,
                  fill=(31, 119, 180), width=2)
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    image.save(out_path)
