"""The quickstart ablation as a Markdown table, from the workdirs `ablation.sh` wrote.

    python experiments/quickstart/ablation_table.py runs/ablation

One row per (variant, sampler): training wall time, then mean +- standard deviation over the
sampling seeds of the Fréchet distance, precision, recall and confident-label share (each
also as a ratio to the real held-out images' value) and the memorised share. A variant
evaluated with one sampling seed only (`jaxddpm eval --seeds 1`) shows that seed's values
and "1" in the seeds column.
"""

import glob
import json
import os
import re
import sys

FIELDS = (("frechet_distance", "FD", ".1f"), ("precision", "precision", ".3f"), ("recall", "recall", ".3f"),
          ("confident_share", "confident", ".3f"))


def _cell(result: dict, field: str, fmt: str) -> str:
    if "spread" not in result:  # one sampling seed
        return f"{result['samples'][field]:{fmt}} ({result['vs_real'][field]:.2f})"
    spread = result["spread"]
    value, ratio = spread[f"samples.{field}"], spread[f"vs_real.{field}"]
    return f"{value['mean']:{fmt}} ± {value['std']:{fmt}} ({ratio['mean']:.2f})"


def _results(workdir: str):
    """Each sampler's result: over several seeds where there is one, else seed 0's."""
    found = {}
    for pattern in ("quality_step*_seed0.json", "quality_step*_seeds*.json"):  # several seeds win
        for path in sorted(glob.glob(os.path.join(workdir, "eval", pattern))):
            found[os.path.basename(path).split("_")[2]] = path
    return sorted(found.items())


def rows(root: str):
    for workdir in sorted(glob.glob(os.path.join(root, "*"))):
        timing = os.path.join(workdir, "train_time.txt")
        wall = re.search(r"wall ([\d.]+) s", open(timing).read()).group(1) if os.path.exists(timing) else "?"
        for sampler, path in _results(workdir):
            result = json.load(open(path))
            cells = [_cell(result, field, fmt) for field, _, fmt in FIELDS]
            if "spread" in result:
                memorised, seeds = result["spread"]["memorisation.share_closer_than_held_out"]["mean"], result["seeds"]
            else:
                memorised, seeds = result["memorisation"]["share_closer_than_held_out"], 1
            yield os.path.basename(workdir), wall, sampler, seeds, cells, memorised, result


def main(root: str) -> None:
    header = ["variant", "train wall (s)", "sampler", "seeds"] + [f"{name} (÷ real)" for _, name, _ in FIELDS] + ["memorised"]
    print("| " + " | ".join(header) + " |")
    print("|" + " --- |" * len(header))
    real = None
    for name, wall, sampler, seeds, cells, memorised, result in rows(root):
        real = result["real"]
        print(f"| {name} | {wall} | {sampler} | {seeds} | " + " | ".join(cells) + f" | {memorised:.3f} |")
    if real:
        print()
        print("Real held-out images: " + ", ".join(f"{label} {real[field]:{fmt}}" for field, label, fmt in FIELDS))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/ablation")
