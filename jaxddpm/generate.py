"""Sampling from a training workdir to files (``jaxddpm sample``), and loading a workdir's
whole training state."""

from __future__ import annotations

import os

import jax
import numpy as np

from jaxddpm import checkpoint, factory, images
from jaxddpm.pipeline import Pipeline, read_export_config, read_workdir_config, sampler_options_for
from jaxddpm.train import TrainState


def load_workdir(workdir: str) -> tuple[object, TrainState]:
    """(config, whole training state) of the newest restorable checkpoint in ``workdir``
    (optimizer state included; to sample, `Pipeline.from_workdir` reads less)."""
    config = read_workdir_config(workdir)
    state, _ = checkpoint.restore_workdir(workdir, checkpoint.restore_latest, factory.initial_state(config, jax.random.key(0)))
    return config, state


def sample_workdir(
    workdir: str, num: int = 64, seed: int = 0, out: str | None = None, *, label: int | None = None,
    batch_size: int | None = None, model_dir: str | None = None, **options
) -> tuple[str, str]:
    """Write a PNG grid and an .npz of ``num`` samples; returns their paths.

    The model is a training workdir's newest checkpoint, or with ``model_dir`` an exported
    model (`Pipeline.from_pretrained`). ``label`` and ``options`` (sampler, steps, eta,
    clip_x0, variance, guidance) default to the config's ``sample`` section. The options and
    the output paths are checked before any weights are read.
    """
    source = model_dir or workdir
    config = read_export_config(model_dir) if model_dir is not None else read_workdir_config(workdir)
    sampler_options_for(config, label=label, **options)  # ConfigError before any weights are read
    if out is not None:
        _refuse_existing(out)
    pipe = Pipeline.from_pretrained(model_dir) if model_dir is not None else Pipeline.from_workdir(workdir)
    name = f"sample_step{pipe.step}_seed{seed}.png" if pipe.step is not None else f"sample_seed{seed}.png"
    out = out or os.path.join(source, "samples", name)
    npz = _refuse_existing(out)
    samples, labels = pipe.generate(num, seed=seed, batch_size=batch_size, progress=True, label=label, **options)
    images.save_grid(out, samples)
    extra = {} if labels is None else {"labels": labels}
    np.savez(npz, samples=samples, step=-1 if pipe.step is None else pipe.step, seed=seed, **extra)
    return out, npz


def _refuse_existing(png: str) -> str:
    """The .npz path beside ``png``; `FileExistsError` if either exists."""
    npz = os.path.splitext(png)[0] + ".npz"
    for path in (png, npz):
        if os.path.exists(path):
            raise FileExistsError(f"{path} exists; choose another --out (existing files are never overwritten)")
    return npz
