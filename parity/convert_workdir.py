"""``jaxddpm convert``: article-model PyTorch weights <-> jaxddpm training workdirs, and
diffusers DDPM models <-> jaxddpm exported models.

``--from-torch model.pt --out WORKDIR`` writes a workdir (config.json and a checkpoint at
step 0 whose parameters and EMA parameters are the converted weights) that ``jaxddpm
sample`` can use. ``--to-torch WORKDIR --out model.pt`` writes a state_dict that the
article's model loads with ``load_state_dict(strict=True)``. ``--from-diffusers DIR --out
OUT`` writes an exported model (`jaxddpm.Pipeline.from_pretrained`, ``jaxddpm sample --model``)
from a diffusers UNet2DModel folder (with its scheduler config, if any); ``--to-diffusers SRC
--out OUT`` writes a DDPMPipeline folder from an exported model or a training workdir. The
diffusers directions need neither PyTorch nor diffusers. Existing outputs are never
overwritten.
"""

from __future__ import annotations

import os
import sys

from jaxddpm.terminal import ArgumentParser

# JAX, PyTorch and the conversion tables are imported inside the functions, after the
# arguments are parsed, so that --help answers at once.


def import_torch_checkpoint(path: str, workdir: str, config_name: str = "flowers64"):
    """Write ``workdir`` (config.json and a step-0 checkpoint) from an article-model
    state_dict; returns the `TrainState` written."""
    import jax.numpy as jnp

    from jaxddpm import checkpoint, factory, sampling
    from jaxddpm import config as config_lib
    from jaxddpm.train import make_optimizer, state_from_variables
    from parity import convert
    from parity.report import load_state_dict

    if checkpoint.has_checkpoints(workdir) or os.path.exists(os.path.join(workdir, "config.json")):
        raise FileExistsError(f"--out {workdir} already holds a run; choose a new directory (runs are never overwritten)")
    state_dict = load_state_dict(path)
    variables = convert.torch_to_flax(state_dict)  # raises ConversionError naming bad keys
    model = convert.model_from_state_dict(state_dict)
    config = config_lib.load_config(config_name)
    config.model.channels = tuple(model.channels)
    config.model.time_emb_dim = model.time_emb_dim
    config.data.channels = int(state_dict["init_conv.weight"].shape[1])
    levels = len(model.channels) - 1
    if config.data.image_size % 2**levels:
        config.data.image_size = 2**levels * max(1, config.data.image_size // 2**levels)
    config_lib.validate(config)
    state = state_from_variables(variables, make_optimizer(config.train.learning_rate))
    # The model must accept the converted variables before anything is written.
    x = jnp.zeros((1, config.data.image_size, config.data.image_size, config.data.channels))
    factory.build_model(config).apply(sampling.sampling_variables(state), x, jnp.zeros((1,), jnp.int32), train=False)
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(config_lib.to_json(config))
    manager = checkpoint.make_manager(workdir)
    try:
        checkpoint.save(manager, state, dict(converted_from=os.path.abspath(path)))
    finally:
        manager.close()
    return state


def export_torch_checkpoint(workdir: str, out: str, weights: str = "ema") -> dict:
    import jax
    import torch

    from jaxddpm import config as config_lib
    from jaxddpm.generate import load_workdir, read_workdir_config
    from parity import convert

    if os.path.exists(out):
        raise FileExistsError(f"--out {out} exists; choose another path (files are never overwritten)")
    name = read_workdir_config(workdir).model.name
    if name != "simple_unet":
        raise config_lib.ConfigError(f"--to-torch writes the article's SimpleUNet; {workdir} holds a {name} model "
                                     "(--to-diffusers writes a ddpm_unet as a diffusers UNet2DModel)")
    _, state = load_workdir(workdir)
    params = state.ema_params if weights == "ema" else state.params
    variables = {"params": jax.device_get(params), "batch_stats": jax.device_get(state.batch_stats)}
    state_dict = convert.flax_to_torch(variables, num_batches_tracked=int(state.step))
    torch.save(state_dict, out)
    return state_dict


def export_to_diffusers(source: str, out: str) -> None:
    """``--to-diffusers``: ``source`` is an exported model directory or a training workdir."""
    from jaxddpm.pipeline import CONFIG_FILE, WEIGHTS_FILE, Pipeline
    from parity import diffusers_format

    if os.path.exists(out):
        raise FileExistsError(f"--out {out} exists; choose another path (files are never overwritten)")
    exported = all(os.path.isfile(os.path.join(source, name)) for name in (CONFIG_FILE, WEIGHTS_FILE))
    pipe = Pipeline.from_pretrained(source) if exported else Pipeline.from_workdir(source)
    diffusers_format.export_diffusers(pipe, out)


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="jaxddpm convert", description=__doc__.splitlines()[0])
    direction = parser.add_mutually_exclusive_group(required=True)
    direction.add_argument("--from-torch", metavar="MODEL_PT", help="article-model state_dict to import")
    direction.add_argument("--to-torch", metavar="WORKDIR", help="jaxddpm workdir to export")
    direction.add_argument("--from-diffusers", metavar="DIR", help="diffusers UNet2DModel or DDPMPipeline folder to import")
    direction.add_argument("--to-diffusers", metavar="SRC", help="exported jaxddpm model or workdir to write as a DDPMPipeline folder")
    parser.add_argument("--out", required=True,
                        help="the workdir (--from-torch), .pt file (--to-torch), exported model (--from-diffusers) or "
                             "diffusers folder (--to-diffusers) to create")
    parser.add_argument("--weights", choices=("ema", "params"), default="ema", help="--to-torch: which parameters to export (default: ema)")
    args = parser.parse_args(argv)
    from jaxddpm import checkpoint
    from jaxddpm import config as config_lib

    if args.from_diffusers or args.to_diffusers:
        from parity import diffusers_format

        errors: tuple = (diffusers_format.DiffusersFormatError, FileExistsError, FileNotFoundError, checkpoint.CheckpointError, config_lib.ConfigError)
        try:
            if args.from_diffusers:
                scheduler = diffusers_format.import_diffusers(args.from_diffusers, args.out)
                if scheduler is None:
                    print("note: no scheduler_config.json found; used DDPMScheduler's defaults", file=sys.stderr)
            else:
                export_to_diffusers(args.to_diffusers, args.out)
        except errors as e:
            print(f"error: {e}".splitlines()[0], file=sys.stderr)
            return 2
        print(f"wrote {args.out}")
        return 0

    try:
        from parity import convert
    except ImportError as e:
        print(f"error: --from-torch and --to-torch need PyTorch ({e}); install it with: pip install 'jaxddpm[parity]'", file=sys.stderr)
        return 2
    try:
        if args.from_torch:
            import_torch_checkpoint(args.from_torch, args.out)
        else:
            export_torch_checkpoint(args.to_torch, args.out, args.weights)
    except (convert.ConversionError, FileExistsError, checkpoint.CheckpointError, config_lib.ConfigError) as e:
        print(f"error: {e}".splitlines()[0], file=sys.stderr)
        return 2
    except SystemExit as e:  # load_state_dict's one-line messages
        print(e, file=sys.stderr)
        return 2
    print(f"wrote {args.out}")
    return 0

