"""PNG outputs: sample grids and the loss curve."""

import json

import numpy as np
from PIL import Image

from jaxddpm import images


def test_loss_curve_is_drawn_without_matplotlib(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("".join(json.dumps(dict(step=s, loss=l)) + "\n" for s, l in [(250, 0.17), (500, 0.07), (2000, 0.05)]))
    out = tmp_path / "sub" / "loss.png"
    images.save_loss_curve(str(metrics), str(out))
    pixels = np.asarray(Image.open(out).convert("RGB"))
    assert pixels.shape == (360, 640, 3)
    line = np.all(pixels == (31, 119, 180), axis=-1)
    columns = np.flatnonzero(line.any(axis=0))
    # the curve spans steps 250..2000 of an axis from 0 to 2000 (plot box x from 70 to 620)
    assert abs(columns.min() - (70 + 550 * 250 / 2000)) <= 3 and abs(columns.max() - 620) <= 3
    # log scale padded by 0.05 decade: 0.17 at 20 + 290 * 0.05 / 0.63 = 43, 0.05 at 310 - 23 = 287
    assert abs(np.flatnonzero(line[:, columns.min()]).mean() - 43) <= 3
    assert abs(np.flatnonzero(line[:, columns.max()]).mean() - 287) <= 3


def test_grid_takes_uint8_or_floats(tmp_path):
    floats = np.linspace(-1, 1, 4 * 8 * 8).reshape(4, 8, 8, 1)
    images.save_grid(str(tmp_path / "a.png"), floats)
    images.save_grid(str(tmp_path / "b.png"), images.to_uint8(floats))
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "a.png")), np.asarray(Image.open(tmp_path / "b.png")))
