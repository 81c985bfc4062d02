"""Datasets, decoded once into a uint8 array, and batches gathered on the device.

Every source returns an `ImageDataset` of uint8 NHWC images and integer labels. Training
puts the whole array on the device once; `get_batch` then shuffles, gathers, flips and
scales inside the compiled step, so no per-step Python image work is left.
"""

from __future__ import annotations

import dataclasses
import hashlib
import gzip
import importlib.resources
import os
import socket
from typing import Iterable

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image, UnidentifiedImageError

from jaxddpm.options import DATA_SOURCES
from jaxddpm import files
from jaxddpm.files import atomic_write
from jaxddpm.runtime import Progress

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


class DataError(ValueError):
    """Data that cannot be used; the message says what is wrong and what to do."""


@dataclasses.dataclass(frozen=True)
class ImageDataset:
    images: np.ndarray  # uint8, (N, H, W, C)
    labels: np.ndarray  # int32, (N,); -1 where there are none
    num_classes: int
    skipped: int = 0  # files that could not be decoded (folder source)

    def __len__(self) -> int:
        return self.images.shape[0]


def to_pil(image: np.ndarray) -> Image.Image:
    return Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)


def resize(image: Image.Image, size: int, channels: int) -> np.ndarray:
    """To ``channels`` (1 or 3) and ``size`` x ``size`` (no crop), as uint8 HWC."""
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    image = image.convert("L" if channels == 1 else "RGB")
    if image.size != (size, size):
        image = image.resize((size, size), Image.BILINEAR)
    array = np.asarray(image, dtype=np.uint8)
    return array[..., None] if channels == 1 else array


def _bundled_digits() -> tuple[np.ndarray, np.ndarray]:
    """(images (1797, 8, 8) with values 0..16, labels) of the UCI handwritten digits that ship
    with jaxddpm (jaxddpm/datasets/README.md; the same file and values as scikit-learn's
    ``load_digits``): each CSV row holds 64 pixel values, then the label."""
    with importlib.resources.files("jaxddpm.datasets").joinpath("digits.csv.gz").open("rb") as f:
        rows = np.loadtxt(gzip.open(f), delimiter=",")
    return rows[:, :-1].reshape(-1, 8, 8), rows[:, -1].astype(np.int32)


def load_digits(image_size: int, channels: int) -> ImageDataset:
    """scikit-learn's bundled 8x8 handwritten digits (values 0..16), at ``image_size`` (8: as stored;
    larger: upscaled with `resize`)."""
    digits, labels = _bundled_digits()
    small = np.round(digits * (255.0 / 16.0)).astype(np.uint8)
    images = np.stack([resize(Image.fromarray(im), image_size, channels) for im in small])
    return ImageDataset(images, labels, 10)


def load_folder(path: str, image_size: int, channels: int) -> ImageDataset:
    """Every JPEG/PNG below ``path``; files that cannot be decoded are skipped and counted."""
    if not os.path.isdir(path):
        raise DataError(f"data.path {path} is not a readable directory")
    paths = sorted(
        os.path.join(root, name)
        for root, _, names in os.walk(path)
        for name in names
        if name.lower().endswith(IMAGE_SUFFIXES)
    )
    images, skipped = [], 0
    bar = Progress(len(paths), unit="image")  # a bar on a terminal, silent otherwise
    for file in paths:
        try:
            with Image.open(file) as im:
                im.load()
                images.append(resize(im, image_size, channels))
        except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError):
            skipped += 1
        bar.update(1)
    bar.close()
    if not images:
        raise DataError(
            f"data.path {path} holds no readable images ({len(paths)} JPEG/PNG files found, {skipped} unreadable); "
            f"allowed: {', '.join(IMAGE_SUFFIXES)}"
        )
    return ImageDataset(np.stack(images), np.full(len(images), -1, np.int32), 0, skipped)


# Where TFDS downloads a dataset from; without a connection there, preparing it is not tried
# (TFDS would retry for minutes). Others: TFDS's own mirror.
DOWNLOAD_HOSTS = {"oxford_flowers102": "www.robots.ox.ac.uk"}
DEFAULT_DOWNLOAD_HOST = "storage.googleapis.com"
NETWORK_TIMEOUT_S = 10.0


def _reachable(host: str, timeout: float = NETWORK_TIMEOUT_S) -> bool:
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _tfds_examples(name: str, split: str, data_dir: str, download: bool) -> Iterable[dict]:
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise DataError(f"data.source=tfds needs TensorFlow Datasets ({e}); install it with: pip install 'jaxddpm[flowers]'") from None
    where = data_dir or "the default TFDS directory (~/tensorflow_datasets)"
    how = (f"On a machine with network, run: python -c \"import tensorflow_datasets as tfds; "
           f"tfds.builder('{name}', data_dir='DIR', file_format='array_record').download_and_prepare()\", copy DIR here "
           f"and pass --config.data.data_dir=DIR")
    try:
        try:
            return tfds.data_source(name, split=split, data_dir=data_dir or None, download=False)
        except Exception:  # noqa: BLE001 - not prepared there (TFDS raises several types)
            if not download:
                raise
        host = DOWNLOAD_HOSTS.get(name, DEFAULT_DOWNLOAD_HOST)
        if not _reachable(host):
            raise DataError(f"TFDS dataset {name!r} is not prepared in {where} and {host} cannot be reached to download it. {how}")
        return tfds.data_source(name, split=split, data_dir=data_dir or None, download=True)
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - TFDS raises many types for missing/offline data
        reason = f"{type(e).__name__}: {e}".splitlines()[0] if isinstance(e, ImportError) else type(e).__name__
        raise DataError(f"TFDS dataset {name!r} (split {split!r}) is not available in {where} and could not be prepared "
                        f"({reason}). {how}") from None


def load_tfds(
    name: str, splits: str, data_dir: str, image_size: int, channels: int, download: bool, cache_dir: str
) -> ImageDataset:
    """A TFDS image dataset through ``tfds.data_source``, decoded, resized and cached."""
    key = f"{name}|{splits}|{os.path.abspath(data_dir) if data_dir else ''}|{image_size}|{channels}"
    cache_dir = files.cache_dir(cache_dir)
    cache = os.path.join(cache_dir, f"{name}-{image_size}px-{channels}ch-{hashlib.sha1(key.encode()).hexdigest()[:12]}.npz")
    if os.path.exists(cache):
        with np.load(cache) as f:
            return ImageDataset(f["images"], f["labels"], int(f["num_classes"]))
    images, labels = [], []
    sources = [_tfds_examples(name, split, data_dir, download) for split in splits.split("+")]
    bar = Progress(sum(len(source) for source in sources), unit="image")  # decoded once, then cached
    for source in sources:
        for example in source:
            images.append(resize(to_pil(np.asarray(example["image"])), image_size, channels))
            labels.append(int(example.get("label", -1)))
            bar.update(1)
    bar.close()
    if not images:
        raise DataError(f"TFDS dataset {name!r} split {splits!r} is empty")
    labels_array = np.asarray(labels, np.int32)
    dataset = ImageDataset(np.stack(images), labels_array, int(labels_array.max()) + 1)
    _save_atomically(cache, dataset)
    return dataset


def _save_atomically(path: str, dataset: ImageDataset) -> None:
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with atomic_write(path, "wb") as f:
            np.savez(f, images=dataset.images, labels=dataset.labels, num_classes=dataset.num_classes)
    except OSError:
        pass  # the cache is an optimisation; an unwritable cache directory is not an error


HOLDOUT_SEED = 0  # the held-out images are a fixed choice, independent of train.seed


def split_holdout(dataset: ImageDataset, holdout: int) -> tuple[ImageDataset, ImageDataset]:
    """(training, held-out) datasets: ``holdout`` images chosen by a fixed permutation.

    Training never sees the held-out images; evaluation (bits/dim, the quickstart's
    classifier score) uses them.
    """
    if not 0 <= holdout < len(dataset):
        raise DataError(f"data.holdout={holdout} must lie in [0, {len(dataset)}) for this dataset of {len(dataset)} images")
    order = np.random.default_rng(HOLDOUT_SEED).permutation(len(dataset))
    held, kept = np.sort(order[:holdout]), np.sort(order[holdout:])

    def subset(idx):
        return ImageDataset(dataset.images[idx], dataset.labels[idx], dataset.num_classes, dataset.skipped)

    return subset(kept), subset(held)


def load_splits(data_config) -> tuple[ImageDataset, ImageDataset]:
    """(training, held-out) parts of the dataset a config's ``data`` section describes."""
    return split_holdout(load_dataset(data_config), data_config.holdout)


def load_dataset(data_config) -> ImageDataset:
    """The dataset a config's ``data`` section describes (all of it; see `load_splits`)."""
    d = data_config
    if d.source == "digits":
        return load_digits(d.image_size, d.channels)
    if d.source == "folder":
        return load_folder(d.path, d.image_size, d.channels)
    if d.source == "tfds":
        return load_tfds(d.name, d.splits, d.data_dir, d.image_size, d.channels, d.download, d.cache_dir)
    raise DataError(f"data.source={d.source!r} is unknown; allowed: {', '.join(DATA_SOURCES)}")


def to_model_range(images_uint8: jax.Array, dtype=jnp.float32) -> jax.Array:
    """uint8 [0, 255] -> [-1, 1]."""
    return images_uint8.astype(dtype) * (2.0 / 255.0) - 1.0


def to_uint8(images: np.ndarray) -> np.ndarray:
    """[-1, 1] -> uint8 [0, 255], clipping."""
    return np.clip(np.round((np.asarray(images, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def get_batch(
    images: jax.Array,
    step: jax.Array,
    key: jax.Array,
    batch_size: int,
    random_flip: bool,
    labels: jax.Array | None = None,
) -> jax.Array | tuple[jax.Array, jax.Array]:
    """Batch number ``step`` of an epoch-wise shuffled pass over ``images``, in [-1, 1]
    (with ``labels``: the batch and its labels).

    Each epoch is a permutation drawn from ``fold_in(key, epoch)`` and the last partial
    batch is dropped, so the batch depends only on (key, step): resuming needs no state.
    """
    n = images.shape[0]
    steps_per_epoch = n // batch_size
    epoch, position = step // steps_per_epoch, step % steps_per_epoch
    perm_key, flip_key = jax.random.split(jax.random.fold_in(key, epoch))
    perm = jax.random.permutation(perm_key, n)
    idx = jax.lax.dynamic_slice_in_dim(perm, position * batch_size, batch_size)
    batch = to_model_range(images[idx])
    if random_flip:
        flip = jax.random.bernoulli(jax.random.fold_in(flip_key, position), 0.5, (batch_size, 1, 1, 1))
        batch = jnp.where(flip, batch[:, :, ::-1, :], batch)
    if labels is None:
        return batch
    return batch, labels[idx]
