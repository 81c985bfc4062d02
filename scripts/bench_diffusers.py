"""Sampling speed of a converted diffusers DDPM model: jaxddpm's compiled ancestral chain
against diffusers' DDPMPipeline, in one process, on the same machine.

    python scripts/bench_diffusers.py                       # cifar10-32, batch 1, all 1,000 steps
    python scripts/bench_diffusers.py --timesteps 100       # a shorter chain (T = 100), same network

The model is a randomly initialised UNet2DModel in the google/ddpm-cifar10-32 configuration
(speed does not depend on the weights), converted with jaxddpm's diffusers converter.
``--timesteps`` sets both schedulers' T, which changes the schedule but not the cost of a
step. jaxddpm's compilation is timed separately; each side is timed once after a warm-up
(jaxddpm: compile and one chain; diffusers: a 2-step call).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="cifar10-32", choices=("cifar10-32", "celebahq-256"))
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--timesteps", type=int, default=1000)
    parser.add_argument("--conv-impl", choices=("xla", "cpu"), default="xla",
                        help="jaxddpm's convolutions: XLA's own (the converted model's default) or jaxddpm's CPU forms")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    import jax
    import torch
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    from parity import diffusers_checks, diffusers_format

    unet_config, scheduler_config = diffusers_checks.CONFIGS[args.config]
    scheduler_config = dict(scheduler_config, num_train_timesteps=args.timesteps)
    torch.manual_seed(0)
    unet = UNet2DModel(**unet_config).eval()
    with tempfile.TemporaryDirectory() as tmp:
        unet.save_pretrained(tmp)
        with open(os.path.join(tmp, diffusers_format.SCHEDULER_CONFIG), "w") as f:
            json.dump(scheduler_config, f)
        pipe, _ = diffusers_format.pipeline_from_diffusers(tmp)
    if args.conv_impl == "cpu":
        from jaxddpm.kernels import ConvPolicy

        pipe.model = pipe.model.clone(conv_policy=ConvPolicy(impl="cpu"))

    start = time.perf_counter()
    jax.block_until_ready(pipe.generate(args.batch, seed=0))
    first = time.perf_counter() - start
    start = time.perf_counter()
    jax.block_until_ready(pipe.generate(args.batch, seed=1))
    ours = time.perf_counter() - start

    reference = DDPMPipeline(unet=unet, scheduler=DDPMScheduler(**scheduler_config))
    reference.set_progress_bar_config(disable=True)
    with torch.no_grad():
        reference(batch_size=args.batch, num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="np")
        start = time.perf_counter()
        reference(batch_size=args.batch, num_inference_steps=args.timesteps, generator=torch.Generator().manual_seed(1), output_type="np")
        theirs = time.perf_counter() - start

    result = {
        "config": args.config, "batch": args.batch, "timesteps": args.timesteps, "conv_impl": args.conv_impl,
        "jaxddpm_s": round(ours, 2), "jaxddpm_compile_and_first_s": round(first, 2), "diffusers_s": round(theirs, 2),
        "speedup": round(theirs / ours, 3), "machine": platform.processor() or platform.machine(),
        "jax": jax.__version__, "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{args.config}, batch {args.batch}, {args.timesteps} ancestral steps, jaxddpm convolutions {args.conv_impl}: jaxddpm {ours:.2f} s "
              f"(compile and first call {first:.2f} s), diffusers DDPMPipeline {theirs:.2f} s; "
              f"jaxddpm is {theirs / ours:.2f}x as fast")
    return 0


if __name__ == "__main__":
    sys.exit(main())
