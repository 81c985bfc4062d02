"""The parity report: run the checks, print a table or JSON, exit 0 only if all pass."""

from __future__ import annotations

import argparse
import json
import sys

from jaxddpm.kernels import CONV_IMPLS, UPSAMPLE_IMPLS, ConvPolicy
from jaxddpm.terminal import ArgumentParser

# The names the command line offers; `parity.checks` (which loads PyTorch) is imported only
# after the arguments are parsed. tests/test_parity_checks.py checks they match the checks.
CHECK_NAMES = ("embeddings", "schedule", "q_sample", "forward", "loss", "gradients", "training", "sampling", "round_trip")
SIZE_NAMES = ("full", "small")


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or ArgumentParser(
        prog="python -m parity", description="Check jaxddpm against the PyTorch reference of the article's model."
    )
    parser.add_argument("--float64", action="store_true", help="run both frameworks in double precision")
    parser.add_argument("--json", action="store_true", help="print machine-readable results")
    parser.add_argument("--torch-checkpoint", metavar="FILE", help="article-model state_dict (torch.save) to check instead of a random init")
    parser.add_argument("--size", choices=SIZE_NAMES, default="full", help="model size (default: the article's full model)")
    parser.add_argument("--adam-steps", "--steps", dest="steps", type=int, default=3, help="Adam steps in the training check (default 3; float32 judges step 1, see --float64)")
    parser.add_argument("--only", nargs="+", choices=CHECK_NAMES, help="run only these checks")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--conv-impl", choices=CONV_IMPLS, default=ConvPolicy.impl,
                        help=f"jaxddpm's convolution forms (same math; default {ConvPolicy.impl})")
    parser.add_argument("--upsample-impl", choices=UPSAMPLE_IMPLS, default=ConvPolicy.upsample,
                        help=f"jaxddpm's transposed-convolution form (same math; default {ConvPolicy.upsample})")
    return parser


def load_state_dict(path: str) -> dict:
    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise SystemExit(f"error: --torch-checkpoint {path}: no such file") from None
    except Exception as e:  # noqa: BLE001 - torch raises many types for unreadable files
        raise SystemExit(f"error: --torch-checkpoint {path}: not a readable torch state_dict ({type(e).__name__})") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise SystemExit(f"error: --torch-checkpoint {path}: expected a state_dict, found {type(obj).__name__}")
    return obj


def sizes_for(state_dict: dict | None, size: str):
    """The check sizes (`checks.Sizes`); for a user's checkpoint, the model sizes come from its weights."""
    from parity import checks

    base = {"full": checks.FULL, "small": checks.SMALL}[size]
    if state_dict is None:
        return base
    from parity import convert

    model = convert.model_from_state_dict(state_dict)
    image_channels = int(state_dict["init_conv.weight"].shape[1])
    image_size = max(base.image_size, 2 ** (len(model.channels) - 1))
    return checks.Sizes(
        channels=tuple(model.channels), image_size=image_size, image_channels=image_channels,
        time_emb_dim=model.time_emb_dim, batch=base.batch, num_timesteps=base.num_timesteps,
    )


def model_options(args: argparse.Namespace) -> dict:
    """The jaxddpm forms chosen on the command line (`checks.run_checks`'s ``model_options``)."""
    return dict(conv_policy=ConvPolicy(impl=args.conv_impl, upsample=args.upsample_impl))


def forms(args: argparse.Namespace) -> dict[str, str]:
    """The forms chosen on the command line that differ from the defaults, by option name."""
    chosen = dict(conv_impl=(args.conv_impl, ConvPolicy.impl), upsample_impl=(args.upsample_impl, ConvPolicy.upsample))
    return {name: value for name, (value, default) in chosen.items() if value != default}


def format_table(results) -> str:
    rows = [("check", "max |diff|", "rel diff", "tolerance", "")]
    rows += [(r.name, f"{r.max_abs_diff:.2e}", f"{r.rel_diff:.2e}", f"{r.tolerance:.1e}", "ok" if r.passed else "FAIL") for _, r in results]
    width = max(len(r[0]) for r in rows)
    lines = [f"{a:<{width}}  {b:>10}  {c:>10}  {d:>9}  {e}" for a, b, c, d, e in rows]
    failed = sum(not r.passed for _, r in results)
    lines.append(f"{len(results) - failed} passed, {failed} failed")
    return "\n".join(lines)


def main(argv: list[str] | None = None, args: argparse.Namespace | None = None) -> int:
    args = args or build_parser().parse_args(argv)
    if args.steps < 1:
        print("error: --adam-steps must be at least 1", file=sys.stderr)
        return 2
    from parity import checks

    state_dict = load_state_dict(args.torch_checkpoint) if args.torch_checkpoint else None
    try:
        sizes = sizes_for(state_dict, args.size)
        results = checks.run_checks(sizes, float64=args.float64, state_dict=state_dict, num_train_steps=args.steps, only=args.only, seed=args.seed,
                                     model_options=model_options(args))
    except (ValueError, RuntimeError) as e:
        if state_dict is None:
            raise
        print(f"error: --torch-checkpoint {args.torch_checkpoint}: {e}".splitlines()[0], file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps([dict(check=c, **r._asdict()) for c, r in results], indent=1))
    else:
        print(f"parity: {'float64' if args.float64 else 'float32'}, channels {sizes.channels}, "
              f"{sizes.image_size}x{sizes.image_size}, batch {sizes.batch}, T {sizes.num_timesteps}"
              + "".join(f", {name} {value}" for name, value in forms(args).items()))
        print(format_table(results))
    return 0 if all(r.passed for _, r in results) else 1
