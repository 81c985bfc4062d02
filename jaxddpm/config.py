"""Loading, overriding and validating configurations.

A configuration is named (a module in `jaxddpm.configs`) or a path to a Python file with
``get_config()``. Overrides are ``section.field=value`` strings; values are parsed to the
type of the field they replace. Every problem raises `ConfigError` with a one-line message.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import json
import os
import pkgutil
from typing import Any

import ml_collections

from jaxddpm import configs as configs_package
from jaxddpm.kernels import CONV_IMPLS, UPSAMPLE_IMPLS
from jaxddpm.options import DATA_SOURCES, DOWNSAMPLE_PADDINGS, DTYPES, LR_SCHEDULES, MODELS, PREDICTIONS, QKV_LAYOUTS, SAMPLERS, SHARDING_MODES, TIMESTEP_SAMPLING, VARIANCES
from jaxddpm.schedule import validate_schedule_args



class ConfigError(ValueError):
    """A configuration the program cannot run with; the message names the field."""


def available_configs() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(configs_package.__path__) if m.name != "default")


def load_config(name_or_path: str) -> ml_collections.ConfigDict:
    """A shipped config by name, or the ``get_config()`` of a Python file."""
    if name_or_path.endswith(".py") or os.sep in name_or_path:
        if not os.path.isfile(name_or_path):
            raise ConfigError(f"config file {name_or_path} does not exist")
        spec = importlib.util.spec_from_file_location("jaxddpm_user_config", name_or_path)
        module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
        except Exception as e:  # noqa: BLE001 - a user's file may raise anything
            raise ConfigError(f"config file {name_or_path} failed to load: {type(e).__name__}: {e}") from None
    elif name_or_path in available_configs():
        module = importlib.import_module(f"jaxddpm.configs.{name_or_path}")
    else:
        raise ConfigError(f"unknown config {name_or_path!r}; allowed: {', '.join(available_configs())} or a path to a .py file")
    if not hasattr(module, "get_config"):
        raise ConfigError(f"config {name_or_path} has no get_config() function")
    return module.get_config()


def _parse_value(key: str, text: str, current: Any) -> Any:
    kind = type(current)
    try:
        if isinstance(current, bool):
            lowered = text.strip().lower()
            if lowered not in ("true", "false", "1", "0"):
                raise ValueError
            return lowered in ("true", "1")
        if isinstance(current, int):
            return int(text)
        if isinstance(current, float):
            return float(text)
        if isinstance(current, str):
            return text
        if isinstance(current, (tuple, list)):
            value = ast.literal_eval(text if text.strip().startswith(("(", "[")) else f"({text},)")
            if not isinstance(value, (tuple, list)):
                raise ValueError
            if current and not all(isinstance(v, type(current[0])) for v in value):
                raise ValueError
            return kind(value)
    except (ValueError, SyntaxError):
        pass
    else:
        raise ConfigError(f"--config.{key} cannot be overridden (a {kind.__name__} field)")
    raise ConfigError(f"--config.{key}={text!r} is not a valid {kind.__name__}")


def apply_overrides(config: ml_collections.ConfigDict, overrides: dict[str, str]) -> ml_collections.ConfigDict:
    """Set ``section.field`` values from strings, parsed to the field's type."""
    config = ml_collections.ConfigDict(config.to_dict())
    for key, text in overrides.items():
        *sections, field = key.split(".")
        node = config
        for section in sections:
            if section not in node or not isinstance(node[section], ml_collections.ConfigDict):
                raise ConfigError(f"unknown config key {key!r}; sections: {', '.join(sorted(config.keys()))}")
            node = node[section]
        if field not in node or isinstance(node[field], ml_collections.ConfigDict):
            allowed = ", ".join(f"{'.'.join(sections)}.{k}" for k in sorted(node.keys()))
            raise ConfigError(f"unknown config key {key!r}; allowed here: {allowed}")
        node[field] = _parse_value(key, text, node[field])
    return config


def validate(config: ml_collections.ConfigDict) -> None:
    """Raise `ConfigError` for values the program cannot run with."""
    d, m, s, t = config.data, config.model, config.diffusion, config.train

    def need(ok: bool, message: str) -> None:
        if not ok:
            raise ConfigError(message)

    need(d.source in DATA_SOURCES, f"data.source={d.source!r} is unknown; allowed: {', '.join(DATA_SOURCES)}")
    need(d.source != "folder" or bool(d.path), "data.path must name an image folder when data.source=folder")
    need(d.channels in (1, 3), f"data.channels must be 1 or 3, got {d.channels}")
    need(d.holdout >= 0, f"data.holdout must not be negative, got {d.holdout}")
    need(m.name in MODELS, f"model.name={m.name!r} is unknown; allowed: {', '.join(MODELS)}")
    need(m.num_classes >= 0, f"model.num_classes must not be negative, got {m.num_classes}")
    if m.name == "simple_unet":
        need(len(m.channels) >= 2 and all(c > 0 for c in m.channels), f"model.channels needs at least two positive widths, got {tuple(m.channels)}")
        levels, what = len(m.channels) - 1, f"model.channels={tuple(m.channels)}"
        need(m.time_emb_dim >= 4 and m.time_emb_dim % 2 == 0, f"model.time_emb_dim must be an even number >= 4, got {m.time_emb_dim}")
    else:
        need(len(m.channel_mult) >= 1 and all(c > 0 for c in m.channel_mult), f"model.channel_mult needs positive entries, got {tuple(m.channel_mult)}")
        need(m.base_channels >= 2 and m.base_channels % 2 == 0, f"model.base_channels must be an even number >= 2, got {m.base_channels}")
        need(m.num_res_blocks >= 1, f"model.num_res_blocks must be at least 1, got {m.num_res_blocks}")
        need(0.0 <= m.dropout < 1.0, f"model.dropout must lie in [0, 1), got {m.dropout}")
        need(m.norm_groups >= 1, f"model.norm_groups must be at least 1, got {m.norm_groups}")
        need(m.downsample_padding in DOWNSAMPLE_PADDINGS,
             f"model.downsample_padding={m.downsample_padding!r} is unknown; allowed: {', '.join(DOWNSAMPLE_PADDINGS)}")
        need(m.qkv_layout in QKV_LAYOUTS, f"model.qkv_layout={m.qkv_layout!r} is unknown; allowed: {', '.join(QKV_LAYOUTS)}")
        need(m.norm_eps > 0, f"model.norm_eps must be positive, got {m.norm_eps}")
        need(m.mid_scale > 0, f"model.mid_scale must be positive, got {m.mid_scale}")
        need(m.time_freq_shift < m.base_channels // 2, f"model.time_freq_shift must be below base_channels / 2, got {m.time_freq_shift}")
        widths = [m.base_channels * k for k in m.channel_mult]
        need(m.attention_head_dim == 0 or (m.attention_head_dim > 0 and all(w % m.attention_head_dim == 0 for w in widths)),
             f"model.attention_head_dim={m.attention_head_dim} must divide every level's width {widths} (0 = one head)")
        levels, what = len(m.channel_mult) - 1, f"model.channel_mult={tuple(m.channel_mult)}"
    need(
        d.image_size > 0 and d.image_size % 2**levels == 0,
        f"data.image_size={d.image_size} cannot be halved {levels} time{'s' if levels != 1 else ''} by {what}; use a multiple of {2**levels}",
    )
    need(m.upsample_impl in UPSAMPLE_IMPLS, f"model.upsample_impl={m.upsample_impl!r} is unknown; allowed: {', '.join(UPSAMPLE_IMPLS)}")
    need(m.conv_impl in CONV_IMPLS, f"model.conv_impl={m.conv_impl!r} is unknown; allowed: {', '.join(CONV_IMPLS)}")
    need(m.dtype in DTYPES, f"model.dtype={m.dtype!r} is unknown; allowed: {', '.join(DTYPES)}")
    try:
        validate_schedule_args(s.schedule, s.num_timesteps, s.beta_start, s.beta_end)
    except ValueError as e:
        raise ConfigError(f"diffusion: {e}") from None
    need(t.batch_size > 0, f"train.batch_size must be positive, got {t.batch_size}")
    need(t.learning_rate > 0, f"train.learning_rate must be positive, got {t.learning_rate}")
    need(t.num_steps > 0 or t.num_epochs > 0, "train.num_steps or train.num_epochs must be positive")
    need(t.num_steps >= 0 and t.num_epochs >= 0, "train.num_steps and train.num_epochs must not be negative")
    need(0.0 <= t.ema_decay < 1.0, f"train.ema_decay must lie in [0, 1), got {t.ema_decay}")
    need(t.ema_start >= 0, f"train.ema_start must not be negative, got {t.ema_start}")
    need(t.lr_schedule in LR_SCHEDULES, f"train.lr_schedule={t.lr_schedule!r} is unknown; allowed: {', '.join(LR_SCHEDULES)}")
    need(t.warmup_steps >= 0, f"train.warmup_steps must not be negative, got {t.warmup_steps}")
    need(t.log_every_steps > 0, f"train.log_every_steps must be positive, got {t.log_every_steps}")
    need(t.steps_per_call >= 1, f"train.steps_per_call must be at least 1, got {t.steps_per_call}")
    need(t.sharding in SHARDING_MODES, f"train.sharding={t.sharding!r} is unknown; allowed: {', '.join(SHARDING_MODES)}")
    need(s.prediction in PREDICTIONS, f"diffusion.prediction={s.prediction!r} is unknown; allowed: {', '.join(PREDICTIONS)}")
    need(s.min_snr_gamma >= 0, f"diffusion.min_snr_gamma must not be negative, got {s.min_snr_gamma}")
    need(0.0 <= t.label_dropout < 1.0, f"train.label_dropout must lie in [0, 1), got {t.label_dropout}")
    need(len(t.adam_betas) == 2 and all(0.0 <= b < 1.0 for b in t.adam_betas),
         f"train.adam_betas must be two values in [0, 1), got {tuple(t.adam_betas)}")
    need(t.timestep_sampling in TIMESTEP_SAMPLING,
         f"train.timestep_sampling={t.timestep_sampling!r} is unknown; allowed: {', '.join(TIMESTEP_SAMPLING)}")
    need(t.grad_clip_norm >= 0, f"train.grad_clip_norm must not be negative, got {t.grad_clip_norm}")
    need(config.checkpoint.every_steps > 0, f"checkpoint.every_steps must be positive, got {config.checkpoint.every_steps}")
    need(config.checkpoint.keep > 0, f"checkpoint.keep must be positive, got {config.checkpoint.keep}")
    need(config.sample.every_steps >= 0, f"sample.every_steps must not be negative, got {config.sample.every_steps}")
    validate_sampling(config.sample, s.num_timesteps, m.num_classes)


def validate_sampling(sample: ml_collections.ConfigDict, num_timesteps: int, num_classes: int) -> None:
    """Raise `ConfigError` for sampling settings that cannot run (also used by ``jaxddpm sample``)."""
    if sample.num <= 0:
        raise ConfigError(f"sample.num must be positive, got {sample.num}")
    if sample.sampler not in SAMPLERS:
        raise ConfigError(f"sample.sampler={sample.sampler!r} is unknown; allowed: {', '.join(SAMPLERS)}")
    if sample.sampler == "ddim" and not 1 <= sample.steps <= num_timesteps:
        raise ConfigError(f"sample.steps={sample.steps} must lie in [1, {num_timesteps}] (diffusion.num_timesteps)")
    if sample.variance not in VARIANCES:
        raise ConfigError(f"sample.variance={sample.variance!r} is unknown; allowed: {', '.join(VARIANCES)}")
    if sample.eta < 0:
        raise ConfigError(f"sample.eta must not be negative, got {sample.eta}")
    if num_classes == 0 and (sample.label != -1 or sample.guidance != 1.0):
        raise ConfigError("sample.label and sample.guidance need a class-conditional model (model.num_classes > 0)")
    if not -1 <= sample.label < max(num_classes, 1):
        raise ConfigError(f"sample.label={sample.label} must lie in [0, {num_classes}) or be -1 (all classes)")


def to_json(config: ml_collections.ConfigDict) -> str:
    return json.dumps(config.to_dict(), indent=2, sort_keys=True, default=list)


def from_json(text: str) -> ml_collections.ConfigDict:
    """Inverse of `to_json`. Saved values go over the current defaults (so a config saved
    before a field existed gets its default); lists become tuples where defaults use tuples."""
    config = _defaults()
    for section, values in json.loads(text).items():
        if section not in config or not isinstance(values, dict):
            config[section] = values
            continue
        for field, value in values.items():
            current = config[section].get(field)
            config[section][field] = tuple(value) if isinstance(current, tuple) and isinstance(value, list) else value
    return config


def _defaults() -> ml_collections.ConfigDict:
    from jaxddpm.configs import default

    return default.get_config()


# The fields a checkpoint depends on: resuming with any of them changed is refused.
COMPATIBILITY_FIELDS = (
    "data.image_size", "data.channels", "data.holdout", "model.name", "model.num_classes", "model.channels", "model.time_emb_dim",
    "model.base_channels", "model.channel_mult", "model.num_res_blocks", "model.attention_resolutions",
    "model.norm_groups", "model.qkv_layout", "model.time_scale_shift", "model.upsample_conv",
    "diffusion.prediction", "diffusion.schedule", "diffusion.num_timesteps", "diffusion.beta_start", "diffusion.beta_end",
    "train.seed", "train.batch_size", "train.learning_rate", "train.grad_clip_norm", "train.lr_schedule", "train.warmup_steps",
)


def get_field(config: ml_collections.ConfigDict, dotted: str) -> Any:
    node = config
    for part in dotted.split("."):
        node = node[part]
    return list(node) if isinstance(node, (tuple, list)) else node


def incompatibilities(saved: ml_collections.ConfigDict, current: ml_collections.ConfigDict) -> list[str]:
    out = []
    for field in COMPATIBILITY_FIELDS:
        try:
            a = get_field(saved, field)
        except (KeyError, AttributeError):
            a = get_field(_defaults(), field)  # saved before the field existed
        b = get_field(current, field)
        if a != b:
            out.append(f"{field} {a!r} -> {b!r}")
    return out
