"""The standard FID feature network: pytorch-fid's Inception-v3 (2048-d pool features),
with its published weights, as a function of uint8 NHWC images.

PyTorch and pytorch-fid are the ``fid`` extra; the weights cannot be downloaded offline,
so they are read from a given path or from PyTorch's hub cache.
"""

from __future__ import annotations

import os
import tempfile

import numpy as np

WEIGHTS_NAME = "pt_inception-2015-12-05-6726825d.pth"
HOW_TO_GET = (
    f"download {WEIGHTS_NAME} from https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/{WEIGHTS_NAME} "
    "on a machine with network and set JAXDDPM_INCEPTION_WEIGHTS=/path/to/it (or put it in ~/.cache/torch/hub/checkpoints/)"
)


class WeightsNotFound(FileNotFoundError):
    """The Inception weights file is not where it was looked for (the message says how to get it)."""


def find_weights(path: str = "") -> str:
    import torch

    candidates = [path] if path else [os.path.join(torch.hub.get_dir(), "checkpoints", WEIGHTS_NAME)]
    for candidate in candidates:
        if os.path.isfile(candidate):
            return candidate
    raise WeightsNotFound(f"the FID Inception weights were not found at {candidates[0]}; {HOW_TO_GET}")


def load_fid_inception(path: str = ""):
    """A feature function uint8 (N, H, W, C) -> float64 (N, 2048) on pytorch-fid's network."""
    import torch
    from pytorch_fid.inception import InceptionV3

    weights = find_weights(path)
    previous = torch.hub.get_dir()
    with tempfile.TemporaryDirectory() as hub:
        # pytorch-fid loads its weights through the hub cache; point the cache at the file.
        os.makedirs(os.path.join(hub, "checkpoints"))
        os.symlink(os.path.abspath(weights), os.path.join(hub, "checkpoints", WEIGHTS_NAME))
        torch.hub.set_dir(hub)
        try:
            model = InceptionV3([InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval()
        finally:
            torch.hub.set_dir(previous)

    def features(images_u8: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.asarray(images_u8, np.float32) / 255.0).permute(0, 3, 1, 2)
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        with torch.no_grad():
            return model(x)[0].flatten(1).double().numpy()

    return features
