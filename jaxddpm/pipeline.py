"""`Pipeline`: a trained model ready to sample from, loaded from a training workdir or from
an exported directory, in a line.

    pipe = jaxddpm.Pipeline.from_workdir("runs/quickstart")
    images = pipe.sample(16, seed=0)          # uint8, (16, H, W, C)

An exported directory (`save_pretrained`, ``jaxddpm export``) holds ``config.json`` (the run's
config) and ``model.safetensors`` (the EMA parameters and BatchNorm statistics, keys such as
``params/down_blocks_0/conv1/kernel``, NHWC/HWIO layouts); safetensors files are read by
NumPy, PyTorch and most other frameworks without jaxddpm.
"""

from __future__ import annotations

import os

import flax.traverse_util
import jax
import ml_collections
import numpy as np

from jaxddpm import checkpoint, config as config_lib, data, factory, parallel, sampling
from jaxddpm.files import atomic_write
from jaxddpm.runtime import Progress

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT = "jaxddpm-pipeline-1"


class Pipeline:
    """A model, its sampling variables, its schedule and its config.

    ``model``, ``variables`` (``{"params": EMA parameters, "batch_stats": ...}``), ``schedule``
    and ``config`` are plain attributes for functional use (``model.apply(variables, x, t,
    False)``). `sample` compiles one sampler per batch shape and sampler options and keeps it,
    so a second call with the same arguments compiles nothing.
    """

    def __init__(self, config: ml_collections.ConfigDict, variables: dict, step: int | None = None):
        config_lib.validate(config)
        self.config = config
        self.model = factory.build_model(config)
        self.schedule = factory.build_schedule(config)
        self.variables = variables
        self.step = step
        self._samplers: dict = {}
        self._bar: Progress | None = None  # the progress display of the sampling call in progress

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return factory.image_shape(self.config)

    @classmethod
    def from_workdir(cls, workdir: str) -> Pipeline:
        """The newest restorable checkpoint of a training workdir: only its EMA parameters and
        BatchNorm statistics are read (no optimizer state). `CheckpointError` if there is none."""
        config = read_workdir_config(workdir)
        variables, meta = checkpoint.restore_workdir(workdir, checkpoint.restore_variables_latest, abstract_variables(config))
        return cls(config, variables, step=int(meta["step"]))

    @classmethod
    def from_pretrained(cls, directory: str) -> Pipeline:
        """A directory written by `save_pretrained` or ``jaxddpm export`` (no orbax, no
        training state). `FileNotFoundError` or `ValueError` with one line saying what is wrong."""
        from safetensors import safe_open
        from safetensors.numpy import load_file

        config_path, weights_path = os.path.join(directory, CONFIG_FILE), os.path.join(directory, WEIGHTS_FILE)
        for path in (config_path, weights_path):
            if not os.path.isfile(path):
                raise FileNotFoundError(f"{directory} is not an exported model: {os.path.basename(path)} is missing")
        config = read_export_config(directory)
        with safe_open(weights_path, "numpy") as f:
            step = (f.metadata() or {}).get("step")
        flat = load_file(weights_path)
        expected = flax.traverse_util.flatten_dict(abstract_variables(config), sep="/")
        _check_tensors(flat, expected, weights_path)
        variables = flax.traverse_util.unflatten_dict({k: jax.numpy.asarray(v) for k, v in flat.items()}, sep="/")
        return cls(config, variables, step=None if step in (None, "") else int(step))

    def save_pretrained(self, directory: str) -> str:
        """Write ``config.json`` and ``model.safetensors`` into ``directory`` (created; an
        existing export there is never overwritten: `FileExistsError`). Returns the directory."""
        from safetensors.numpy import save as to_safetensors

        refuse_existing_export(directory)
        os.makedirs(directory, exist_ok=True)
        flat = flax.traverse_util.flatten_dict(jax.device_get(self.variables), sep="/")
        metadata = {"format": FORMAT, "step": "" if self.step is None else str(self.step)}
        with atomic_write(os.path.join(directory, WEIGHTS_FILE), "wb") as f:
            f.write(to_safetensors({k: np.ascontiguousarray(v) for k, v in flat.items()}, metadata=metadata))
        with atomic_write(os.path.join(directory, CONFIG_FILE)) as f:
            f.write(config_lib.to_json(self.config))
        return directory

    def sampler_options(self, **options) -> tuple[dict, int]:
        """`sampler_options_for` this pipeline's config."""
        return sampler_options_for(self.config, **options)

    def generate(self, num: int, *, seed: int, batch_size: int | None = None, progress: bool = False,
                 **options) -> tuple[np.ndarray, np.ndarray | None]:
        """``num`` samples as float32 NHWC in [-1, 1], and their labels (None if unconditional).

        With ``batch_size`` < ``num``, batch i is drawn from ``fold_in(key(seed), i)``; else
        all from ``key(seed)``. ``progress``: on a terminal, a progress bar over the reverse steps of all
        batches (the sampler then reports each step to the host).
        ``options``: see `sample`."""
        if num <= 0:
            raise config_lib.ConfigError(f"num must be positive, got {num}")
        sampler_options, label = self.sampler_options(**options)
        labels = sampling.sample_labels(num, self.config.model.num_classes, label)
        batch = min(batch_size or num, num)
        batches = -(-num // batch)
        steps = sampler_options["steps"] if sampler_options["sampler"] == "ddim" else self.schedule.num_timesteps
        bar = Progress(batches * steps, quiet=not progress, unit="step")  # on a terminal only
        run = self._sampler(batch, sampler_options, with_progress=bar.bar is not None)
        self._bar = bar
        try:
            if batch == num:
                return np.asarray(run(self.variables, jax.random.key(seed), labels)), labels
            chunks = []
            for i, start in enumerate(range(0, num, batch)):
                chunk_labels = None if labels is None else np.resize(labels[start:], batch)
                chunks.append(np.asarray(run(self.variables, jax.random.fold_in(jax.random.key(seed), i), chunk_labels)))
            return np.concatenate(chunks)[:num], labels
        finally:
            bar.close()
            self._bar = None

    def sample(self, num: int, *, seed: int, sampler: str | None = None, steps: int | None = None,
               eta: float | None = None, clip_x0: bool | None = None, variance: str | None = None,
               guidance: float | None = None, label: int | None = None, batch_size: int | None = None,
               progress: bool = False) -> np.ndarray:
        """``num`` images as uint8 NHWC. Options left at None take the run's ``sample``
        settings: ``sampler`` "ancestral" (``variance`` "fixed_small" or "fixed_large") or
        "ddim" (``steps``, ``eta``); ``clip_x0`` for either;
        ``guidance`` and ``label`` (-1 cycles through the classes) for a conditional model."""
        images, _ = self.generate(num, seed=seed, batch_size=batch_size, progress=progress, sampler=sampler, steps=steps, eta=eta,
                                  clip_x0=clip_x0, variance=variance, guidance=guidance, label=label)
        return data.to_uint8(images)

    def _sampler(self, batch: int, options: dict, with_progress: bool = False):
        key = (batch, tuple(sorted(options.items())), with_progress)
        if key not in self._samplers:
            on_step = (lambda: self._bar is not None and self._bar.update(1)) if with_progress else None
            self._samplers[key] = sampling.make_sampler(
                self.model, self.schedule, (batch, *self.image_shape), parallel.make_mesh(), on_step=on_step, **options)
        return self._samplers[key]


def sampler_options_for(config: ml_collections.ConfigDict, *, sampler=None, steps=None, eta=None, clip_x0=None,
                        variance=None, guidance=None, label=None) -> tuple[dict, int]:
    """(`sampling.make_sampler` options, label) from a config's ``sample`` section with the
    given values (those not None) over it; `ConfigError` with one line if they cannot run."""
    merged = config_lib.apply_overrides(config, {})
    options = dict(sampler=sampler, steps=steps, eta=eta, clip_x0=clip_x0, variance=variance, guidance=guidance, label=label)
    for name, value in options.items():
        if value is not None:
            merged.sample[name] = value
    config_lib.validate_sampling(merged.sample, config.diffusion.num_timesteps, config.model.num_classes)
    return sampling.sampler_options(merged), int(merged.sample.label)


def refuse_existing_export(directory: str, option: str = "directory") -> None:
    """`FileExistsError` if ``directory`` already holds an export's files (they are never
    overwritten); ``option`` names what to change in the message."""
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if os.path.exists(os.path.join(directory, name)):
            raise FileExistsError(f"{os.path.join(directory, name)} exists; choose another {option} (exports are never overwritten)")


def read_export_config(directory: str) -> ml_collections.ConfigDict:
    """The config.json of an exported model; `FileNotFoundError` if there is none."""
    config_path = os.path.join(directory, CONFIG_FILE)
    if not os.path.isfile(config_path):
        raise FileNotFoundError(f"{directory} is not an exported model: {CONFIG_FILE} is missing")
    with open(config_path) as f:
        return config_lib.from_json(f.read())


def read_workdir_config(workdir: str) -> ml_collections.ConfigDict:
    """The config.json of a training workdir that has checkpoints; `CheckpointError` if not."""
    config_path = os.path.join(workdir, "config.json")
    if not os.path.isdir(workdir):
        raise checkpoint.CheckpointError(f"workdir {workdir} does not exist")
    if not os.path.exists(config_path) or not checkpoint.has_checkpoints(workdir):
        raise checkpoint.CheckpointError(f"workdir {workdir} holds no training run (config.json and checkpoints/ are needed)")
    with open(config_path) as f:
        return config_lib.from_json(f.read())


def abstract_variables(config: ml_collections.ConfigDict) -> dict:
    """Shapes, dtypes and (replicated) shardings of a config's sampling variables; nothing is computed."""
    model, shape = factory.build_model(config), factory.image_shape(config)
    zeros = jax.ShapeDtypeStruct((1, *shape), model.param_dtype)
    variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, jax.numpy.zeros((1,), jax.numpy.int32), train=False), zeros)
    sharding = parallel.replicated(parallel.make_mesh())
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding), variables)
    return {"params": abstract["params"], "batch_stats": abstract.get("batch_stats", {})}


def _check_tensors(found: dict, expected: dict, path: str) -> None:
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    shaped = sorted(k for k in set(found) & set(expected)
                    if tuple(found[k].shape) != tuple(expected[k].shape) or found[k].dtype != expected[k].dtype)
    if missing or unexpected or shaped:
        parts = [f"{label} {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''} ({len(keys)})"
                 for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape or dtype", shaped)) if keys]
        raise ValueError(f"{path} does not match its config.json: {'; '.join(parts)}")

