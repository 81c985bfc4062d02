"""Where DDIM's grey background comes from: the start of the chain.

    python experiments/quickstart/ddim_start.py WORKDIR [--seeds 4] [--num 297]

The article's schedule (T = 300, linear betas 1e-4..0.02) leaves sqrt(alpha-bar_T) = 0.22 of
the image in x_T, so the network learns to read the image's mean from x_T, while the samplers
start from pure noise N(0, I). For each seed this draws DDIM-50 samples (eta 0) from three
starting points built from the same noise z, and ancestral samples for reference:

- ``N(0,I)``: z, as `jaxddpm sample` does;
- ``meanshift``: sqrt(abar_T) * (the training images' mean image) + sqrt(1 - abar_T) * z,
  the forward process's mean at T without any one image's identity;
- ``noised-train``: sqrt(abar_T) * x0 + sqrt(1 - abar_T) * z for a random training image x0
  (a diagnostic only: it leaks that image into the sample).

It prints each draw's confident-label share (the evaluation's classifier and threshold), the
share of pixels exactly 0 and the mean pixel value, then the mean and spread per start.
"""

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from jaxddpm import data, diffusion, factory, metrics
from workdir_judge import load


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("workdir")
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--num", type=int, default=297)
    args = parser.parse_args()
    pipe, train_set, held_out, probs_fn = load(args.workdir)
    model, schedule = factory.build_model(pipe.config), factory.build_schedule(pipe.config)
    shape = (args.num, *pipe.image_shape)

    def eps_fn(variables):
        return lambda x, t: model.apply(variables, x, t, False).astype(jnp.float32)

    ddim = jax.jit(lambda v, key, x_T: diffusion.ddim_sample(schedule, eps_fn(v), key, shape, num_steps=50, x_T=x_T))
    ancestral = jax.jit(lambda v, key: diffusion.sample(schedule, eps_fn(v), key, shape))
    train = data.to_model_range(jnp.asarray(train_set.images))
    abar = schedule.alphas_cumprod[-1]

    def describe(name, samples):
        u8 = data.to_uint8(samples) if samples.dtype != np.uint8 else samples
        confident = metrics.classifier_score(probs_fn(u8))["confident_share"]
        print(f"{name}: confident {confident:.3f}, pixels at 0 {np.mean(u8 == 0):.3f}, mean pixel {u8.mean():.1f}", flush=True)
        return confident

    describe("held-out images", held_out.images)
    results: dict[str, list[float]] = {}
    for seed in range(args.seeds):
        noise_key, sample_key, pick_key = jax.random.split(jax.random.key(100 + seed), 3)
        z = jax.random.normal(noise_key, shape)
        picks = jax.random.randint(pick_key, (args.num,), 0, train.shape[0])
        starts = {
            "N(0,I)": z,
            "meanshift": jnp.sqrt(abar) * train.mean(0) + jnp.sqrt(1 - abar) * z,
            "noised-train": jnp.sqrt(abar) * train[picks] + jnp.sqrt(1 - abar) * z,
        }
        for name, x_T in starts.items():
            results.setdefault(f"ddim50 {name}", []).append(describe(f"seed {seed} ddim50 {name}", ddim(pipe.variables, sample_key, x_T)))
        results.setdefault("ancestral", []).append(describe(f"seed {seed} ancestral", ancestral(pipe.variables, sample_key)))
    for name, values in results.items():
        print(f"{name}: confident {np.mean(values):.3f} ± {np.std(values):.3f} over {args.seeds} seeds")


if __name__ == "__main__":
    main()
