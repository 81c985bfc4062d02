import re

import pytest

from jaxddpm import config as config_lib
from jaxddpm.config import ConfigError


def test_shipped_configs_load_and_validate():
    assert {"quickstart", "flowers64"} <= set(config_lib.available_configs())
    for name in config_lib.available_configs():
        config_lib.validate(config_lib.load_config(name))


def test_flowers64_is_the_articles_run():
    c = config_lib.load_config("flowers64")
    assert c.data.source == "tfds" and c.data.name == "oxford_flowers102"
    assert c.data.splits == "train+validation+test" and c.data.image_size == 64 and c.data.random_flip
    assert tuple(c.model.channels) == (64, 128, 256, 512, 1024)
    assert (c.diffusion.schedule, c.diffusion.num_timesteps, c.diffusion.beta_start, c.diffusion.beta_end) == ("linear", 300, 1e-4, 0.02)
    assert (c.train.learning_rate, c.train.batch_size, c.train.num_epochs) == (1e-3, 128, 300)


def test_config_from_a_file(tmp_path):
    path = tmp_path / "mine.py"
    path.write_text("from jaxddpm.configs import quickstart\n\ndef get_config():\n    c = quickstart.get_config()\n    c.train.num_steps = 7\n    return c\n")
    assert config_lib.load_config(str(path)).train.num_steps == 7


def test_overrides_parse_to_the_fields_type():
    c = config_lib.apply_overrides(
        config_lib.load_config("quickstart"),
        {"train.num_steps": "12", "train.learning_rate": "2e-4", "data.random_flip": "true", "model.channels": "(8, 16, 32)", "data.path": "x"},
    )
    assert c.train.num_steps == 12 and c.train.learning_rate == 2e-4 and c.data.random_flip is True
    assert c.model.channels == (8, 16, 32) and c.data.path == "x"


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"train.nope": "1"}, "unknown config key 'train.nope'; allowed here: train.adam_betas, train.batch_size"),
        ({"nope.x": "1"}, "unknown config key 'nope.x'; sections:"),
        ({"train.batch_size": "big"}, "--config.train.batch_size='big' is not a valid int"),
        ({"data.random_flip": "maybe"}, "is not a valid bool"),
        ({"model.channels": "(8, 'a')"}, "is not a valid tuple"),
    ],
)
def test_bad_overrides(overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        config_lib.apply_overrides(config_lib.load_config("quickstart"), overrides)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"diffusion.num_timesteps": "0"}, "diffusion: num_timesteps must be a positive integer"),
        ({"diffusion.beta_end": "1.5"}, "diffusion: betas must lie in (0, 1)"),
        ({"diffusion.beta_start": "0.03"}, "diffusion: betas must not decrease"),
        ({"data.image_size": "9"}, "data.image_size=9 cannot be halved 1 time by model.channel_mult=(1, 2); use a multiple of 2"),
        ({"data.image_size": "18", "model.channel_mult": "(1, 2, 2)"}, "data.image_size=18 cannot be halved 2 times"),
        ({"train.batch_size": "0"}, "train.batch_size must be positive"),
        ({"train.adam_betas": "(0.9, 1.0)"}, "train.adam_betas must be two values in [0, 1), got (0.9, 1.0)"),
        ({"train.adam_betas": "(0.9,)"}, "train.adam_betas must be two values in [0, 1), got (0.9,)"),
        ({"train.timestep_sampling": "sobol"}, "train.timestep_sampling='sobol' is unknown; allowed: uniform, stratified"),
        ({"data.source": "ftp"}, "data.source='ftp' is unknown; allowed: tfds, digits, folder"),
        ({"data.source": "folder"}, "data.path must name an image folder"),
        ({"model.dtype": "float16"}, "model.dtype='float16' is unknown"),
        ({"model.conv_impl": "cudnn"}, "model.conv_impl='cudnn' is unknown; allowed: auto, xla, cpu"),
    ],
)
def test_invalid_values(overrides, message):
    c = config_lib.apply_overrides(config_lib.load_config("quickstart"), overrides)
    with pytest.raises(ConfigError, match=re.escape(message)):
        config_lib.validate(c)


def test_model_fields_reach_the_model():
    from jaxddpm.factory import build_model
    from jaxddpm.kernels import ConvPolicy

    c = config_lib.apply_overrides(config_lib.load_config("flowers64"), {"model.conv_impl": "xla", "model.upsample_impl": "subpixel"})
    config_lib.validate(c)
    model = build_model(c)
    assert model.conv_policy == ConvPolicy(impl="xla", upsample="subpixel")
    assert build_model(config_lib.load_config("flowers64")).conv_policy == ConvPolicy()


def test_unknown_config_name():
    with pytest.raises(ConfigError, match="unknown config 'nope'; allowed: flowers64, quickstart"):
        config_lib.load_config("nope")


def test_json_round_trip_and_incompatibilities():
    c = config_lib.load_config("quickstart")
    back = config_lib.from_json(config_lib.to_json(c))
    assert config_lib.incompatibilities(back, c) == []
    other = config_lib.apply_overrides(c, {"model.channels": "(16, 32, 64)", "train.num_steps": "5"})
    assert config_lib.incompatibilities(back, other) == ["model.channels [32, 64, 128] -> [16, 32, 64]"]
