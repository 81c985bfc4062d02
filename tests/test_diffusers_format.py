"""`parity.diffusers_format` without PyTorch or diffusers: config mapping both ways, the
weight layout round trip, and the one-line refusals."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxddpm import Pipeline
from parity import diffusers_format as df
from tests.helpers import CIFAR10_SCHEDULER, CIFAR10_UNET, TINY_UNET, tiny_ddpm_pipeline

def test_the_cifar10_config_maps_to_ddpm_unet_options_and_back():
    config = df.config_from_diffusers(CIFAR10_UNET, CIFAR10_SCHEDULER)
    m, d, s = config.model, config.diffusion, config.sample
    assert (m.name, m.base_channels, tuple(m.channel_mult), m.num_res_blocks) == ("ddpm_unet", 128, (1, 2, 2, 2), 2)
    assert tuple(m.attention_resolutions) == (16,) and m.attention_head_dim == 0 and m.qkv_layout == "separate"
    assert (m.time_flip_sin_to_cos, m.time_freq_shift, m.downsample_padding, m.norm_eps) == (False, 1.0, "after", 1e-6)
    assert (d.schedule, d.num_timesteps, d.beta_start, d.beta_end, d.prediction) == ("linear", 1000, 1e-4, 0.02, "eps")
    assert (s.sampler, s.variance, s.clip_x0) == ("ancestral", "fixed_large", True)
    unet, scheduler = df.diffusers_configs(config)
    for field, value in CIFAR10_UNET.items():
        if not field.startswith("_"):
            assert unet[field] == value, field
    for field, value in CIFAR10_SCHEDULER.items():
        if not field.startswith("_"):
            assert scheduler[field] == value, field
    # Without a scheduler config: DDPMScheduler's defaults.
    assert df.config_from_diffusers(CIFAR10_UNET).sample.variance == "fixed_small"
    # A model diffusers cannot express is refused in one line.
    config.model.upsample_conv = False
    with pytest.raises(df.DiffusersFormatError, match=r"^model.upsample_conv=False \(upsampling without a convolution\) has no UNet2DModel counterpart; allowed: True$"):
        df.diffusers_configs(config)


@pytest.mark.parametrize("change, message", [
    ({"resnet_time_scale_shift": "spatial"}, "UNet2DModel resnet_time_scale_shift='spatial' is not supported; allowed: 'default', 'scale_shift'"),
    ({"resnet_time_scale_shift": "scale_shift"}, "resnet_time_scale_shift='scale_shift' without attn_norm_num_groups=32"),
    ({"up_block_types": ["UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D"]}, "up_block_types must mirror down_block_types"),
    ({"downsample_padding": 2}, "downsample_padding=2 is not supported; allowed: 0, 1"),
    ({"block_out_channels": [128, 192, 256, 256]}, "block_out_channels=[128, 192, 256, 256] are not supported; allowed: multiples of the first"),
    ({"cross_attention_dim": 768}, "UNet2DModel field cross_attention_dim is not supported by jaxddpm's DDPMUNet"),
])
def test_configs_the_model_cannot_express_are_refused_in_one_line(change, message):
    with pytest.raises(df.DiffusersFormatError) as info:
        df.config_from_diffusers(dict(CIFAR10_UNET, **change), CIFAR10_SCHEDULER)
    assert str(info.value).startswith(message) and "\n" not in str(info.value)
    with pytest.raises(df.DiffusersFormatError, match="^scheduler variance_type='learned_range' is not supported; allowed: fixed_small, fixed_large$"):
        df.config_from_diffusers(CIFAR10_UNET, dict(CIFAR10_SCHEDULER, variance_type="learned_range"))


def test_weights_round_trip_through_diffusers_files_for_both_qkv_layouts(tmp_path):
    fused, separate = tiny_ddpm_pipeline("fused"), tiny_ddpm_pipeline("separate")
    x, t = jax.random.normal(jax.random.key(2), (2, 8, 8, 3)), jnp.array([3, 900])
    # The same weights in the fused layout compute the same function.
    fused_vars = df.variables_from_state_dict(df.state_dict_from_variables(separate.variables, separate.config), fused.config)
    np.testing.assert_allclose(fused.model.apply(fused_vars, x, t, False), separate.model.apply(separate.variables, x, t, False),
                               rtol=1e-5, atol=1e-5)
    state = df.state_dict_from_variables(fused.variables, fused.config)
    assert "mid_block.attentions.0.to_q.weight" in state and "down_blocks.0.downsamplers.0.conv.weight" in state
    assert state["up_blocks.1.resnets.0.conv_shortcut.weight"].shape == (16, 48, 1, 1)  # OIHW, input 32 + skip 16
    df.export_diffusers(fused, str(tmp_path / "hf"))
    assert sorted(p.name for p in (tmp_path / "hf").iterdir()) == ["model_index.json", "scheduler", "unet"]
    with pytest.raises(FileExistsError, match="never overwritten"):
        df.export_diffusers(fused, str(tmp_path / "hf"))
    df.import_diffusers(str(tmp_path / "hf"), str(tmp_path / "back"))
    back = Pipeline.from_pretrained(str(tmp_path / "back"))
    assert back.config.model.qkv_layout == "separate" and back.config.sample.variance == "fixed_large"
    # jaxddpm sample --model: an exported model instead of a workdir.
    from jaxddpm import cli

    png = tmp_path / "s.png"
    assert cli.main(["sample", "--model", str(tmp_path / "back"), "--num", "2", "--sampler", "ddim", "--steps", "2", "--out", str(png)]) == 0
    assert png.stat().st_size > 0 and np.load(tmp_path / "s.npz")["samples"].shape == (2, 8, 8, 3)
    assert cli.main(["sample", "--model", str(tmp_path / "nothing"), "--num", "2"]) == 2
    expected = df.variables_from_state_dict(state, separate.config)
    assert jax.tree.all(jax.tree.map(lambda a, b: bool((np.asarray(a) == np.asarray(b)).all()), back.variables["params"], expected["params"]))
    # A tensor missing from the folder is named.
    from safetensors.numpy import load_file, save_file

    weights = tmp_path / "hf" / "unet" / "diffusion_pytorch_model.safetensors"
    tensors = load_file(weights)
    del tensors["conv_in.bias"]
    save_file(tensors, weights)
    with pytest.raises(df.DiffusersFormatError, match=r"^missing tensors for this config: conv_in.bias \(1\)$"):
        df.import_diffusers(str(tmp_path / "hf"), str(tmp_path / "back2"))
    (tmp_path / "hf" / "unet" / "config.json").write_text(json.dumps(dict(TINY_UNET, act_fn="gelu")))
    with pytest.raises(df.DiffusersFormatError, match="act_fn='gelu' is not supported"):
        df.import_diffusers(str(tmp_path / "hf"), str(tmp_path / "back3"))
    assert not (tmp_path / "back2").exists() and not (tmp_path / "back3").exists()
