"""The ``jaxddpm`` command line. Each subcommand parses its flags and calls the library.

Errors a user can fix print one line and exit 2 (bad usage, config or data) or 1 (a
failure while running); no traceback.
"""

from __future__ import annotations

import argparse
import os
import sys

from jaxddpm.terminal import (
    RUNTIME_ERROR,
    USAGE_ERROR,
    ArgumentParser,
    Stderr,
    fail,
    failing_run,
    quiet_libraries,
)


def _add_distributed_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("multi-process runs (one process per host or per GPU)")
    group.add_argument(
        "--distributed", action="store_true",
        help="join a multi-process run with jax.distributed; without the flags below, JAX reads the launcher's "
        "environment (SLURM, Open MPI, TPU slices, JAX_COORDINATOR_ADDRESS/JAX_NUM_PROCESSES/JAX_PROCESS_ID)",
    )
    group.add_argument("--coordinator", help="HOST:PORT of process 0 (implies --distributed)")
    group.add_argument("--num-processes", type=int, help="number of processes (implies --distributed)")
    group.add_argument("--process-id", type=int, help="this process's index, 0-based (implies --distributed)")


def _maybe_initialize_distributed(args: argparse.Namespace) -> int:
    """0, or the exit code of a launch that cannot work."""
    if not (args.distributed or args.coordinator or args.num_processes is not None or args.process_id is not None):
        return 0
    from jaxddpm.parallel import DistributedError, initialize

    try:
        initialize(args.coordinator, args.num_processes, args.process_id)
    except DistributedError as e:
        return fail(str(e), USAGE_ERROR)
    return 0


DEFAULT_WORKDIR = os.path.join("runs", "quickstart")


def _add_workdir_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workdir", default=DEFAULT_WORKDIR, help=f"training workdir (default: {DEFAULT_WORKDIR}, where jaxddpm train writes)")


def _add_common_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--verbose", action="store_true",
                        help="show the libraries' own log output and tracebacks (also: JAXDDPM_DEBUG=1)")


def _add_sampler_flags(parser: argparse.ArgumentParser) -> None:
    from jaxddpm.options import SAMPLERS, VARIANCES

    group = parser.add_argument_group("sampler (default: the run's sample section)")
    group.add_argument("--sampler", choices=SAMPLERS, help="ancestral (the article's, all T steps) or ddim")
    group.add_argument("--steps", type=int, help="DDIM steps")
    group.add_argument("--eta", type=float, help="DDIM eta: 0 deterministic, 1 ancestral-like")
    group.add_argument("--clip-x0", action=argparse.BooleanOptionalAction, default=None, help="clip the predicted x0 to [-1, 1] (the article's sampler does not)")
    group.add_argument("--variance", choices=VARIANCES, help="ancestral: fixed_small (posterior, the article's) or fixed_large (beta_t)")
    group.add_argument("--guidance", type=float, help="classifier-free guidance scale of a conditional model (0 unconditional, 1 conditional)")
    group.add_argument("--label", type=int, help="class to draw from a conditional model; -1 cycles through all classes")


def _sampler_options(args: argparse.Namespace) -> dict:
    return dict(sampler=args.sampler, steps=args.steps, eta=args.eta, clip_x0=args.clip_x0, variance=args.variance, guidance=args.guidance, label=args.label)


def _as_flags(message: str) -> str:
    """A config error about the sample section, in the command line's flag names."""
    return message.replace("sample.", "--").replace("clip_x0", "clip-x0")


def _split_overrides(rest: list[str]) -> dict[str, str]:
    """``--config.a.b=v`` or ``--config.a.b v`` pairs -> {"a.b": "v"}."""
    overrides, i = {}, 0
    while i < len(rest):
        arg = rest[i]
        if not arg.startswith("--config."):
            raise ValueError(f"unrecognised argument {arg!r}; overrides look like --config.section.field=value")
        key, eq, value = arg[len("--config.") :].partition("=")
        if not eq:
            if i + 1 >= len(rest):
                raise ValueError(f"{arg} needs a value")
            i, value = i + 1, rest[i + 1]
        overrides[key] = value
        i += 1
    return overrides


TRAIN_EPILOG = """\
Any config field can be overridden, parsed to the field's type:
  --config.SECTION.FIELD=VALUE   (or --config.SECTION.FIELD VALUE)

examples:
  jaxddpm train                                        the quickstart (digits, a few minutes on a CPU)
  jaxddpm train --config.train.num_steps=4000          train longer (resumes from runs/quickstart)
  jaxddpm train --config.model.channels="(32, 64, 128)" --config.model.dtype=bfloat16 --workdir runs/x
  jaxddpm train --config flowers64 --print-config      resolve, check and print a config; write nothing
  jaxddpm train --list-configs                         the configs that ship with jaxddpm

Every field and its default: jaxddpm/configs/default.py (or --print-config).
"""


def _list_configs() -> int:
    import importlib

    from jaxddpm import config as config_lib

    for name in config_lib.available_configs():
        doc = (importlib.import_module(f"jaxddpm.configs.{name}").__doc__ or "").strip()
        print(f"{name:<12} {' '.join(doc.split())}")
    return 0


def _train(argv: list[str]) -> int:
    parser = ArgumentParser(prog="jaxddpm train", description="Train a diffusion model (resumes automatically).",
                            epilog=TRAIN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="quickstart", help="a shipped config name or a path to a .py file (default: quickstart)")
    parser.add_argument("--workdir", help="where checkpoints, logs and samples go (default: runs/<config name>)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved, validated config as JSON and exit; writes nothing")
    parser.add_argument("--list-configs", action="store_true", help="list the shipped configs and exit")
    _add_common_flags(parser)
    _add_distributed_flags(parser)
    args, rest = parser.parse_known_args(argv)
    if args.list_configs:
        return _list_configs()

    from jaxddpm import config as config_lib
    from jaxddpm.checkpoint import CheckpointError
    from jaxddpm.data import DataError

    try:
        overrides = _split_overrides(rest)
        config = config_lib.apply_overrides(config_lib.load_config(args.config), overrides)
        config_lib.validate(config)
    except (ValueError, config_lib.ConfigError) as e:
        return fail(str(e), USAGE_ERROR)
    if args.print_config:
        print(config_lib.to_json(config))
        return 0
    workdir = args.workdir or os.path.join("runs", os.path.splitext(os.path.basename(args.config))[0])
    code = _maybe_initialize_distributed(args)
    if code:
        return code
    import jax

    if jax.process_index() == 0:
        print(f"config {args.config}, workdir {workdir}:\n{config_lib.to_json(config)}", flush=True)

    from jaxddpm.trainer import TrainingInterrupted, train_and_evaluate

    Stderr.keep_real()
    try:
        train_and_evaluate(config, workdir, on_failure=failing_run)
    except TrainingInterrupted as e:
        Stderr.write_line(str(e))
        return 128 + e.signum
    except (config_lib.ConfigError, DataError) as e:
        return fail(str(e), USAGE_ERROR)
    except (CheckpointError, FloatingPointError) as e:
        Stderr.silence()
        return fail(str(e), RUNTIME_ERROR)
    except OSError as e:
        Stderr.silence()
        return fail(f"{e.strerror or e} ({e.filename or workdir})", RUNTIME_ERROR)
    return 0


def _sample(argv: list[str]) -> int:
    parser = ArgumentParser(prog="jaxddpm sample", description="Sample from a workdir's latest checkpoint (EMA parameters) "
                            "or from an exported model.")
    _add_workdir_flag(parser)
    parser.add_argument("--model", metavar="DIR", help="an exported model (jaxddpm export, jaxddpm convert --from-diffusers) "
                        "to sample from instead of a workdir")
    parser.add_argument("--num-samples", "--num", dest="num_samples", type=int, default=64, help="number of samples (default 64)")
    parser.add_argument("--batch-size", type=int, help="samples drawn per compiled call (default: all at once)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="PNG path (default: WORKDIR/samples/sample_step<N>_seed<S>.png); an .npz is written beside it")
    _add_sampler_flags(parser)
    _add_common_flags(parser)
    args = parser.parse_args(argv)
    if args.num_samples <= 0 or (args.batch_size is not None and args.batch_size <= 0):
        return fail(f"--num-samples and --batch-size must be positive, got {args.num_samples} and {args.batch_size}", USAGE_ERROR)

    from jaxddpm.checkpoint import CheckpointError
    from jaxddpm.config import ConfigError
    from jaxddpm.generate import sample_workdir

    try:
        png, npz = sample_workdir(args.workdir, args.num_samples, args.seed, args.out, batch_size=args.batch_size,
                                  model_dir=args.model, **_sampler_options(args))
    except ConfigError as e:
        return fail(_as_flags(str(e)), USAGE_ERROR)
    except (CheckpointError, FileExistsError, FileNotFoundError, ValueError) as e:
        return fail(str(e), USAGE_ERROR)
    except OSError as e:
        return fail(f"{e.strerror or e} ({e.filename})", RUNTIME_ERROR)
    print(f"wrote {png} and {npz}")
    return 0


def _eval(argv: list[str]) -> int:
    from jaxddpm.options import FID_PUBLISHED_SAMPLES, FID_WARN_BELOW, METRICS

    parser = ArgumentParser(prog="jaxddpm eval", description="Evaluate a workdir's latest checkpoint; results go to WORKDIR/eval/*.json.")
    _add_workdir_flag(parser)
    parser.add_argument("--metric", action="append", choices=METRICS, help="repeat for several (default: bpd and quality)")
    parser.add_argument("--fresh", action="store_true", help="evaluate the freshly initialised model of the workdir's config instead")
    parser.add_argument("--num-samples", "--num", dest="num_samples", type=int, default=1000,
                        help=f"samples for quality and fid (default 1000; published FIDs use {FID_PUBLISHED_SAMPLES:,})")
    parser.add_argument("--batch-size", type=int, default=250, help="samples drawn per compiled call (default 250)")
    parser.add_argument("--seed", type=int, default=0, help="the first sampling seed (default 0)")
    parser.add_argument("--seeds", type=int, default=1, help="sampling seeds for quality and fid: the mean and spread over "
                        "--seed, --seed + 1, ... (default 1)")
    _add_sampler_flags(parser)
    _add_common_flags(parser)
    args = parser.parse_args(argv)
    if args.num_samples < 2 or args.batch_size < 1 or args.seeds < 1:
        return fail(f"--num-samples must be >= 2, --batch-size and --seeds >= 1, got {args.num_samples}, {args.batch_size} "
                    f"and {args.seeds}", USAGE_ERROR)
    metric_names = tuple(args.metric or ("bpd", "quality"))
    if "fid" in metric_names and args.num_samples < FID_WARN_BELOW:
        print(f"warning: FID from {args.num_samples:,} samples is biased upwards and not comparable with published FIDs, "
              f"which use {FID_PUBLISHED_SAMPLES:,} (--num-samples {FID_PUBLISHED_SAMPLES})", file=sys.stderr)

    from jaxddpm.checkpoint import CheckpointError
    from jaxddpm.config import ConfigError
    from jaxddpm.data import DataError
    from jaxddpm.evaluate import EvalError, evaluate, summary_line

    try:
        results = evaluate(
            args.workdir, metric_names, fresh=args.fresh,
            num_samples=args.num_samples, seed=args.seed, batch_size=args.batch_size, sampler_options=_sampler_options(args),
            log=lambda line: print(line, flush=True), num_seeds=args.seeds,
        )
    except (CheckpointError, EvalError, DataError) as e:
        return fail(str(e), USAGE_ERROR)
    except ConfigError as e:
        return fail(_as_flags(str(e)), USAGE_ERROR)
    except OSError as e:
        return fail(f"{e.strerror or e} ({e.filename})", RUNTIME_ERROR)
    for name, r in results.items():
        line = summary_line(name, r)
        print(f"{name} at step {r['step']}{' (fresh)' if r['fresh'] else ''}: {line}; {r.get('path', '')}")
    return 0


def _export(argv: list[str]) -> int:
    parser = ArgumentParser(
        prog="jaxddpm export",
        description="Write a workdir's newest checkpoint as config.json + model.safetensors (EMA parameters and "
        "BatchNorm statistics; no optimizer state), for jaxddpm.Pipeline.from_pretrained or any safetensors reader.")
    _add_workdir_flag(parser)
    parser.add_argument("--out", required=True, help="directory to write (an existing export there is never overwritten)")
    _add_common_flags(parser)
    args = parser.parse_args(argv)

    from jaxddpm.checkpoint import CheckpointError
    from jaxddpm.pipeline import CONFIG_FILE, WEIGHTS_FILE, Pipeline, refuse_existing_export

    try:
        refuse_existing_export(args.out, "--out")  # before the checkpoint is read
        pipe = Pipeline.from_workdir(args.workdir)
        pipe.save_pretrained(args.out)
    except (CheckpointError, FileExistsError) as e:
        return fail(str(e), USAGE_ERROR)
    except OSError as e:
        return fail(f"{e.strerror or e} ({e.filename or args.out})", RUNTIME_ERROR)
    print(f"wrote {os.path.join(args.out, CONFIG_FILE)} and {os.path.join(args.out, WEIGHTS_FILE)} (step {pipe.step})")
    return 0


def _parity(argv: list[str]) -> int:
    try:
        from parity.report import main
    except ImportError as e:
        return fail(f"jaxddpm parity needs PyTorch ({e}); install it with: pip install 'jaxddpm[parity]'", USAGE_ERROR)
    return main(argv)


def _convert(argv: list[str]) -> int:
    from parity.convert_workdir import main

    return main(argv)


def _bench(argv: list[str]) -> int:
    from jaxddpm.bench import main

    return main(argv)


COMMANDS = {
    "train": ("train a model (default config: quickstart); resumes from the workdir", _train),
    "sample": ("sample from a workdir's latest checkpoint", _sample),
    "eval": ("bits/dim, classifier score and FID of a workdir's model", _eval),
    "export": ("write a workdir's model as config.json + model.safetensors (for jaxddpm.Pipeline)", _export),
    "convert": ("convert weights between the article's PyTorch model and a jaxddpm workdir", _convert),
    "parity": ("check jaxddpm against the PyTorch reference (python -m parity)", _parity),
    "bench": ("time jaxddpm against the PyTorch reference on this device", _bench),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-V", "--version"):
        from jaxddpm import __version__

        print(f"jaxddpm {__version__}")
        return 0
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        usage = "usage: jaxddpm {" + ",".join(COMMANDS) + "} ...   (or: python -m jaxddpm ...)\n\ncommands:\n"
        usage += "".join(f"  {name:<8} {help_}\n" for name, (help_, _) in COMMANDS.items())
        usage += "\n  --version  print jaxddpm's version\n"
        if argv and argv[0] not in ("-h", "--help"):
            print(f"error: unknown command {argv[0]!r}; allowed: {', '.join(COMMANDS)}", file=sys.stderr)
            return USAGE_ERROR
        print(usage, end="")
        return 0 if argv else USAGE_ERROR
    if "--verbose" in argv:
        os.environ["JAXDDPM_DEBUG"] = "1"
    with quiet_libraries():
        return COMMANDS[argv[0]][1](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
