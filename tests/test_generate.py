"""Loading a training run's newest checkpoint."""

from jaxddpm import checkpoint
from jaxddpm.generate import load_workdir


def test_load_workdir_restores_latest(tiny_run):
    workdir = tiny_run
    config, state = load_workdir(workdir)
    assert int(state.step) == 4 and config.data.image_size == 8
    assert checkpoint.has_checkpoints(workdir)
