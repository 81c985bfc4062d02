"""Sampling from a training workdir: the EMA parameters of its latest checkpoint."""

from __future__ import annotations

import os

import jax
import numpy as np

from jaxddpm import checkpoint, config as config_lib, images, parallel, trainer
from jaxddpm.train import TrainState, make_optimizer


def load_workdir(workdir: str) -> tuple[object, TrainState]:
    """(config, state) of the newest restorable checkpoint in ``workdir``."""
    config_path = os.path.join(workdir, "config.json")
    if not os.path.isdir(workdir):
        raise checkpoint.CheckpointError(f"workdir {workdir} does not exist")
    if not os.path.exists(config_path) or not checkpoint.has_checkpoints(workdir):
        raise checkpoint.CheckpointError(f"workdir {workdir} holds no training run (config.json and checkpoints/ are needed)")
    with open(config_path) as f:
        config = config_lib.from_json(f.read())
    model = trainer.build_model(config)
    tx = make_optimizer(config.train.learning_rate, config.train.grad_clip_norm or None)
    image_shape = (config.data.image_size, config.data.image_size, config.data.channels)
    target = trainer.create_sharded_state(model, tx, jax.random.key(0), image_shape, parallel.make_mesh(), config.train.get("sharding", "replicated"))
    manager = checkpoint.make_manager(workdir, read_only=True)
    try:
        restored = checkpoint.restore_latest(manager, target)
    finally:
        manager.close()
    if restored is None:
        raise checkpoint.CheckpointError(f"workdir {workdir}: no checkpoint could be restored")
    return config, restored[0]


def sample_workdir(workdir: str, num: int = 64, seed: int = 0, out: str | None = None) -> tuple[str, str]:
    """Write a PNG grid and an .npz of ``num`` samples; returns their paths."""
    config, state = load_workdir(workdir)
    out = out or os.path.join(workdir, "samples", f"sample_step{int(state.step)}_seed{seed}.png")
    npz = os.path.splitext(out)[0] + ".npz"
    for path in (out, npz):
        if os.path.exists(path):
            raise FileExistsError(f"{path} exists; choose another --out (existing files are never overwritten)")
    image_shape = (config.data.image_size, config.data.image_size, config.data.channels)
    mesh = parallel.make_mesh()
    sampler = trainer.make_sampler(trainer.build_model(config), trainer.build_schedule(config), (num, *image_shape), mesh)
    samples = np.asarray(sampler(trainer.sampling_variables(state), jax.random.key(seed)))
    images.save_grid(out, samples)
    np.savez(npz, samples=samples, step=int(state.step), seed=seed)
    return out, npz
