"""`jaxddpm.Pipeline`: loading a run or an export, sampling with cached compiled samplers,
and `jaxddpm export`."""

import json
import os
import sys

import chex
import jax
import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

import jaxddpm as jd
from jaxddpm import checkpoint, cli, config as config_lib, data
from jaxddpm.generate import load_workdir
from jaxddpm.pipeline import CONFIG_FILE, WEIGHTS_FILE


class CompileCounter:
    """Counts XLA compilations (JAX's backend-compile events) while active."""

    def __init__(self):
        self.count = 0
        jax.monitoring.register_event_duration_secs_listener(self._listen)

    def _listen(self, event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            self.count += 1


COMPILES = CompileCounter()


def test_from_workdir_reads_the_ema_variables_and_samples(tiny_run):
    pipe = jd.Pipeline.from_workdir(tiny_run)
    _, state = load_workdir(tiny_run)
    assert pipe.step == 4 and pipe.config.data.image_size == 8
    chex.assert_trees_all_equal(pipe.variables, {"params": state.ema_params, "batch_stats": state.batch_stats})
    assert isinstance(pipe.model, jd.SimpleUNet) and pipe.schedule.num_timesteps == 10

    before = COMPILES.count
    images = pipe.sample(4, seed=1)
    first_compiles = COMPILES.count - before
    assert first_compiles > 0  # the counter sees compilations
    assert images.dtype == np.uint8 and images.shape == (4, 8, 8, 1)
    before = COMPILES.count
    again = pipe.sample(4, seed=1)
    assert COMPILES.count == before, "a second call with the same arguments compiled something"
    np.testing.assert_array_equal(again, images)
    assert not np.array_equal(pipe.sample(4, seed=2), images) and COMPILES.count == before  # another seed: same program

    floats, labels = pipe.generate(4, seed=1)
    np.testing.assert_array_equal(data.to_uint8(floats), images)
    assert labels is None and floats.dtype == np.float32
    ddim = pipe.sample(5, seed=1, sampler="ddim", steps=3, eta=0.5, batch_size=2)  # batches of 2, last one cut
    assert ddim.shape == (5, 8, 8, 1)
    with pytest.raises(config_lib.ConfigError, match=r"sample.steps=11 must lie in \[1, 10\]"):
        pipe.sample(2, seed=0, sampler="ddim", steps=11)
    with pytest.raises(config_lib.ConfigError, match="need a class-conditional model"):
        pipe.sample(2, seed=0, label=3)


def test_export_and_from_pretrained_round_trip_bit_for_bit(tiny_run, tmp_path, capsys):
    out = str(tmp_path / "export")
    assert cli.main(["export", "--workdir", tiny_run, "--out", out]) == 0
    assert "(step 4)" in capsys.readouterr().out
    assert sorted(os.listdir(out)) == [CONFIG_FILE, WEIGHTS_FILE]
    tensors = load_file(os.path.join(out, WEIGHTS_FILE))  # plain safetensors, readable without jaxddpm
    assert "params/init_conv/kernel" in tensors and "batch_stats/down_blocks_0/bn1/mean" in tensors
    assert not any(k.startswith(("opt_state", "ema_params")) for k in tensors)

    original = jd.Pipeline.from_workdir(tiny_run)
    loaded = jd.Pipeline.from_pretrained(out)
    assert loaded.step == 4 and json.loads(config_lib.to_json(loaded.config)) == json.loads(config_lib.to_json(original.config))
    chex.assert_trees_all_equal(loaded.variables, original.variables)
    np.testing.assert_array_equal(loaded.sample(3, seed=5), original.sample(3, seed=5))

    # save_pretrained of the loaded pipeline writes the same tensors and metadata (safetensors
    # orders the metadata keys as it likes, so the bytes are not compared)
    again = loaded.save_pretrained(str(tmp_path / "again"))
    chex.assert_trees_all_equal(load_file(os.path.join(again, WEIGHTS_FILE)), tensors)
    with safe_open(os.path.join(out, WEIGHTS_FILE), "numpy") as a, safe_open(os.path.join(again, WEIGHTS_FILE), "numpy") as b:
        assert a.metadata() == b.metadata() == {"format": "jaxddpm-pipeline-1", "step": "4"}

    # never overwritten
    before = os.path.getmtime(os.path.join(out, WEIGHTS_FILE))
    assert cli.main(["export", "--workdir", tiny_run, "--out", out]) == 2
    assert capsys.readouterr().err == f"error: {os.path.join(out, CONFIG_FILE)} exists; choose another --out (exports are never overwritten)\n"
    with pytest.raises(FileExistsError):
        original.save_pretrained(out)
    assert os.path.getmtime(os.path.join(out, WEIGHTS_FILE)) == before


def test_from_pretrained_says_what_is_wrong(tiny_run, tmp_path):
    with pytest.raises(FileNotFoundError, match="is not an exported model: config.json is missing"):
        jd.Pipeline.from_pretrained(str(tmp_path))
    out = jd.Pipeline.from_workdir(tiny_run).save_pretrained(str(tmp_path / "export"))
    tensors = load_file(os.path.join(out, WEIGHTS_FILE))
    del tensors["params/final_conv/bias"]
    tensors["params/extra"] = np.zeros(2, np.float32)
    tensors["params/init_conv/kernel"] = tensors["params/init_conv/kernel"][..., :1]
    os.remove(os.path.join(out, WEIGHTS_FILE))
    save_file(tensors, os.path.join(out, WEIGHTS_FILE))
    with pytest.raises(ValueError, match=r"does not match its config.json: missing params/final_conv/bias \(1\); "
                                         r"unexpected params/extra \(1\); wrong shape or dtype params/init_conv/kernel \(1\)"):
        jd.Pipeline.from_pretrained(out)


def test_from_workdir_without_a_run(tmp_path):
    with pytest.raises(checkpoint.CheckpointError, match="does not exist"):
        jd.Pipeline.from_workdir(str(tmp_path / "nope"))
    with pytest.raises(checkpoint.CheckpointError, match="holds no training run"):
        jd.Pipeline.from_workdir(str(tmp_path))


def test_progress_on_a_terminal_counts_every_reverse_step_and_changes_nothing(tiny_run, monkeypatch, capsys):
    pipe = jd.Pipeline.from_workdir(tiny_run)
    plain, _ = pipe.generate(3, seed=4, batch_size=2)
    capsys.readouterr()
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    shown, _ = pipe.generate(3, seed=4, batch_size=2, progress=True)
    np.testing.assert_array_equal(shown, plain)
    assert "20/20" in capsys.readouterr().err  # 2 batches of the 10-step chain
