"""`jaxddpm eval --metric quality` for a run whose images are smaller than the judge's: its
samples are upscaled exactly as the data pipeline upscales the dataset's images (PIL
bilinear, uint8) and judged against the real held-out images at that size, by the classifier
trained on the training images at that size. This puts runs at different image sizes on one
scale: an 8x8 run of the bundled digits is judged by the same classifier, with the same real
images, as a 16x16 run.

    python experiments/quickstart/judge_upscaled.py runs/quickstart --size 16 --seeds 3
    python experiments/quickstart/judge_upscaled.py runs/quickstart --size 16 --seeds 3 --sampler ddim --steps 50

Writes WORKDIR/eval/quality-judged-at-SIZE_stepN_SAMPLER_seeds0-K.json (seed0 for one seed).
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np

from jaxddpm import cli, data, evaluate
from jaxddpm.files import atomic_write
from jaxddpm.pipeline import Pipeline


class Upscaled:
    """A pipeline whose samples are upscaled to ``size`` as `jaxddpm.data.resize` does."""

    def __init__(self, pipe: Pipeline, size: int):
        self.pipe, self.size = pipe, size
        self.config = pipe.config

    def sample(self, num: int, **kwargs) -> np.ndarray:
        small = self.pipe.sample(num, **kwargs)
        channels = small.shape[-1]
        return np.stack([data.resize(data.to_pil(im), self.size, channels) for im in small])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("workdir")
    p.add_argument("--size", type=int, default=16, help="the judge's image size (default 16)")
    p.add_argument("--num-samples", type=int, default=297)
    p.add_argument("--seeds", type=int, default=3)
    cli._add_sampler_flags(p)  # jaxddpm eval's own sampler flags
    p.add_argument("--batch-size", type=int, default=250, help="samples per compiled call (jaxddpm eval's default)")
    args = p.parse_args()

    pipe = Pipeline.from_workdir(args.workdir)
    judge_data = pipe.config.data.copy_and_resolve_references()
    judge_data.image_size = args.size
    train_set, held_out = data.load_splits(judge_data)
    options = {k: v for k, v in cli._sampler_options(args).items() if v is not None}
    resolved, label = pipe.sampler_options(**options)
    per_seed = [evaluate.quality(Upscaled(pipe, args.size), train_set, held_out, num_samples=args.num_samples, seed=seed,
                                 batch_size=args.batch_size, sampler_options=options) for seed in range(args.seeds)]
    result = evaluate.over_seeds(per_seed, evaluate.QUALITY_SPREAD)
    record = dict({k: resolved[k] for k in ("sampler", "steps", "eta", "clip_x0", "variance", "guidance")}, label=label)
    result.update(sampler=record, step=pipe.step, seeds=args.seeds, image_size=pipe.config.data.image_size, judged_at=args.size)
    seeds = "seed0" if args.seeds == 1 else f"seeds0-{args.seeds - 1}"  # as jaxddpm eval names them
    out = os.path.join(args.workdir, "eval", f"quality-judged-at-{args.size}_step{pipe.step}_{evaluate.sampler_label(record)}_{seeds}.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with atomic_write(out) as f:
        json.dump(result, f, indent=1)
    print(evaluate.summary_line("quality", dict(result, step=pipe.step)), out, sep="; ")


if __name__ == "__main__":
    main()
