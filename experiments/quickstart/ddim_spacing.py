"""DDIM with its timesteps spaced by a power law instead of evenly: `jaxddpm eval` with
`jaxddpm.diffusion.ddim_timesteps` replaced for this process only.

    python experiments/quickstart/ddim_spacing.py POWER eval --workdir DIR --metric quality \
        --seeds 3 --num-samples 297 --sampler ddim --steps 50

POWER 1 is the even spacing `jaxddpm` uses; POWER 2 is the DDIM paper's quadratic spacing
(denser at small t), here spread over all of [0, T - 1]. The evaluation's JSON goes where
`jaxddpm eval` writes it (same name as the even spacing's: copy it away first).
"""

import sys

import numpy as np

import jaxddpm.diffusion
from jaxddpm import cli


def power_timesteps(power: float):
    def ddim_timesteps(num_timesteps: int, num_steps: int) -> np.ndarray:
        raw = np.linspace(0.0, 1.0, num_steps) ** power * (num_timesteps - 1)
        ts = np.zeros(num_steps, np.int64)
        for i in range(1, num_steps):  # distinct and increasing ...
            ts[i] = max(ts[i - 1] + 1, int(round(raw[i])))
        ts[-1] = num_timesteps - 1  # ... and ending at T - 1
        for i in range(num_steps - 2, -1, -1):
            ts[i] = min(ts[i], ts[i + 1] - 1)
        return ts[::-1].astype(np.int32).copy()
    return ddim_timesteps


if __name__ == "__main__":
    jaxddpm.diffusion.ddim_timesteps = power_timesteps(float(sys.argv[1]))
    print("DDIM timesteps:", jaxddpm.diffusion.ddim_timesteps(300, 50).tolist(), flush=True)
    cli.main(sys.argv[2:])
