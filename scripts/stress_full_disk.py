"""Run `jaxddpm train` (tiny config) repeatedly on small tmpfs mounts that fill up at
different moments, and check that each run's whole stderr is one error line with exit
code 1. Needs permission to mount (root); Linux only.

    python scripts/stress_full_disk.py [--sizes 100k,150k,200k,300k] [--runs 8]
"""

import argparse
import os
import subprocess
import sys
import tempfile

# A run of a few seconds that still writes checkpoints, samples and logs.
TINY_RUN = ["--config.model.channels=(4, 8)", "--config.model.time_emb_dim=8", "--config.data.image_size=8",
            "--config.diffusion.num_timesteps=10", "--config.train.batch_size=8", "--config.train.num_steps=4",
            "--config.train.log_every_steps=2", "--config.checkpoint.every_steps=2", "--config.sample.num=4"]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="100k,150k,200k,300k", help="tmpfs sizes, comma-separated")
    parser.add_argument("--runs", type=int, default=8, help="runs per size")
    args = parser.parse_args()
    failures = 0
    for size in args.sizes.split(","):
        for i in range(args.runs):
            target = tempfile.mkdtemp()
            subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", target], check=True)
            try:
                proc = subprocess.run([sys.executable, "-m", "jaxddpm.cli", "train", "--workdir", os.path.join(target, "run")]
                                      + TINY_RUN, capture_output=True, text=True)
            finally:
                subprocess.run(["umount", target], check=False)
                os.rmdir(target)
            ok = proc.returncode == 1 and proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1
            failures += not ok
            print(f"size={size} run {i}: exit {proc.returncode}, {proc.stderr.count(chr(10))} stderr line(s): "
                  f"{proc.stderr.splitlines()[0] if proc.stderr else ''}" + ("" if ok else "  <- FAILED"), flush=True)
            if not ok:
                print(proc.stderr, file=sys.stderr)
    print(f"{failures} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
