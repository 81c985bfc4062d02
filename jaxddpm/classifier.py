"""A small CNN classifier that scores samples of a labelled dataset without any download.

It is trained on the diffusion model's training images (as Inception, the usual judge, is
trained on ImageNet) and judges samples and the held-out images, which neither model has
seen; its penultimate layer gives features for a Fréchet distance. Training is
deterministic and cached.
"""

from __future__ import annotations

import hashlib
import os

import flax.linen as nn
import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxddpm.data import to_model_range
from jaxddpm.files import atomic_write


TRAIN_STEPS = 1500  # Adam steps of the classifier


class SmallCNN(nn.Module):
    num_classes: int
    features: int = 128

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(logits, features) for images in [-1, 1]."""
        for width in (32, 64):
            x = nn.relu(nn.Conv(width, (3, 3))(x))
            x = nn.relu(nn.Conv(width, (3, 3))(x))
            x = nn.avg_pool(x, (2, 2), (2, 2))
        features = nn.relu(nn.Dense(self.features)(x.reshape(x.shape[0], -1)))
        return nn.Dense(self.num_classes)(features), features


def _shift(key: jax.Array, x: jax.Array, max_shift: int = 1) -> jax.Array:
    """Random translations by up to ``max_shift`` pixels (edge-padded), per image."""
    pad = ((0, 0), (max_shift, max_shift), (max_shift, max_shift), (0, 0))
    padded = jnp.pad(x, pad, mode="edge")
    offsets = jax.random.randint(key, (x.shape[0], 2), 0, 2 * max_shift + 1)
    crop = lambda img, o: jax.lax.dynamic_slice(img, (o[0], o[1], 0), x.shape[1:])  # noqa: E731
    return jax.vmap(crop)(padded, offsets)


def train_classifier(
    images_u8: np.ndarray, labels: np.ndarray, num_classes: int, *, steps: int = 0, batch_size: int = 64, seed: int = 0
) -> dict:
    """Parameters of a `SmallCNN` trained with Adam and random shifts (``steps`` 0: `TRAIN_STEPS`)."""
    steps = steps or TRAIN_STEPS
    model = SmallCNN(num_classes)
    x_all, y_all = to_model_range(jnp.asarray(images_u8)), jnp.asarray(labels)
    params = model.init(jax.random.key(seed), x_all[:1])["params"]
    tx = optax.adam(optax.cosine_decay_schedule(2e-3, steps))
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state, key):
        idx_key, shift_key = jax.random.split(key)
        idx = jax.random.randint(idx_key, (batch_size,), 0, x_all.shape[0])
        x, y = _shift(shift_key, x_all[idx]), y_all[idx]

        def loss_fn(p):
            logits, _ = model.apply({"params": p}, x)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        grads = jax.grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    key = jax.random.key(seed + 1)
    for i in range(steps):
        params, opt_state = step(params, opt_state, jax.random.fold_in(key, i))
    return params


def cached_classifier(images_u8: np.ndarray, labels: np.ndarray, num_classes: int, cache_dir: str) -> dict:
    """`train_classifier` on these images, cached by a hash of images and labels."""
    digest = hashlib.sha1(np.ascontiguousarray(images_u8).tobytes() + np.asarray(labels).tobytes()).hexdigest()[:12]
    path = os.path.join(cache_dir, f"classifier-{num_classes}-{TRAIN_STEPS}-{digest}.msgpack")
    template = SmallCNN(num_classes).init(jax.random.key(0), jnp.zeros((1, *images_u8.shape[1:])))["params"]
    if os.path.exists(path):
        with open(path, "rb") as f:
            return flax.serialization.from_bytes(template, f.read())
    params = train_classifier(images_u8, labels, num_classes)
    try:
        os.makedirs(cache_dir, exist_ok=True)
        with atomic_write(path, "wb") as f:
            f.write(flax.serialization.to_bytes(params))
    except OSError:
        pass
    return params


def classifier_fns(params: dict, num_classes: int):
    """(probabilities_fn, features_fn), each taking uint8 NHWC images."""
    model = SmallCNN(num_classes)
    apply = jax.jit(lambda x: model.apply({"params": params}, to_model_range(x)))

    def probs(images_u8):
        return np.asarray(jax.nn.softmax(apply(jnp.asarray(images_u8))[0]))

    def features(images_u8):
        return np.asarray(apply(jnp.asarray(images_u8))[1])

    return probs, features
