"""jaxddpm against diffusers: a random UNet2DModel in google/ddpm-cifar10-32's configuration
converted with ``jaxddpm convert --from-diffusers`` computes what diffusers computes (network,
scheduler tables, reverse steps with both variances, a 10-step chain), and converts back to a
folder that diffusers loads strictly."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the diffusers parity checks need PyTorch")
diffusers = pytest.importorskip("diffusers", reason="the diffusers parity checks need diffusers")

from jaxddpm import Pipeline, cli  # noqa: E402
from parity import diffusers_checks  # noqa: E402
from tests.helpers import TINY_UNET  # noqa: E402

pytestmark = pytest.mark.torch


@pytest.fixture(scope="module")
def cifar10(tmp_path_factory):
    """(unet, scheduler config, diffusers folder, converted export folder)."""
    root = tmp_path_factory.mktemp("diffusers")
    unet_config, scheduler_config = diffusers_checks.CONFIGS["cifar10-32"]
    unet = diffusers_checks.random_unet(unet_config, seed=0)
    diffusers_checks.save_diffusers(unet, scheduler_config, str(root / "src"))
    assert cli.main(["convert", "--from-diffusers", str(root / "src"), "--out", str(root / "jax")]) == 0
    return unet, scheduler_config, root


@pytest.mark.slow
def test_the_converted_cifar10_model_matches_diffusers(cifar10):
    unet, scheduler_config, root = cifar10
    pipe = Pipeline.from_pretrained(str(root / "jax"))
    assert pipe.config.sample.variance == "fixed_large" and pipe.config.sample.clip_x0
    setup = diffusers_checks.build("cifar10-32", batch=1, unet=unet, pipe=pipe)
    results = [r for name, fn in diffusers_checks.CHECKS.items() for r in fn(setup)]
    failed = [r for r in results if not r.passed]
    assert not failed, failed
    names = [r.name for r in results]
    assert {"forward float32", "forward float64", "scheduler alphas_cumprod", "10-step chain (fixed_large, clip)"} <= set(names)
    assert sum(n.startswith("step fixed_small") for n in names) == sum(n.startswith("step fixed_large") for n in names) == 4


def test_the_reverse_conversion_loads_strictly_into_diffusers(cifar10, tmp_path, capsys):
    unet, scheduler_config, root = cifar10
    assert cli.main(["convert", "--to-diffusers", str(root / "jax"), "--out", str(tmp_path / "back")]) == 0
    loaded, info = diffusers.UNet2DModel.from_pretrained(str(tmp_path / "back"), subfolder="unet", output_loading_info=True)
    assert info["missing_keys"] == [] and info["unexpected_keys"] == [] and info["mismatched_keys"] == []
    original, back = unet.state_dict(), loaded.state_dict()
    assert sorted(original) == sorted(back)
    assert all(torch.equal(original[k], back[k]) for k in original)
    pipeline = diffusers.DDPMPipeline.from_pretrained(str(tmp_path / "back"))
    for field, value in scheduler_config.items():
        assert pipeline.scheduler.config[field] == value, field
    assert json.loads((tmp_path / "back" / "unet" / "config.json").read_text())["block_out_channels"] == [128, 256, 256, 256]
    # Outputs are never overwritten.
    capsys.readouterr()
    assert cli.main(["convert", "--to-diffusers", str(root / "jax"), "--out", str(tmp_path / "back")]) == 2
    assert capsys.readouterr().err.startswith(f"error: --out {tmp_path / 'back'} exists")


def test_the_options_beyond_the_cifar10_config_match_diffusers():
    """Multi-head attention, [cos, sin] embeddings with freq_shift 0, downsampling padded on
    every side, a middle-block scale and GroupNorm epsilon 1e-5, in float32 and float64."""
    configs = (dict(TINY_UNET), dict(diffusers_checks.CONFIGS["cifar10-32"][1]))
    setup = diffusers_checks.build("tiny", batch=2, configs=configs)
    m = setup.pipe.model
    assert (m.attention_head_dim, m.time_flip_sin_to_cos, m.time_freq_shift, m.downsample_padding, m.mid_scale) == (8, True, 0.0, "both", 2.0)
    results = diffusers_checks.check_forward(setup) + diffusers_checks.check_forward_float64(setup)
    assert all(r.passed for r in results), results
    assert np.isfinite([r.max_abs_diff for r in results]).all()
