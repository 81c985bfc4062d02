"""End-to-end runs of the training program on tiny configs, one per data source."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from jaxddpm import checkpoint, cli
from jaxddpm.generate import load_workdir
from jaxddpm.trainer import train_and_evaluate
from tests.helpers import tiny_argv, tiny_config

EXPECTED_FILES = {"config.json", "metrics.jsonl", "forward_diffusion.png", "loss_curve.png", "checkpoints", "samples", "tensorboard"}


def read_events(logdir):
    """{(tag, step): scalar value or (height, width) of an image} from the TensorBoard event
    files in ``logdir``, read with TensorFlow's record reader (which checks every record's CRC)."""
    import tensorflow as tf
    from tensorboardX.proto import event_pb2

    out = {}
    for name in os.listdir(logdir):
        for record in tf.data.TFRecordDataset(os.path.join(logdir, name)):
            event = event_pb2.Event.FromString(record.numpy())
            for v in event.summary.value:
                out[(v.tag, event.step)] = (v.image.height, v.image.width) if v.HasField("image") else v.simple_value
    return out


def assert_run_outputs(workdir, steps=4, image_shape=(8, 8)):
    assert EXPECTED_FILES <= set(os.listdir(workdir))
    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    assert [r["step"] for r in rows] == list(range(2, steps + 1, 2))
    assert {"loss", "grad_norm", "steps_per_sec", "images_per_sec"} <= set(rows[0])
    assert all(np.isfinite(r["loss"]) for r in rows)
    assert sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")) if s.isdigit())[-1] == steps
    grid = Image.open(os.path.join(workdir, "samples", "final.png"))
    assert grid.size[0] > 2 * image_shape[0]
    events = read_events(os.path.join(workdir, "tensorboard"))
    assert events[("train/loss", steps)] == pytest.approx(rows[-1]["loss"]) and ("train/images_per_sec", steps) in events
    scale = max(1, 128 // image_shape[0])  # the PNG is upscaled, TensorBoard gets the grid as sampled
    assert events[("samples", steps)] == (grid.size[1] // scale, grid.size[0] // scale)


def test_train_on_bundled_digits(tmp_path):
    workdir = str(tmp_path / "run")
    state = train_and_evaluate(tiny_config(), workdir)
    assert int(state.step) == 4
    assert_run_outputs(workdir)
    saved = json.load(open(os.path.join(workdir, "config.json")))
    assert saved["model"]["channels"] == [4, 8] and saved["data"]["source"] == "digits"


def test_several_steps_per_call_train_like_one_step_per_call(tmp_path):
    """train.steps_per_call > 1 runs the steps as a loop on the device, in calls that end
    at checkpoints and samples; the trajectory and the logs are those of one step per call."""
    states, rows = {}, {}
    for per_call in (1, 3):
        workdir = str(tmp_path / f"run{per_call}")
        config = tiny_config(train__num_steps=7, train__log_every_steps=1, checkpoint__every_steps=5,
                             sample__every_steps=4, train__steps_per_call=per_call)
        states[per_call] = train_and_evaluate(config, workdir)
        rows[per_call] = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
        saved = sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")) if s.isdigit())
        assert saved[-2:] == [5, 7], saved
        assert {"step_0000004.png", "final.png"} <= set(os.listdir(os.path.join(workdir, "samples")))
    assert int(states[3].step) == 7
    assert [r["step"] for r in rows[3]] == list(range(1, 8))
    np.testing.assert_allclose([r["loss"] for r in rows[3]], [r["loss"] for r in rows[1]], rtol=1e-4)
    for a, b in zip(jax.tree.leaves(states[3].params), jax.tree.leaves(states[1].params)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_train_on_an_image_folder(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(10):
        size = (int(rng.integers(9, 40)), int(rng.integers(9, 40)))
        mode = ["RGB", "RGBA", "L"][i % 3]
        Image.fromarray(rng.integers(0, 255, size[::-1] + ((len(mode),) if mode != "L" else ()), dtype=np.uint8), mode).save(folder / f"{i}.png")
    (folder / "corrupt.jpg").write_bytes(b"garbage")
    config = tiny_config(data__source="folder", data__holdout=0, data__path=str(folder), data__channels=3, data__random_flip=True)
    workdir = str(tmp_path / "run")
    train_and_evaluate(config, workdir)
    assert_run_outputs(workdir)


def test_flowers_config_under_tfds_mock_data(tmp_path):
    config = tiny_config("flowers64", data__cache_dir=str(tmp_path / "cache"), train__num_epochs=0)
    assert config.data.source == "tfds" and config.data.name == "oxford_flowers102"
    workdir = str(tmp_path / "run")
    with tfds.testing.mock_data(num_examples=4):
        train_and_evaluate(config, workdir)
    assert_run_outputs(workdir)


def test_resume_continues_with_identical_state(tmp_path):
    straight = train_and_evaluate(tiny_config(train__num_steps=6), str(tmp_path / "straight"))
    workdir = str(tmp_path / "resumed")
    first = train_and_evaluate(tiny_config(train__num_steps=4), workdir)
    assert int(first.step) == 4
    resumed = train_and_evaluate(tiny_config(train__num_steps=6), workdir)
    assert int(resumed.step) == 6
    for a, b in zip(jax.tree.leaves(straight), jax.tree.leaves(resumed)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    rows = [json.loads(line)["step"] for line in open(os.path.join(workdir, "metrics.jsonl"))]
    assert rows == [2, 4, 6]


def test_sample_writes_a_grid_and_npz(tmp_path, capsys):
    workdir = str(tmp_path / "run")
    train_and_evaluate(tiny_config(), workdir)
    out = str(tmp_path / "s.png")
    assert cli.main(["sample", "--workdir", workdir, "--num", "6", "--seed", "3", "--out", out]) == 0
    samples = np.load(str(tmp_path / "s.npz"))["samples"]
    assert samples.shape == (6, 8, 8, 1) and np.all(np.isfinite(samples))
    assert Image.open(out).size[0] > 0
    # Never overwrite: the same --out again is refused.
    assert cli.main(["sample", "--workdir", workdir, "--num", "6", "--out", out]) == 2
    assert "exists" in capsys.readouterr().err


def test_incompatible_workdir_is_refused_and_untouched(tmp_path, capsys):
    workdir = str(tmp_path / "run")
    train_and_evaluate(tiny_config(), workdir)
    before = {p: os.path.getmtime(os.path.join(r, p)) for r, _, ps in os.walk(workdir) for p in ps}
    code = cli.main(["train", "--workdir", workdir] + tiny_argv(**{"model.channels": "(4, 16)"}))
    assert code == 2
    err = capsys.readouterr().err
    assert "holds checkpoints of an incompatible config (model.channels [4, 8] -> [4, 16])" in err
    after = {p: os.path.getmtime(os.path.join(r, p)) for r, _, ps in os.walk(workdir) for p in ps}
    assert before == after


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--config", "nope"], "unknown config 'nope'"),
        (["--config.train.nope=1"], "unknown config key 'train.nope'"),
        (["--config.train.batch_size=abc"], "is not a valid int"),
        (["--config.diffusion.num_timesteps=0"], "num_timesteps must be a positive integer"),
        (["--config.diffusion.beta_end=2"], "betas must lie in (0, 1)"),
        (["--config.data.image_size=17"], "cannot be halved"),
        (["--config.train.batch_size=-1"], "train.batch_size must be positive"),
        (["--config.data.source=folder", "--config.data.path=/nonexistent/dir"], "is not a readable directory"),
        (["--config.train.batch_size=5000"], "exceeds the dataset's 1500 images"),
        (["--oops"], "unrecognised argument '--oops'"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, capsys, argv, message):
    workdir = tmp_path / "run"
    code = cli.main(["train", "--workdir", str(workdir)] + argv)
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and err.count("\n") == 1 and err.startswith("error: ")
    assert not workdir.exists()


def test_empty_folder_is_a_usage_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code = cli.main(["train", "--workdir", str(tmp_path / "run"), "--config.data.source=folder", f"--config.data.path={tmp_path / 'empty'}"])
    assert code == 2 and "holds no readable images" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("setup", ["missing", "empty"])
def test_sample_on_missing_or_empty_workdir(tmp_path, capsys, setup):
    workdir = tmp_path / "w"
    if setup == "empty":
        workdir.mkdir()
    assert cli.main(["sample", "--workdir", str(workdir)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: workdir") and err.count("\n") == 1


def test_cli_subprocess_prints_no_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "jaxddpm.cli", "train", "--workdir", str(tmp_path / "w"), "--config.train.num_steps=-3"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "train.num_steps" in proc.stderr


def test_load_workdir_restores_latest(tmp_path):
    workdir = str(tmp_path / "run")
    train_and_evaluate(tiny_config(), workdir)
    config, state = load_workdir(workdir)
    assert int(state.step) == 4 and config.data.image_size == 8
    assert checkpoint.has_checkpoints(workdir)
