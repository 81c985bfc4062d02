"""Sampling from a training workdir: the EMA parameters of its latest checkpoint."""

from __future__ import annotations

import os

import jax
import numpy as np

from jaxddpm import checkpoint, config as config_lib, images, parallel, trainer
from jaxddpm.train import TrainState


def load_workdir(workdir: str) -> tuple[object, TrainState]:
    """(config, state) of the newest restorable checkpoint in ``workdir``."""
    config_path = os.path.join(workdir, "config.json")
    if not os.path.isdir(workdir):
        raise checkpoint.CheckpointError(f"workdir {workdir} does not exist")
    if not os.path.exists(config_path) or not checkpoint.has_checkpoints(workdir):
        raise checkpoint.CheckpointError(f"workdir {workdir} holds no training run (config.json and checkpoints/ are needed)")
    with open(config_path) as f:
        config = config_lib.from_json(f.read())
    target = trainer.initial_state(config, jax.random.key(0))
    manager = checkpoint.make_manager(workdir, read_only=True)
    try:
        restored = checkpoint.restore_latest(manager, target)
    finally:
        manager.close()
    if restored is None:
        raise checkpoint.CheckpointError(f"workdir {workdir}: no checkpoint could be restored")
    return config, restored[0]


def sample_images(
    config, state: TrainState, num: int, seed: int, *, label: int | None = None, batch_size: int = 0, **options
) -> tuple[np.ndarray, np.ndarray | None]:
    """``num`` samples (float32 NHWC in [-1, 1]) from the EMA parameters, and their labels.

    ``options`` override the config's sampler settings (`trainer.sampler_options`);
    ``label`` (None: the config's) picks the class of a conditional model, -1 cycles
    through all. With ``batch_size``, samples are drawn in batches of that size, batch i
    from ``fold_in(key(seed), i)``.
    """
    image_shape = (config.data.image_size, config.data.image_size, config.data.channels)
    label = config.sample.label if label is None else label
    labels = trainer.sample_labels(num, config.model.num_classes, label)
    batch_size = batch_size or num
    sampler = trainer.make_sampler(
        trainer.build_model(config), trainer.build_schedule(config), (batch_size, *image_shape), parallel.make_mesh(),
        **trainer.sampler_options(config, **options),
    )
    variables = trainer.sampling_variables(state)
    if batch_size == num:
        return np.asarray(sampler(variables, jax.random.key(seed), labels)), labels
    chunks = []
    for i, start in enumerate(range(0, num, batch_size)):
        chunk_labels = None if labels is None else np.resize(labels[start:], batch_size)
        chunks.append(np.asarray(sampler(variables, jax.random.fold_in(jax.random.key(seed), i), chunk_labels)))
    return np.concatenate(chunks)[:num], labels


def sample_workdir(
    workdir: str, num: int = 64, seed: int = 0, out: str | None = None, *, label: int | None = None, **options
) -> tuple[str, str]:
    """Write a PNG grid and an .npz of ``num`` samples; returns their paths.

    ``label`` and ``options`` (sampler, steps, eta, clip_x0, guidance) default to the
    workdir config's ``sample`` section.
    """
    config, state = load_workdir(workdir)
    out = out or os.path.join(workdir, "samples", f"sample_step{int(state.step)}_seed{seed}.png")
    npz = os.path.splitext(out)[0] + ".npz"
    for path in (out, npz):
        if os.path.exists(path):
            raise FileExistsError(f"{path} exists; choose another --out (existing files are never overwritten)")
    merged = config_lib.apply_overrides(config, {f"sample.{k}": str(v) for k, v in options.items() if v is not None})
    merged.sample.num = num
    if label is not None:
        merged.sample.label = label
    config_lib.validate_sampling(merged.sample, config.diffusion.num_timesteps, config.model.num_classes)
    samples, labels = sample_images(merged, state, num, seed)
    images.save_grid(out, samples)
    extra = {} if labels is None else {"labels": labels}
    np.savez(npz, samples=samples, step=int(state.step), seed=seed, **extra)
    return out, npz

