"""Confident-label share of single draws, and how much of the background is exactly black.

    python experiments/quickstart/sample_draws.py WORKDIR [--seeds 8] [--num 297] [--samplers ancestral,ddim50]

For each sampler (ancestral; DDIM 50 steps) and each seed, draws NUM samples in one call
(`Pipeline.sample(NUM, seed=...)`, as `jaxddpm sample` does; `jaxddpm eval` draws in batches
of 128 from folded keys) and prints the share the evaluation's classifier labels with
confidence (>= 0.9) and the share of pixels at 0 and at 255; the same for the held-out images.
The spread over seeds is the sampling noise of one 297-sample confident share.
"""

import argparse

import numpy as np

from jaxddpm import metrics
from workdir_judge import load


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("workdir")
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--num", type=int, default=297)
    parser.add_argument("--samplers", default="ancestral,ddim50")
    args = parser.parse_args()
    pipe, train_set, held_out, probs_fn = load(args.workdir)

    def describe(images):
        confident = metrics.classifier_score(probs_fn(images))["confident_share"]  # the evaluation's threshold, 0.9
        return confident, float(np.mean(images == 0)), float(np.mean(images == 255))

    print("held-out images: confident %.3f, pixels at 0 %.3f, at 255 %.3f" % describe(held_out.images))
    samplers = {"ancestral": {}, "ddim50": dict(sampler="ddim", steps=50)}
    for name in args.samplers.split(","):
        options = samplers[name]
        rows = [describe(pipe.sample(args.num, seed=seed, **options)) for seed in range(args.seeds)]
        for seed, row in enumerate(rows):
            print(f"{name} seed {seed}: confident %.3f, pixels at 0 %.3f, at 255 %.3f" % row, flush=True)
        confident = np.array([r[0] for r in rows])
        print(f"{name}: confident {confident.mean():.3f} ± {confident.std():.3f} (min {confident.min():.3f}, "
              f"max {confident.max():.3f}) over {args.seeds} seeds; pixels at 0 {np.mean([r[1] for r in rows]):.3f}")


if __name__ == "__main__":
    main()
