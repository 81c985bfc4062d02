"""Sampling from a training workdir to files (``jaxddpm sample``), and loading a workdir's
whole training state."""

from __future__ import annotations

import os

import jax
import numpy as np

from jaxddpm import checkpoint, factory, images
from jaxddpm.pipeline import Pipeline, read_workdir_config, sampler_options_for
from jaxddpm.train import TrainState


def load_workdir(workdir: str) -> tuple[object, TrainState]:
    """(config, whole training state) of the newest restorable checkpoint in ``workdir``
    (optimizer state included; to sample, `Pipeline.from_workdir` reads less)."""
    config = read_workdir_config(workdir)
    state, _ = checkpoint.restore_workdir(workdir, checkpoint.restore_latest, factory.initial_state(config, jax.random.key(0)))
    return config, state


def sample_workdir(
    workdir: str, num: int = 64, seed: int = 0, out: str | None = None, *, label: int | None = None,
    batch_size: int | None = None, **options
) -> tuple[str, str]:
    """Write a PNG grid and an .npz of ``num`` samples; returns their paths.

    ``label`` and ``options`` (sampler, steps, eta, clip_x0, guidance) default to the
    workdir config's ``sample`` section. The options and the output paths are checked
    before any checkpoint is opened.
    """
    sampler_options_for(read_workdir_config(workdir), label=label, **options)  # ConfigError before any checkpoint is read
    if out is not None:
        _refuse_existing(out)
    pipe = Pipeline.from_workdir(workdir)
    out = out or os.path.join(workdir, "samples", f"sample_step{pipe.step}_seed{seed}.png")
    npz = _refuse_existing(out)
    samples, labels = pipe.generate(num, seed=seed, batch_size=batch_size, progress=True, label=label, **options)
    images.save_grid(out, samples)
    extra = {} if labels is None else {"labels": labels}
    np.savez(npz, samples=samples, step=pipe.step, seed=seed, **extra)
    return out, npz


def _refuse_existing(png: str) -> str:
    """The .npz path beside ``png``; `FileExistsError` if either exists."""
    npz = os.path.splitext(png)[0] + ".npz"
    for path in (png, npz):
        if os.path.exists(path):
            raise FileExistsError(f"{path} exists; choose another --out (existing files are never overwritten)")
    return npz
