"""The quickstart ablation as a Markdown table, from the workdirs `ablation.sh` wrote.

    python experiments/quickstart/ablation_table.py runs/ablation

One row per (variant, judge, sampler): training wall time, the run's image size, the size
its samples were judged at (its own by `jaxddpm eval`; larger by `judge_upscaled.py`), then
mean +- standard deviation over the sampling seeds of the Fréchet distance, precision,
recall and confident-label share (each also as a ratio to the real held-out images' value
at the judge's size) and the memorised share. A variant evaluated with one sampling seed
only (`jaxddpm eval --seeds 1`) shows that seed's values and "1" in the seeds column.
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
        return f"{result['samples'][field]:{fmt}} ({result['vs_real'][field]:.3f})"
    spread = result["spread"]
    value, ratio = spread[f"samples.{field}"], spread[f"vs_real.{field}"]
    return f"{value['mean']:{fmt}} ± {value['std']:{fmt}} ({ratio['mean']:.3f})"


NAME = re.compile(r"quality(?:-judged-at-(\d+))?_step\d+_([^_]+)_seeds?(\d+)(?:-\d+)?\.json$")


def _results(workdir: str):
    """Each (judge, sampler)'s result: over several seeds where there is one, else seed 0's."""
    found = {}
    for pattern in ("quality*_seed0.json", "quality*_seeds*.json"):  # several seeds win
        for path in sorted(glob.glob(os.path.join(workdir, "eval", pattern))):
            match = NAME.match(os.path.basename(path))
            if match and match.group(3) == "0":
                found[(match.group(1) or "", match.group(2))] = path
    return sorted(found.items(), key=lambda item: (item[0][1], item[0][0]))  # by sampler, then judge


def _image_size(workdir: str) -> int:
    with open(os.path.join(workdir, "config.json")) as f:
        return json.load(f)["data"]["image_size"]


def rows(root: str):
    for workdir in sorted(glob.glob(os.path.join(root, "*"))):
        timing = os.path.join(workdir, "train_time.txt")
        wall = re.search(r"wall ([\d.]+) s", open(timing).read()).group(1) if os.path.exists(timing) else "?"
        size = _image_size(workdir)
        for (judged_at, sampler), path in _results(workdir):
            result = json.load(open(path))
            cells = [_cell(result, field, fmt) for field, _, fmt in FIELDS]
            if "spread" in result:
                memorised, seeds = result["spread"]["memorisation.share_closer_than_held_out"]["mean"], result["seeds"]
            else:
                memorised, seeds = result["memorisation"]["share_closer_than_held_out"], 1
            yield os.path.basename(workdir), wall, size, int(judged_at or size), sampler, seeds, cells, memorised, result


def main(root: str) -> None:
    header = ["variant", "train wall (s)", "size", "judged at", "sampler", "seeds"] + [
        f"{name} (÷ real)" for _, name, _ in FIELDS] + ["memorised"]
    print("| " + " | ".join(header) + " |")
    print("|" + " --- |" * len(header))
    real = {}
    for name, wall, size, judged_at, sampler, seeds, cells, memorised, result in rows(root):
        real[judged_at] = result["real"]
        print(f"| {name} | {wall} | {size} | {judged_at} | {sampler} | {seeds} | " + " | ".join(cells) + f" | {memorised:.3f} |")
    print()
    for judged_at, values in sorted(real.items()):
        print(f"Real held-out images at {judged_at}x{judged_at}: "
              + ", ".join(f"{label} {values[field]:{fmt}}" for field, label, fmt in FIELDS))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/ablation")
