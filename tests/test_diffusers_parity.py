"""jaxddpm against diffusers: a random UNet2DModel in google/ddpm-cifar10-32's layout
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
from tests.helpers import CIFAR10_UNET, TINY_UNET  # noqa: E402

pytestmark = pytest.mark.torch


# google/ddpm-cifar10-32's layout (its block types, two residual layers per block, attention,
# padding, time embedding and scheduler) on two levels instead of four, at a quarter of its
# width and half its image size: the same code paths at a test's cost.
NARROW_CIFAR10 = dict(CIFAR10_UNET, block_out_channels=[32, 64], down_block_types=["DownBlock2D", "AttnDownBlock2D"],
                      up_block_types=["AttnUpBlock2D", "UpBlock2D"], sample_size=16)
CIFAR10_SCHEDULER = diffusers_checks.CONFIGS["cifar10-32"][1]


def _converted(root, unet_config):
    """(unet, scheduler config, root) with a random UNet2DModel saved in ``root/src`` and
    converted by ``jaxddpm convert --from-diffusers`` into ``root/jax``."""
    unet = diffusers_checks.random_unet(unet_config, seed=0)
    diffusers_checks.save_diffusers(unet, CIFAR10_SCHEDULER, str(root / "src"))
    assert cli.main(["convert", "--from-diffusers", str(root / "src"), "--out", str(root / "jax")]) == 0
    return unet, CIFAR10_SCHEDULER, root


@pytest.fixture(scope="module")
def cifar10(tmp_path_factory):
    """The cifar10 layout at narrow width, converted."""
    return _converted(tmp_path_factory.mktemp("diffusers"), NARROW_CIFAR10)


def _assert_every_check_passes(unet, root, batch):
    pipe = Pipeline.from_pretrained(str(root / "jax"))
    assert pipe.config.sample.variance == "fixed_large" and pipe.config.sample.clip_x0
    setup = diffusers_checks.build("cifar10-32", batch=batch, unet=unet, pipe=pipe,
                                   configs=(dict(unet.config), CIFAR10_SCHEDULER))
    results = [r for name, fn in diffusers_checks.CHECKS.items() for r in fn(setup)]
    failed = [r for r in results if not r.passed]
    assert not failed, failed
    names = [r.name for r in results]
    assert {"forward float32", "forward float64", "scheduler alphas_cumprod", "10-step chain (fixed_large, clip)"} <= set(names)
    assert sum(n.startswith("step fixed_small") for n in names) == sum(n.startswith("step fixed_large") for n in names) == 4


def test_the_converted_cifar10_layout_matches_diffusers(cifar10):
    unet, _, root = cifar10
    _assert_every_check_passes(unet, root, batch=2)


@pytest.mark.full
def test_the_converted_cifar10_model_matches_diffusers(tmp_path):
    """google/ddpm-cifar10-32's configuration at full size (35.7M parameters); what
    ``python -m parity.diffusers_checks --config cifar10-32`` reports."""
    unet, _, root = _converted(tmp_path, diffusers_checks.CONFIGS["cifar10-32"][0])
    _assert_every_check_passes(unet, root, batch=1)


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
    assert json.loads((tmp_path / "back" / "unet" / "config.json").read_text())["block_out_channels"] == [32, 64]
    # Outputs are never overwritten.
    capsys.readouterr()
    assert cli.main(["convert", "--to-diffusers", str(root / "jax"), "--out", str(tmp_path / "back")]) == 2
    assert capsys.readouterr().err.startswith(f"error: --out {tmp_path / 'back'} exists")


def test_the_options_beyond_the_cifar10_config_match_diffusers():
    """Multi-head attention, [cos, sin] embeddings with freq_shift 0, downsampling padded on
    every side, a middle-block scale, GroupNorm epsilon 1e-5 and the time embedding as a
    scale and shift of the second GroupNorm, in float32 and float64."""
    configs = (dict(TINY_UNET), dict(diffusers_checks.CONFIGS["cifar10-32"][1]))
    setup = diffusers_checks.build("tiny", batch=2, configs=configs)
    m = setup.pipe.model
    assert (m.attention_head_dim, m.time_flip_sin_to_cos, m.time_freq_shift, m.downsample_padding, m.mid_scale) == (8, True, 0.0, "both", 2.0)
    assert m.time_scale_shift
    results = diffusers_checks.check_forward(setup) + diffusers_checks.check_forward_float64(setup)
    assert all(r.passed for r in results), results
    assert np.isfinite([r.max_abs_diff for r in results]).all()
