"""``jaxddpm eval``: bits/dim, the classifier score and FID of a workdir's model.

Results go to ``WORKDIR/eval/`` as JSON, one file per (metric, step, seed); the same call
returns them as a dict. Held-out images (``data.holdout``) are used where the metric
needs real images the model never saw.
"""

from __future__ import annotations

import functools
import json
import os
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxddpm import classifier, data, diffusion, factory, files, inception, likelihood, metrics, sampling
from jaxddpm.files import atomic_write
from jaxddpm.options import METRICS
from jaxddpm.pipeline import Pipeline, read_workdir_config, sampler_options_for
from jaxddpm.train import TrainState



class EvalError(ValueError):
    """An evaluation that cannot run; the message says what is missing."""


def default_cache_dir(config) -> str:
    return files.cache_dir(config.data.cache_dir)


def fresh_state(config) -> TrainState:
    """The step-0 state that training with this config starts from."""
    return factory.initial_state(config, factory.run_keys(config.train.seed)[0])


def bits_per_dim(pipe: Pipeline, images_u8: np.ndarray, *, seed: int = 0, batch_size: int = 128) -> dict:
    """The variational bound in bits/dim on ``images_u8``: total, prior, and per timestep."""
    model, schedule, variables = pipe.model, pipe.schedule, pipe.variables
    prediction = pipe.config.diffusion.prediction

    @jax.jit
    def run(x0, key):
        model_fn = lambda x, t: model.apply(variables, x, t, False).astype(jnp.float32)  # noqa: E731
        return likelihood.bpd_terms(schedule, diffusion.as_eps_fn(schedule, prediction, model_fn), x0, key)

    priors, terms = [], []
    n = len(images_u8)
    batch_size = min(batch_size, n)
    for i, start in enumerate(range(0, n, batch_size)):
        chunk = images_u8[start : start + batch_size]
        padded = np.concatenate([chunk, images_u8[: batch_size - len(chunk)]]) if len(chunk) < batch_size else chunk
        prior, term = run(data.to_model_range(jnp.asarray(padded)), jax.random.fold_in(jax.random.key(seed), i))
        priors.append(np.asarray(prior)[: len(chunk)])
        terms.append(np.asarray(term)[:, : len(chunk)])
    prior, term = np.concatenate(priors), np.concatenate(terms, axis=1)  # (N,), (T, N)
    total = prior + term.sum(axis=0)
    return {
        "bpd": float(total.mean()),
        "bpd_stderr": float(total.std(ddof=1) / np.sqrt(n)) if n > 1 else 0.0,
        "prior_bpd": float(prior.mean()),
        "decoder_bpd": float(term[0].mean()),
        "timestep_bpd": term.mean(axis=1).tolist(),  # index t: the bound's term at 0-based timestep t
        "num_images": n,
    }


def quality(pipe: Pipeline, train_set, held_out, *, num_samples: int, seed: int, batch_size: int,
            sampler_options: dict | None = None) -> dict:
    """Samples side by side with real held-out images, both judged by a classifier trained on
    the training images (its accuracy on the held-out images is reported): the confident-label
    share, the Fréchet distance of the classifier's features to the training images'
    statistics, improved precision and recall (k = 3) against the training images' features,
    and, in pixel space, the share of samples closer to a training image than held-out
    images are (memorisation).

    Every metric but memorisation depends on how many images it sees, so samples are scored in
    groups of as many images as the real set holds, and the groups' mean (and spread) is
    reported against the real set's value."""
    if train_set.num_classes <= 0 or held_out.labels.min(initial=0) < 0:
        raise EvalError("the quality metric needs a labelled dataset (e.g. the quickstart's digits)")
    if len(held_out) < 10 * train_set.num_classes:
        raise EvalError(f"the quality metric compares samples with held-out images: set data.holdout >= {10 * train_set.num_classes}")
    params = classifier.cached_classifier(train_set.images, train_set.labels, train_set.num_classes, default_cache_dir(pipe.config))
    probs_fn, features_fn = classifier.classifier_fns(params, train_set.num_classes)
    train_features = metrics.batched_features(features_fn, train_set.images)
    reference = metrics.feature_statistics(train_features)

    def judge(images_u8):  # (probabilities, features), each computed once per image set
        return metrics.batched_features(probs_fn, images_u8), metrics.batched_features(features_fn, images_u8)

    def score(probs, features):
        result = metrics.classifier_score(probs)
        result["frechet_distance"] = metrics.frechet_distance(*metrics.feature_statistics(features), *reference)
        result.update(metrics.precision_recall(train_features, features))
        return result

    real_probs, real_features = judge(held_out.images)
    real_score = score(real_probs, real_features)
    samples_u8 = pipe.sample(num_samples, seed=seed, batch_size=batch_size, progress=True, **(sampler_options or {}))
    sample_probs, sample_features = judge(samples_u8)
    size = min(len(held_out), num_samples)
    groups = [score(sample_probs[i : i + size], sample_features[i : i + size]) for i in range(0, num_samples - size + 1, size)]
    sample_score = {name: float(np.mean([g[name] for g in groups])) for name in SCORED}
    sample_score.update({f"{name}_group_std": float(np.std([g[name] for g in groups])) for name in SCORED})
    whole = metrics.classifier_score(sample_probs)
    sample_score.update({k: whole[k] for k in ("classes_present", "num_classes", "min_class_count", "class_counts")})
    sample_score.update(groups=len(groups), group_size=size, k=groups[0]["k"])
    held_out_accuracy = float(np.mean(real_probs.argmax(1) == held_out.labels))
    return {
        "samples": sample_score,
        "real": real_score,
        "vs_real": {name: sample_score[name] / max(real_score[name], 1e-12) for name in SCORED},
        "confident_share_vs_real": sample_score["confident_share"] / max(real_score["confident_share"], 1e-12),
        "memorisation": metrics.memorisation(*(x.reshape(len(x), -1).astype(np.float32) for x in (samples_u8, train_set.images, held_out.images))),
        "classifier_accuracy_on_held_out": held_out_accuracy,
        "num_samples": num_samples,
        "classifier": f"SmallCNN trained on the {len(train_set)} training images; real = the {len(held_out)} held-out images",
    }


SCORED = ("confident_share", "frechet_distance", "precision", "recall")  # quality's per-image-set numbers
QUALITY_SPREAD = tuple(f"{part}.{name}" for part in ("samples", "vs_real") for name in SCORED) + (
    "memorisation.share_closer_than_held_out",)


def over_seeds(per_seed: list[dict], fields: tuple[str, ...]) -> dict:
    """One seed's result as it is; several seeds' as ``per_seed`` and, for each dotted field,
    its ``spread``: mean, standard deviation and values. Fields that do not depend on the
    seed (the real images' scores, the classifier's accuracy) are kept from the first."""
    if len(per_seed) == 1:
        return dict(per_seed[0])

    def get(result, dotted):
        for part in dotted.split("."):
            result = result[part]
        return float(result)

    spread = {}
    for field in fields:
        values = [get(r, field) for r in per_seed]
        spread[field] = {"mean": float(np.mean(values)), "std": float(np.std(values, ddof=1)), "values": values}
    shared = {k: v for k, v in per_seed[0].items() if k in ("real", "classifier_accuracy_on_held_out", "num_samples", "classifier")}
    return dict(shared, spread=spread, per_seed=per_seed)


def sampler_label(record: dict) -> str:
    """A short name of sampler settings for file names: ancestral, ancestral-clip,
    ancestral-large, ddim50, ddim50-eta0.5-clip, ..."""
    if record["sampler"] == "ddim":
        name = f"ddim{record['steps']}" + (f"-eta{record['eta']:g}" if record["eta"] else "")
    else:
        name = "ancestral" + ("-large" if record.get("variance") == "fixed_large" else "")
    name += "-clip" if record["clip_x0"] else ""
    if record.get("guidance", 1.0) != 1.0:
        name += f"-cfg{record['guidance']:g}"
    return name


def evaluate(
    workdir: str,
    metric_names: tuple[str, ...] = ("bpd", "quality"),
    *,
    fresh: bool = False,
    num_samples: int = 1000,
    seed: int = 0,
    batch_size: int = 250,
    feature_fn: metrics.FeatureFn | None = None,
    feature_name: str = "inception",
    write: bool = True,
    sampler_options: dict | None = None,
    log: Callable[[str], None] | None = None,
    num_seeds: int = 1,
) -> dict:
    """Evaluate a workdir's latest checkpoint (EMA parameters), or with ``fresh`` the
    freshly initialised model of its config. ``feature_fn`` replaces the Inception network
    for FID (e.g. a stand-in); by default it is loaded as `inception_feature_fn` says.
    ``sampler_options`` (`Pipeline.sample`'s sampler, steps, eta, clip_x0, guidance; None
    keeps the run's) choose how quality and FID samples are drawn; each result records the
    sampler used. ``log``, if given, receives a line as each metric starts.

    Sample-based metrics are computed for ``num_seeds`` sampling seeds (``seed``, ``seed``
    + 1, ...); with more than one, the result holds each seed's numbers (``per_seed``) and
    their mean and standard deviation (``spread``). Results are written to
    ``WORKDIR/eval/METRIC_stepN[_fresh][_SAMPLER]_seedS.json`` (``_seedsS-E`` for several).
    """
    if num_seeds < 1:
        raise EvalError(f"the number of seeds must be at least 1, got {num_seeds}")
    seeds = list(range(seed, seed + num_seeds))
    for name in metric_names:
        if name not in METRICS:
            raise EvalError(f"metric {name!r} is unknown; allowed: {', '.join(METRICS)}")
    options = {k: v for k, v in (sampler_options or {}).items() if v is not None}
    config = read_workdir_config(workdir)
    resolved, label = sampler_options_for(config, **options)  # ConfigError, before any checkpoint is read
    if fresh:
        pipe = Pipeline(config, sampling.sampling_variables(fresh_state(config)), step=0)
    else:
        pipe = Pipeline.from_workdir(workdir)
    step = pipe.step
    sampler_record = dict({k: resolved[k] for k in ("sampler", "steps", "eta", "clip_x0", "variance", "guidance")}, label=label)
    train_set, held_out = data.load_splits(config.data)
    results = {}
    what = {"bpd": "the variational bound on held-out images", "quality": f"{num_samples} samples and a classifier",
            "fid": f"{num_samples} samples and the feature network"}
    for name in metric_names:
        start = time.perf_counter()
        if log is not None:
            log(f"{name}: {what[name]} (step {step}{', fresh model' if fresh else ''}) ...")
        if name == "bpd":
            images = held_out.images if len(held_out) else train_set.images
            result = bits_per_dim(pipe, images, seed=seed)
            result["images"] = "held-out" if len(held_out) else "training (data.holdout = 0)"
        elif name == "quality":
            result = over_seeds([quality(pipe, train_set, held_out, num_samples=num_samples, seed=sd, batch_size=batch_size,
                                         sampler_options=options) for sd in seeds], QUALITY_SPREAD)
            result["sampler"] = sampler_record
        else:
            fn = feature_fn or inception_feature_fn()
            reference = metrics.reference_statistics(
                fn, train_set.images, default_cache_dir(config), f"{feature_name}-{config.data.source}-{config.data.image_size}"
            )
            per_seed = [{"fid": metrics.fid(fn, pipe.sample(num_samples, seed=sd, batch_size=batch_size, progress=True, **options), reference)}
                        for sd in seeds]
            result = dict(over_seeds(per_seed, ("fid",)), num_samples=num_samples, features=feature_name, sampler=sampler_record)
        result.update(metric=name, step=step, fresh=fresh, seed=seed, seeds=1 if name == "bpd" else len(seeds),
                      seconds=round(time.perf_counter() - start, 1))
        results[name] = result
        if write and jax.process_index() == 0:
            out_dir = os.path.join(workdir, "eval")
            os.makedirs(out_dir, exist_ok=True)
            seed_tag = f"seed{seed}" if len(seeds) == 1 or name == "bpd" else f"seeds{seed}-{seeds[-1]}"
            sampler_tag = "" if name == "bpd" else f"_{sampler_label(sampler_record)}"
            path = os.path.join(out_dir, f"{name}_step{step}{'_fresh' if fresh else ''}{sampler_tag}_{seed_tag}.json")
            with atomic_write(path) as f:
                json.dump(result, f, indent=1)
            result["path"] = path
    return results


def _value(result: dict, field: str, fmt: str) -> str:
    """A result's dotted field, as ``mean +- std`` when it was measured over several seeds."""
    if "spread" in result:
        spread = result["spread"][field]
        return f"{spread['mean']:{fmt}} +- {spread['std']:{fmt}}"
    for part in field.split("."):
        result = result[part]
    return f"{result:{fmt}}"


def _quality_line(r: dict) -> str:
    real = r["real"]
    parts = [f"{label} {_value(r, 'samples.' + field, fmt)} (real {real[field]:{fmt}})" for label, field, fmt in (
        ("confident-label share", "confident_share", ".3f"), ("Frechet distance", "frechet_distance", ".2f"),
        ("precision", "precision", ".3f"), ("recall", "recall", ".3f"))]
    parts.append(f"memorised {_value(r, 'memorisation.share_closer_than_held_out', '.3f')}")
    parts.append(f"classifier accuracy {r['classifier_accuracy_on_held_out']:.3f}")
    return ", ".join(parts)


def summary_line(name: str, r: dict) -> str:
    """One line of a metric's result, as `jaxddpm eval` prints it."""
    if name == "bpd":
        return f"{r['bpd']:.4f} bits/dim (prior {r['prior_bpd']:.4f}, decoder {r['decoder_bpd']:.4f}) on {r['num_images']} {r['images']} images"
    if name == "quality":
        return _quality_line(r)
    return f"FID {_value(r, 'fid', '.3f')} ({r['num_samples']} samples)"



@functools.cache
def inception_feature_fn() -> metrics.FeatureFn:
    """The standard FID network (pytorch-fid's Inception-v3 pool features, 2048-d).

    Needs the ``fid`` extra (PyTorch and pytorch-fid) and the weights file
    ``pt_inception-2015-12-05-6726825d.pth``, found at ``$JAXDDPM_INCEPTION_WEIGHTS`` or in
    PyTorch's hub cache (``~/.cache/torch/hub/checkpoints``).
    """
    try:
        return inception.load_fid_inception(os.environ.get("JAXDDPM_INCEPTION_WEIGHTS", ""))
    except ImportError as e:  # PyTorch or pytorch-fid
        raise EvalError(f"FID needs PyTorch and pytorch-fid ({e}); install them with: pip install 'jaxddpm[fid]'") from None
    except inception.WeightsNotFound as e:
        raise EvalError(str(e)) from None

