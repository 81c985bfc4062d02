"""`jaxddpm.evaluate` and `jaxddpm eval` end to end on a briefly trained run."""

import json
import os

import numpy as np
import pytest

from jaxddpm import cli
from jaxddpm.evaluate import EvalError, evaluate
from jaxddpm.trainer import train_and_evaluate
from tests.helpers import tiny_config


def stand_in_features(images_u8):
    """A small fixed feature network: 4x4 average pools and their squares."""
    x = images_u8.astype(np.float32) / 255.0
    n, h, w, c = x.shape
    pooled = x.reshape(n, 4, h // 4, 4, w // 4, c).mean(axis=(2, 4)).reshape(n, -1)
    return np.concatenate([pooled, pooled**2], axis=1)


@pytest.fixture(scope="module")
def trained_workdir(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("eval") / "run")
    config = tiny_config(data__image_size="16", data__holdout="200", data__cache_dir=str(tmp_path_factory.mktemp("cache")), train__num_steps="30")
    train_and_evaluate(config, workdir)
    return workdir


@pytest.mark.slow
def test_evaluate_end_to_end_with_a_stand_in_feature_network(trained_workdir, monkeypatch):
    monkeypatch.setattr("jaxddpm.classifier.TRAIN_STEPS", 60)  # a short classifier run
    results = evaluate(trained_workdir, ("bpd", "quality", "fid"), num_samples=40, batch_size=20, feature_fn=stand_in_features,
                       feature_name="standin", num_seeds=2)
    bpd = results["bpd"]
    assert bpd["num_images"] == 200 and len(bpd["timestep_bpd"]) == 10 and np.isfinite(bpd["bpd"])
    assert bpd["bpd"] == pytest.approx(bpd["prior_bpd"] + sum(bpd["timestep_bpd"]), rel=1e-5)
    quality = results["quality"]
    assert quality["real"]["num_classes"] == 10 and 0 <= quality["real"]["precision"] <= 1 and quality["real"]["k"] == 3
    assert 0 <= quality["classifier_accuracy_on_held_out"] <= 1 and "1597 training images" in quality["classifier"]
    for seed, one in enumerate(quality["per_seed"]):
        samples = one["samples"]
        # 40 samples against 200 held-out images: one group of 40 scored.
        assert samples["groups"] == 1 and samples["group_size"] == 40 and sum(samples["class_counts"]) <= 40
        assert 0 <= samples["precision"] <= 1 and 0 <= samples["recall"] <= 1 and samples["frechet_distance"] > 0
        assert one["vs_real"]["precision"] == pytest.approx(samples["precision"] / quality["real"]["precision"])
        assert 0 <= one["memorisation"]["share_closer_than_held_out"] <= 1
    spread = quality["spread"]["samples.frechet_distance"]
    assert spread["values"] == [one["samples"]["frechet_distance"] for one in quality["per_seed"]]
    assert spread["values"][0] != spread["values"][1] and spread["mean"] == pytest.approx(np.mean(spread["values"]))
    fid = results["fid"]["spread"]["fid"]
    assert len(fid["values"]) == 2 and min(fid["values"]) >= 0
    for name in ("bpd", "quality", "fid"):
        saved = json.load(open(results[name]["path"]))
        assert saved["metric"] == name and saved["step"] == 30
    assert results["quality"]["path"].endswith("quality_step30_ancestral_seeds0-1.json")
    assert results["quality"]["sampler"] == results["fid"]["sampler"] == dict(
        sampler="ancestral", steps=50, eta=0.0, clip_x0=False, variance="fixed_small", guidance=1.0, label=-1)
    # The trained model's bound is lower than the freshly initialised model's.
    fresh = evaluate(trained_workdir, ("bpd",), fresh=True)["bpd"]
    assert fresh["step"] == 0 and fresh["bpd"] > bpd["bpd"]
    assert os.path.exists(os.path.join(trained_workdir, "eval", "bpd_step0_fresh_seed0.json"))


def test_eval_command_line_errors(trained_workdir, tmp_path, capsys):
    assert cli.main(["eval", "--workdir", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["eval", "--workdir", trained_workdir, "--metric", "is"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: argument --metric: invalid choice: 'is'") and err.count("\n") == 1
    assert cli.main(["eval", "--workdir", trained_workdir, "--sampler", "ddim", "--steps", "99"]) == 2
    assert capsys.readouterr().err == "error: --steps=99 must lie in [1, 10] (diffusion.num_timesteps)\n"
    with pytest.raises(EvalError, match="FID needs PyTorch and pytorch-fid|Inception weights were not found"):
        evaluate(trained_workdir, ("fid",), num_samples=4, batch_size=4)
