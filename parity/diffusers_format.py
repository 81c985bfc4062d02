"""Conversion between diffusers' DDPM checkpoints (a ``UNet2DModel`` and a ``DDPMScheduler``
config, as in ``google/ddpm-cifar10-32``) and jaxddpm's exported models (`jaxddpm.Pipeline`).

Reading and writing need only NumPy, safetensors and JSON: neither PyTorch nor diffusers is
imported (a ``diffusion_pytorch_model.bin`` file, the older format, needs PyTorch to read).
Every supported diffusers field maps to a `jaxddpm.DDPMUNet` option or a config field; a
config that the model cannot express exactly is refused with one line naming the field.

Weights: every tensor of the diffusers state dict maps to exactly one jaxddpm leaf (or, for a
model with fused query/key/value projections, a slice of one); convolutions OIHW <-> HWIO,
linear layers transposed, GroupNorm ``weight`` <-> ``scale``.
"""

from __future__ import annotations

import json
import os
import re

import numpy as np

UNET_CONFIG = "config.json"
UNET_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
SCHEDULER_CONFIG = "scheduler_config.json"

# UNet2DModel fields whose values jaxddpm supports only as listed (None: the field may be absent).
_FIXED_UNET_FIELDS = {
    "act_fn": ("silu",),
    "time_embedding_type": ("positional",),
    "center_input_sample": (False,),
    "add_attention": (True,),
    "class_embed_type": (None,),
    "num_class_embeds": (None,),
    "downsample_type": ("conv",),
    "upsample_type": ("conv",),
    "num_train_timesteps": (None,),
    "mid_block_type": ("UNetMidBlock2D",),
}
_MAPPED_UNET_FIELDS = (
    "sample_size", "in_channels", "out_channels", "block_out_channels", "down_block_types", "up_block_types",
    "layers_per_block", "downsample_padding", "flip_sin_to_cos", "freq_shift", "mid_block_scale_factor",
    "norm_eps", "norm_num_groups", "attention_head_dim", "dropout", "time_embedding_dim", "resnet_time_scale_shift",
    "attn_norm_num_groups",
)
_TIME_SCALE_SHIFT = {"default": False, "scale_shift": True}
_BETA_SCHEDULES = {"linear": "linear", "scaled_linear": "quadratic", "squaredcos_cap_v2": "cosine", "sigmoid": "sigmoid"}
_PREDICTIONS = {"epsilon": "eps", "sample": "x0", "v_prediction": "v"}
_PADDINGS = {0: "after", 1: "both"}
# Scheduler fields that only matter for fewer sampling steps than T, or are bookkeeping.
_IGNORED_SCHEDULER_FIELDS = ("timestep_spacing", "steps_offset", "dynamic_thresholding_ratio", "sample_max_value",
                             "num_inference_steps")


class DiffusersFormatError(ValueError):
    """A diffusers folder or config that jaxddpm cannot convert exactly; one line."""


# --- configs -----------------------------------------------------------------------------------

def _need(ok: bool, message: str) -> None:
    if not ok:
        raise DiffusersFormatError(message)


def config_from_diffusers(unet: dict, scheduler: dict | None = None):
    """The jaxddpm config (`ml_collections.ConfigDict`) of a ``UNet2DModel`` config and a
    ``DDPMScheduler`` config (None: diffusers' ``DDPMScheduler()`` defaults)."""
    from jaxddpm.configs import default

    _need(unet.get("_class_name", "UNet2DModel") == "UNet2DModel", f"_class_name={unet.get('_class_name')!r} is not supported; allowed: UNet2DModel")
    for field, value in unet.items():
        if field.startswith("_") or field in _MAPPED_UNET_FIELDS:
            continue
        _need(field in _FIXED_UNET_FIELDS, f"UNet2DModel field {field} is not supported by jaxddpm's DDPMUNet")
        _need(value in _FIXED_UNET_FIELDS[field],
              f"UNet2DModel {field}={value!r} is not supported; allowed: {', '.join(repr(v) for v in _FIXED_UNET_FIELDS[field])}")
    channels = list(unet.get("block_out_channels", (224, 448, 672, 896)))
    down = list(unet.get("down_block_types", ("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D")))
    up = list(unet.get("up_block_types", ("AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D")))
    size = unet.get("sample_size")
    if isinstance(size, (list, tuple)):
        _need(len(size) == 2 and size[0] == size[1], f"sample_size={size} is not supported; allowed: square images")
        size = size[0]
    _need(isinstance(size, int) and size > 0, f"sample_size={size!r} must be a positive integer")
    in_ch, out_ch = unet.get("in_channels", 3), unet.get("out_channels", 3)
    _need(in_ch == out_ch and in_ch in (1, 3), f"in_channels={in_ch}, out_channels={out_ch} are not supported; allowed: equal, 1 or 3")
    _need(len(down) == len(channels) == len(up), "block_out_channels, down_block_types and up_block_types must have one entry per level")
    for field, kinds, allowed in (("down_block_types", down, ("DownBlock2D", "AttnDownBlock2D")), ("up_block_types", up, ("UpBlock2D", "AttnUpBlock2D"))):
        for kind in kinds:
            _need(kind in allowed, f"{field} entry {kind!r} is not supported; allowed: {', '.join(allowed)}")
    attention = [kind.startswith("Attn") for kind in down]
    _need(attention[::-1] == [kind.startswith("Attn") for kind in up], "up_block_types must mirror down_block_types (attention at the same levels)")
    base = channels[0]
    _need(all(c % base == 0 for c in channels), f"block_out_channels={channels} are not supported; allowed: multiples of the first")
    groups = unet.get("norm_num_groups", 32)
    _need(all(c % groups == 0 for c in channels), f"norm_num_groups={groups} must divide every entry of block_out_channels {channels}")
    _need(size % 2 ** (len(channels) - 1) == 0, f"sample_size={size} cannot be halved {len(channels) - 1} times")
    emb_dim = unet.get("time_embedding_dim")
    _need(emb_dim in (None, 4 * base), f"time_embedding_dim={emb_dim} is not supported; allowed: null or {4 * base}")
    padding = unet.get("downsample_padding", 1)
    _need(padding in _PADDINGS, f"downsample_padding={padding!r} is not supported; allowed: 0, 1")
    scale_shift = unet.get("resnet_time_scale_shift", "default")
    _need(scale_shift in _TIME_SCALE_SHIFT,
          f"UNet2DModel resnet_time_scale_shift={scale_shift!r} is not supported; allowed: {', '.join(map(repr, _TIME_SCALE_SHIFT))}")
    # The middle attention block normalises with attn_norm_num_groups groups, or, when that is
    # null, with norm_num_groups under "default" and not at all under "scale_shift".
    attn_groups = unet.get("attn_norm_num_groups")
    _need(attn_groups in (None, groups), f"attn_norm_num_groups={attn_groups} is not supported; allowed: null or norm_num_groups ({groups})")
    _need(scale_shift == "default" or attn_groups == groups,
          f"resnet_time_scale_shift='scale_shift' without attn_norm_num_groups={groups} (a middle attention without GroupNorm) is not supported")
    head_dim = unet.get("attention_head_dim", 8) or 0  # UNet2DModel's default is 8; null: one head
    _need(head_dim == 0 or all(c % head_dim == 0 for c in channels), f"attention_head_dim={head_dim} must divide every entry of block_out_channels")

    c = default.get_config()
    c.data.image_size, c.data.channels, c.data.random_flip = size, in_ch, False
    c.data.name = ""  # the training data is not part of a diffusers model
    m = c.model
    m.name, m.base_channels, m.channel_mult = "ddpm_unet", base, tuple(ch // base for ch in channels)
    m.num_res_blocks = unet.get("layers_per_block", 2)
    m.attention_resolutions = tuple(size // 2**level for level, attn in enumerate(attention) if attn)
    m.dropout, m.norm_groups = float(unet.get("dropout", 0.0)), groups
    m.time_flip_sin_to_cos, m.time_freq_shift = bool(unet.get("flip_sin_to_cos", True)), float(unet.get("freq_shift", 0))
    m.downsample_padding, m.norm_eps = _PADDINGS[padding], float(unet.get("norm_eps", 1e-5))
    m.attention_head_dim, m.qkv_layout, m.mid_scale = head_dim, "separate", float(unet.get("mid_block_scale_factor", 1))
    m.time_scale_shift = _TIME_SCALE_SHIFT[scale_shift]
    _apply_scheduler(c, scheduler or {})
    return c


def _apply_scheduler(c, scheduler: dict) -> None:
    get = scheduler.get
    kind = get("beta_schedule", "linear")
    _need(kind in _BETA_SCHEDULES, f"scheduler beta_schedule={kind!r} is not supported; allowed: {', '.join(_BETA_SCHEDULES)}")
    _need(get("trained_betas") is None, "scheduler trained_betas is not supported; allowed: null")
    _need(not get("thresholding", False), "scheduler thresholding=true is not supported; allowed: false")
    _need(not get("rescale_betas_zero_snr", False), "scheduler rescale_betas_zero_snr=true is not supported; allowed: false")
    _need(get("clip_sample_range", 1.0) == 1.0, f"scheduler clip_sample_range={get('clip_sample_range')} is not supported; allowed: 1.0")
    variance = get("variance_type", "fixed_small")
    _need(variance in ("fixed_small", "fixed_large"), f"scheduler variance_type={variance!r} is not supported; allowed: fixed_small, fixed_large")
    prediction = get("prediction_type", "epsilon")
    _need(prediction in _PREDICTIONS, f"scheduler prediction_type={prediction!r} is not supported; allowed: {', '.join(_PREDICTIONS)}")
    d = c.diffusion
    d.schedule, d.num_timesteps = _BETA_SCHEDULES[kind], int(get("num_train_timesteps", 1000))
    d.beta_start, d.beta_end, d.prediction = float(get("beta_start", 1e-4)), float(get("beta_end", 0.02)), _PREDICTIONS[prediction]
    c.sample.sampler, c.sample.variance, c.sample.clip_x0 = "ancestral", variance, bool(get("clip_sample", True))


def diffusers_configs(config) -> tuple[dict, dict]:
    """(UNet2DModel config, DDPMScheduler config) of a jaxddpm config; `DiffusersFormatError`
    if diffusers cannot express it."""
    m, d = config.model, config.diffusion
    _need(m.name == "ddpm_unet", f"model.name={m.name!r} has no diffusers counterpart; allowed: ddpm_unet")
    _need(m.num_classes == 0, "class-conditional models (model.num_classes > 0) have no UNet2DModel counterpart here")
    _need(m.upsample_conv, "model.upsample_conv=False (upsampling without a convolution) has no UNet2DModel counterpart; allowed: True")
    channels = [m.base_channels * k for k in m.channel_mult]
    _need(all(ch % m.norm_groups == 0 for ch in channels), f"model.norm_groups={m.norm_groups} must divide every level's width {channels} for diffusers")
    schedules = {v: k for k, v in _BETA_SCHEDULES.items()}
    _need(d.schedule in schedules, f"diffusion.schedule={d.schedule!r} has no DDPMScheduler counterpart; allowed: {', '.join(schedules)}")
    size = config.data.image_size
    attention = [size // 2**level in tuple(m.attention_resolutions) for level in range(len(channels))]
    unet = {
        "_class_name": "UNet2DModel", "sample_size": size, "in_channels": config.data.channels, "out_channels": config.data.channels,
        "center_input_sample": False, "time_embedding_type": "positional", "freq_shift": m.time_freq_shift,
        "flip_sin_to_cos": m.time_flip_sin_to_cos, "down_block_types": ["AttnDownBlock2D" if a else "DownBlock2D" for a in attention],
        "up_block_types": ["AttnUpBlock2D" if a else "UpBlock2D" for a in attention[::-1]], "block_out_channels": channels,
        "layers_per_block": m.num_res_blocks, "mid_block_scale_factor": m.mid_scale,
        "downsample_padding": 1 if m.downsample_padding == "both" else 0, "downsample_type": "conv", "upsample_type": "conv",
        "dropout": m.dropout, "act_fn": "silu", "attention_head_dim": m.attention_head_dim or None, "norm_num_groups": m.norm_groups,
        "norm_eps": m.norm_eps, "resnet_time_scale_shift": "scale_shift" if m.time_scale_shift else "default", "add_attention": True, "mid_block_type": "UNetMidBlock2D",
        "attn_norm_num_groups": m.norm_groups if m.time_scale_shift else None,
    }
    scheduler = {
        "_class_name": "DDPMScheduler", "num_train_timesteps": d.num_timesteps, "beta_start": d.beta_start, "beta_end": d.beta_end,
        "beta_schedule": schedules[d.schedule], "trained_betas": None, "variance_type": config.sample.variance,
        "clip_sample": bool(config.sample.clip_x0), "clip_sample_range": 1.0, "thresholding": False,
        "prediction_type": {v: k for k, v in _PREDICTIONS.items()}[d.prediction],
    }
    return unet, scheduler


# --- weights -----------------------------------------------------------------------------------

_RESNET = {"norm1": "norm1", "conv1": "conv1", "emb_proj": "time_emb_proj", "norm2": "norm2", "conv2": "conv2", "skip": "conv_shortcut"}
_ATTENTION = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj": "to_out.0"}
_TOP = {"time_dense1": "time_embedding.linear_1", "time_dense2": "time_embedding.linear_2", "init_conv": "conv_in",
        "out_norm": "conv_norm_out", "out_conv": "conv_out", "mid_res_0": "mid_block.resnets.0",
        "mid_res_1": "mid_block.resnets.1", "mid_attn": "mid_block.attentions.0"}


def diffusers_module(name: str, num_levels: int) -> str:
    """The diffusers module path of a top-level jaxddpm DDPMUNet module."""
    if name in _TOP:
        return _TOP[name]
    match = re.fullmatch(r"(down|up)_(\d+)_(res|attn)_(\d+)", name)
    if match:
        side, level, kind, i = match.groups()
        block = int(level) if side == "down" else num_levels - 1 - int(level)
        return f"{side}_blocks.{block}.{'resnets' if kind == 'res' else 'attentions'}.{i}"
    match = re.fullmatch(r"(down|up)_(\d+)_resample", name)
    if match:
        side, level = match.groups()
        block = int(level) if side == "down" else num_levels - 1 - int(level)
        return f"{side}_blocks.{block}.{'downsamplers' if side == 'down' else 'upsamplers'}.0.conv"
    raise DiffusersFormatError(f"jaxddpm module {name} has no diffusers counterpart")


def key_map(flax_paths, num_levels: int) -> dict[str, str]:
    """jaxddpm ``params/...`` leaf path -> diffusers state-dict key (separate q, k, v)."""
    out = {}
    for path in flax_paths:
        parts = path.split("/")
        _need(parts[0] == "params", f"{path} is not a parameter")
        module, leaf = diffusers_module(parts[1], num_levels), parts[-1]
        if len(parts) == 4:
            sub = parts[2]
            table = _ATTENTION if "_attn" in parts[1] else _RESNET
            _need(sub in table, f"jaxddpm layer {path} has no diffusers counterpart")
            module = f"{module}.{table[sub]}"
        out[path] = f"{module}.{'bias' if leaf == 'bias' else 'weight'}"
    return out


def to_flax_layout(value: np.ndarray) -> np.ndarray:
    """A diffusers tensor in jaxddpm's layout (by rank: conv OIHW -> HWIO, linear transposed)."""
    if value.ndim == 4:
        return value.transpose(2, 3, 1, 0)
    return value.T if value.ndim == 2 else value


def to_diffusers_layout(value: np.ndarray) -> np.ndarray:
    if value.ndim == 4:
        return value.transpose(3, 2, 0, 1)
    return value.T if value.ndim == 2 else value


def _fuse_or_split(flat: dict, fused: bool) -> dict:
    """Separate q/k/v leaves -> a fused ``qkv`` leaf (``fused``) or back."""
    out = dict(flat)
    groups: dict[tuple[str, str], dict[str, np.ndarray]] = {}
    for path in list(flat):
        parts = path.split("/")
        if len(parts) == 4 and "_attn" in parts[1] and parts[2] in (("q", "k", "v") if fused else ("qkv",)):
            groups.setdefault(("/".join(parts[:2]), parts[3]), {})[parts[2]] = out.pop(path)
    for (prefix, leaf), parts in groups.items():
        if fused:
            out[f"{prefix}/qkv/{leaf}"] = np.concatenate([parts["q"], parts["k"], parts["v"]], axis=-1)
        else:
            for name, piece in zip("qkv", np.split(parts["qkv"], 3, axis=-1)):
                out[f"{prefix}/{name}/{leaf}"] = piece
    return out


def variables_from_state_dict(state_dict: dict, config) -> dict:
    """jaxddpm sampling variables (``{"params": ..., "batch_stats": {}}``) from a diffusers
    UNet2DModel state dict (NumPy arrays); `DiffusersFormatError` names missing, unexpected
    and mis-shaped tensors."""
    import flax.traverse_util

    from jaxddpm.pipeline import abstract_variables

    expected = flax.traverse_util.flatten_dict(abstract_variables(config)["params"], sep="/")
    expected = {f"params/{k}": np.broadcast_to(np.float32(0), v.shape) for k, v in expected.items()}  # shapes, no memory
    separate = _fuse_or_split({k: v for k, v in expected.items()}, fused=False) if config.model.qkv_layout == "fused" else expected
    keys = key_map(separate, len(config.model.channel_mult))
    missing = sorted(k for k in keys.values() if k not in state_dict)
    unexpected = sorted(set(state_dict) - set(keys.values()))
    flat = {path: to_flax_layout(np.asarray(state_dict[key], np.float32)) for path, key in keys.items() if key in state_dict}
    shaped = sorted(keys[p] for p, v in flat.items() if tuple(v.shape) != tuple(separate[p].shape))
    for label, names in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shaped)):
        _need(not names, f"{label} tensors for this config: {', '.join(names[:3])}{' ...' if len(names) > 3 else ''} ({len(names)})")
    if config.model.qkv_layout == "fused":
        flat = _fuse_or_split(flat, fused=True)
    params = flax.traverse_util.unflatten_dict({k.split("/", 1)[1]: v for k, v in flat.items()}, sep="/")
    return {"params": params, "batch_stats": {}}


def state_dict_from_variables(variables: dict, config) -> dict[str, np.ndarray]:
    """The diffusers UNet2DModel state dict (NumPy, float32) of jaxddpm sampling variables."""
    import flax.traverse_util

    flat = {f"params/{k}": np.asarray(v, np.float32) for k, v in flax.traverse_util.flatten_dict(variables["params"], sep="/").items()}
    if config.model.qkv_layout == "fused":
        flat = _fuse_or_split(flat, fused=False)
    keys = key_map(flat, len(config.model.channel_mult))
    return {keys[path]: np.ascontiguousarray(to_diffusers_layout(value)) for path, value in flat.items()}


# --- folders -----------------------------------------------------------------------------------

def _read_json(path: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise DiffusersFormatError(f"{path} is not valid JSON ({e.msg}, line {e.lineno})") from None


def find_model_files(directory: str) -> tuple[str, str, str | None]:
    """(unet config, unet weights, scheduler config or None) in a diffusers folder: a model
    folder (config.json and weights, maybe scheduler_config.json beside them) or a pipeline
    folder (unet/ and scheduler/)."""
    _need(os.path.isdir(directory), f"{directory} is not a directory")
    unet_dir = os.path.join(directory, "unet") if os.path.isdir(os.path.join(directory, "unet")) else directory
    config = os.path.join(unet_dir, UNET_CONFIG)
    _need(os.path.isfile(config), f"{directory} is not a diffusers model folder: {UNET_CONFIG} is missing (in it or in unet/)")
    weights = next((os.path.join(unet_dir, name) for name in UNET_WEIGHTS if os.path.isfile(os.path.join(unet_dir, name))), None)
    _need(weights is not None, f"{unet_dir} has no weights: {' or '.join(UNET_WEIGHTS)} is missing")
    candidates = (os.path.join(directory, "scheduler", SCHEDULER_CONFIG), os.path.join(unet_dir, SCHEDULER_CONFIG))
    scheduler = next((p for p in candidates if os.path.isfile(p)), None)
    return config, weights, scheduler


def load_state_dict(path: str) -> dict[str, np.ndarray]:
    if path.endswith(".safetensors"):
        from safetensors.numpy import load_file

        return load_file(path)
    try:
        import torch
    except ImportError:
        raise DiffusersFormatError(f"{path} is a PyTorch pickle; reading it needs PyTorch (or convert it to safetensors)") from None
    state = torch.load(path, map_location="cpu", weights_only=True)
    return {k: v.float().numpy() for k, v in state.items()}


def pipeline_from_diffusers(directory: str):
    """A `jaxddpm.Pipeline` of a diffusers DDPM folder, and which scheduler config it used
    (None: diffusers' defaults)."""
    from jaxddpm.pipeline import Pipeline

    config_path, weights_path, scheduler_path = find_model_files(directory)
    scheduler = _read_json(scheduler_path) if scheduler_path else None
    config = config_from_diffusers(_read_json(config_path), scheduler)
    variables = variables_from_state_dict(load_state_dict(weights_path), config)
    return Pipeline(config, variables), scheduler_path


def import_diffusers(directory: str, out: str) -> str | None:
    """``jaxddpm convert --from-diffusers``: write an exported jaxddpm model to ``out``
    (never overwriting one). Returns the scheduler config used (None: defaults)."""
    from jaxddpm.pipeline import refuse_existing_export

    refuse_existing_export(out, "--out")
    pipe, scheduler_path = pipeline_from_diffusers(directory)
    pipe.save_pretrained(out)
    return scheduler_path


def export_diffusers(pipe, out: str) -> None:
    """``jaxddpm convert --to-diffusers``: a DDPMPipeline folder (``model_index.json``,
    ``unet/``, ``scheduler/``) that diffusers' ``from_pretrained`` loads; ``out`` must not exist."""
    from safetensors.numpy import save_file

    if os.path.exists(out):
        raise FileExistsError(f"--out {out} exists; choose another path (files are never overwritten)")
    unet, scheduler = diffusers_configs(pipe.config)
    state = state_dict_from_variables(pipe.variables, pipe.config)
    version = _diffusers_version()
    os.makedirs(os.path.join(out, "unet"))
    os.makedirs(os.path.join(out, "scheduler"))
    files = {
        os.path.join(out, "unet", UNET_CONFIG): unet,
        os.path.join(out, "scheduler", SCHEDULER_CONFIG): scheduler,
        os.path.join(out, "model_index.json"): {"_class_name": "DDPMPipeline", "scheduler": ["diffusers", "DDPMScheduler"],
                                                "unet": ["diffusers", "UNet2DModel"]},
    }
    for path, content in files.items():
        if version:
            content = {"_diffusers_version": version, **content}
        with open(path, "w") as f:
            json.dump(content, f, indent=2)
    save_file(state, os.path.join(out, "unet", UNET_WEIGHTS[0]), metadata={"format": "pt"})


def _diffusers_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("diffusers")
    except metadata.PackageNotFoundError:
        return ""
