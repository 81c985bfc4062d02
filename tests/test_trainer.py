"""The training program (`train_and_evaluate`) end to end on tiny configs, one run per data
source, its resumption, and its sampler."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

import jaxddpm as jd
from jaxddpm.sampling import make_sampler
from jaxddpm.trainer import train_and_evaluate
from tests.helpers import tiny_config

EXPECTED_FILES = {"config.json", "metrics.jsonl", "forward_diffusion.png", "loss_curve.png", "checkpoints", "samples", "tensorboard"}


def read_events(logdir):
    """{(tag, step): scalar value or (height, width) of an image} from the TensorBoard event
    files in ``logdir``, read with TensorFlow's record reader (which checks every record's CRC)."""
    import tensorflow as tf
    from tensorflow.core.util import event_pb2

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


def test_train_on_bundled_digits(tiny_run):
    workdir = tiny_run  # trained by tiny_config() to step 4 (tests/conftest.py)
    assert_run_outputs(workdir)
    saved = json.load(open(os.path.join(workdir, "config.json")))
    assert saved["model"]["channels"] == [4, 8] and saved["data"]["source"] == "digits"


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_flowers_config_under_tfds_mock_data(tmp_path):
    config = tiny_config("flowers64", data__cache_dir=str(tmp_path / "cache"), train__num_epochs=0)
    assert config.data.source == "tfds" and config.data.name == "oxford_flowers102"
    workdir = str(tmp_path / "run")
    with tfds.testing.mock_data(num_examples=4):
        train_and_evaluate(config, workdir)
    assert_run_outputs(workdir)


def test_resume_continues_with_identical_state(tiny_run, tiny_run_6_steps, tmp_path):
    straight = tiny_run_6_steps
    workdir = str(tmp_path / "resumed")
    shutil.copytree(tiny_run, workdir)  # a finished 4-step run
    resumed = train_and_evaluate(tiny_config(train__num_steps=6), workdir)
    assert int(resumed.step) == 6
    for a, b in zip(jax.tree.leaves(straight), jax.tree.leaves(resumed)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    rows = [json.loads(line)["step"] for line in open(os.path.join(workdir, "metrics.jsonl"))]
    assert rows == [2, 4, 6]


SHAPE = (3, 8, 8, 2)


@pytest.mark.slow
def test_guidance_zero_and_one_are_the_unconditional_and_conditional_predictions():
    schedule = jd.make_schedule("linear", 40, 1e-3, 0.2)
    model = jd.SimpleUNet(channels=(4, 8), out_channels=2, time_emb_dim=8, num_classes=3)
    zeros = jnp.zeros((1,), jnp.int32)
    variables = jax.jit(lambda k: model.init(k, jnp.zeros((1, 8, 8, 2)), zeros, False, zeros))(jax.random.key(0))
    # Make the label embedding matter: random, not small, values.
    emb = variables["params"]["label_emb"]["embedding"]
    variables["params"]["label_emb"]["embedding"] = 3.0 * jax.random.normal(jax.random.key(1), emb.shape)
    labels = jnp.array([0, 2, 1])
    key = jax.random.key(4)
    uncond = jd.sample(schedule, lambda x, t: model.apply(variables, x, t, False), key, SHAPE)
    cond = jd.sample(schedule, lambda x, t: model.apply(variables, x, t, False, labels), key, SHAPE)
    assert not np.allclose(uncond, cond, atol=1e-3)
    g0 = make_sampler(model, schedule, SHAPE, guidance=0.0)(variables, key, labels)
    g1 = make_sampler(model, schedule, SHAPE, guidance=1.0)(variables, key, labels)
    g3 = make_sampler(model, schedule, SHAPE, guidance=3.0)(variables, key, labels)
    np.testing.assert_allclose(g0, uncond, atol=1e-4)
    np.testing.assert_allclose(g1, cond, atol=1e-4)
    assert not np.allclose(g3, cond, atol=1e-3)
