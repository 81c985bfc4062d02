"""Weight conversion between the article's PyTorch SimpleUNet and `jaxddpm.SimpleUNet`.

One table lists every PyTorch state_dict key with its Flax location and a layout rule;
both directions read the same table. Conversion is all or nothing: every source entry
must be consumed and every target leaf filled with the right shape, or `ConversionError`
lists what is missing, unexpected and mis-shaped.

BatchNorm: jaxddpm's `BatchNorm` keeps the running variance in PyTorch's convention (the
unbiased estimate), so ``running_var`` and ``batch_stats/.../var`` hold the same numbers.
``num_batches_tracked`` has no Flax counterpart (it only matters for ``momentum=None``);
it is dropped going to Flax and set to ``num_batches_tracked`` going back.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from typing import Any, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import torch

from jaxddpm.models import SimpleUNet


class ConversionError(ValueError):
    """A state_dict or variables tree that does not match the model's layout."""


class Entry(NamedTuple):
    torch_key: str
    flax_path: tuple[str, ...]  # (collection, module, ..., leaf)
    rule: str  # how the tensor layout maps


# rule -> (torch -> flax, flax -> torch), on NumPy arrays
_RULES = {
    "conv": (lambda w: w.transpose(2, 3, 1, 0), lambda k: k.transpose(3, 2, 0, 1)),
    "conv_transpose": (lambda w: w.transpose(2, 3, 0, 1), lambda k: k.transpose(2, 3, 0, 1)),
    "dense": (lambda w: w.T, lambda k: k.T),
    "copy": (lambda v: v, lambda v: v),
}

_BLOCK_LAYERS = (  # in the PyTorch module's registration order
    ("time_mlp", "dense"),
    ("conv1", "conv"),
    ("transform", None),  # conv (down) or conv_transpose (up)
    ("conv2", "conv"),
)


def _layer(torch_prefix: str, flax_module: tuple[str, ...], rule: str) -> list[Entry]:
    return [
        Entry(f"{torch_prefix}.weight", ("params", *flax_module, "kernel"), rule),
        Entry(f"{torch_prefix}.bias", ("params", *flax_module, "bias"), "copy"),
    ]


def _batchnorm(torch_prefix: str, flax_module: tuple[str, ...]) -> list[Entry]:
    return [
        Entry(f"{torch_prefix}.weight", ("params", *flax_module, "scale"), "copy"),
        Entry(f"{torch_prefix}.bias", ("params", *flax_module, "bias"), "copy"),
        Entry(f"{torch_prefix}.running_mean", ("batch_stats", *flax_module, "mean"), "copy"),
        Entry(f"{torch_prefix}.running_var", ("batch_stats", *flax_module, "var"), "copy"),
    ]


def conversion_table(num_levels: int) -> list[Entry]:
    """Every convertible entry of a SimpleUNet with ``num_levels`` down and up blocks."""
    table = _layer("time_mlp.1", ("time_mlp",), "dense") + _layer("init_conv", ("init_conv",), "conv")
    for direction, transform_rule in (("down", "conv"), ("up", "conv_transpose")):
        for i in range(num_levels):
            tp, fm = f"{direction}_blocks.{i}", f"{direction}_blocks_{i}"
            for name, rule in _BLOCK_LAYERS:
                table += _layer(f"{tp}.{name}", (fm, name), rule or transform_rule)
            for bn in ("bn1", "bn2"):
                table += _batchnorm(f"{tp}.{bn}", (fm, bn))
    return table + _layer("final_conv", ("final_conv",), "conv")


def to_torch_layout(entry: Entry, value: np.ndarray) -> np.ndarray:
    """A Flax leaf in the PyTorch layout of ``entry``."""
    return _RULES[entry.rule][1](value)


def _is_batch_counter(key: str) -> bool:
    return key.endswith(".num_batches_tracked")


def _num_levels(keys) -> int:
    levels = {int(m.group(1)) for k in keys if (m := re.match(r"down_blocks\.(\d+)\.", k))}
    return max(levels) + 1 if levels else 0


def _to_numpy(value) -> np.ndarray:
    # Copy: tensor.numpy() shares memory with the tensor, which may later change in place.
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy().copy()
    return np.array(value, copy=True)


def model_from_state_dict(state_dict: Mapping[str, Any], **model_kwargs) -> SimpleUNet:
    """The `SimpleUNet` whose sizes a PyTorch state_dict describes."""
    try:
        n = _num_levels(state_dict)
        channels = [int(state_dict["init_conv.weight"].shape[0])]
        channels += [int(state_dict[f"down_blocks.{i}.conv1.weight"].shape[0]) for i in range(n)]
        out_channels = int(state_dict["final_conv.weight"].shape[0])
        time_emb_dim = int(state_dict["time_mlp.1.weight"].shape[0])
    except (KeyError, IndexError, AttributeError) as e:
        raise ConversionError(f"not a SimpleUNet state_dict: cannot read its sizes ({e!r} missing)") from None
    return SimpleUNet(channels=tuple(channels), out_channels=out_channels, time_emb_dim=time_emb_dim, **model_kwargs)


def expected_shapes(model: SimpleUNet, image_channels: int) -> dict[tuple[str, ...], tuple[int, ...]]:
    """Flax variable shapes of ``model`` for images with ``image_channels`` channels."""
    size = 2 ** (len(model.channels) - 1)
    x = jax.ShapeDtypeStruct((1, size, size, image_channels), jnp.float32)
    t = jax.ShapeDtypeStruct((1,), jnp.int32)
    variables = jax.eval_shape(lambda x, t: model.init(jax.random.key(0), x, t, train=False), x, t)
    flat = jax.tree_util.tree_flatten_with_path(variables)[0]
    return {tuple(p.key for p in path): tuple(leaf.shape) for path, leaf in flat}


def _raise_if_any(what: str, missing, unexpected, misshaped) -> None:
    parts = []
    if missing:
        parts.append(f"missing: {', '.join(missing)}")
    if unexpected:
        parts.append(f"unexpected: {', '.join(unexpected)}")
    if misshaped:
        parts.append(f"mis-shaped: {', '.join(misshaped)}")
    if parts:
        raise ConversionError(f"{what}: " + "; ".join(parts))


def _nest(flat: Mapping[tuple[str, ...], np.ndarray]) -> dict:
    tree: dict = {}
    for path, value in flat.items():
        node = tree
        for name in path[:-1]:
            node = node.setdefault(name, {})
        node[path[-1]] = value
    return tree


def torch_to_flax(state_dict: Mapping[str, Any], model: SimpleUNet | None = None) -> dict:
    """Convert an article-model state_dict to ``{"params": ..., "batch_stats": ...}``.

    With no ``model``, the sizes are read from the state_dict. Leaves are NumPy arrays in
    the state_dict's dtype.
    """
    model = model or model_from_state_dict(state_dict)
    table = conversion_table(len(model.channels) - 1)
    image_channels = int(np.shape(state_dict["init_conv.weight"])[1]) if "init_conv.weight" in state_dict else 3
    shapes = expected_shapes(model, image_channels)
    known = {e.torch_key for e in table}
    missing = [e.torch_key for e in table if e.torch_key not in state_dict]
    unexpected = [k for k in state_dict if k not in known and not _is_batch_counter(k)]
    flat, misshaped = {}, []
    for entry in table:
        if entry.torch_key not in state_dict:
            continue
        value = _RULES[entry.rule][0](_to_numpy(state_dict[entry.torch_key]))
        want = shapes.get(entry.flax_path)
        if value.shape != want:
            misshaped.append(f"{entry.torch_key} {tuple(np.shape(state_dict[entry.torch_key]))} (expected {want} in Flax layout as {value.shape})")
        flat[entry.flax_path] = value
    _raise_if_any("cannot convert the PyTorch state_dict", missing, unexpected, misshaped)
    return _nest(flat)


def _torch_shapes(variables_flat: Mapping[tuple[str, ...], Any], num_levels: int) -> dict[str, tuple[int, ...]]:
    """State_dict shapes of the article model that the Flax variables describe."""
    from parity.reference import SimpleUNet as TorchSimpleUNet

    def out_dim(path):
        return int(np.shape(variables_flat[path])[-1])

    try:
        image_channels = int(np.shape(variables_flat[("params", "init_conv", "kernel")])[2])
        channels = [out_dim(("params", "init_conv", "kernel"))]
        channels += [out_dim(("params", f"down_blocks_{i}", "conv1", "kernel")) for i in range(num_levels)]
        sizes = dict(out_channels=out_dim(("params", "final_conv", "kernel")), time_emb_dim=out_dim(("params", "time_mlp", "kernel")))
    except KeyError:
        return {}  # reported as missing entries
    with torch.device("meta"):
        reference = TorchSimpleUNet(image_channels=image_channels, channels=channels, **sizes)
    return {k: tuple(v.shape) for k, v in reference.state_dict().items()}


def flax_to_torch(variables: Mapping[str, Any], num_batches_tracked: int = 0) -> "OrderedDict[str, torch.Tensor]":
    """Convert jaxddpm `SimpleUNet` variables to an article-model state_dict (same key order)."""
    flat_vars = {
        tuple(p.key for p in path): leaf
        for path, leaf in jax.tree_util.tree_flatten_with_path(dict(variables))[0]
    }
    n = len({path[1] for path in flat_vars if len(path) > 1 and path[1].startswith("down_blocks_")})
    table = conversion_table(n)
    shapes = _torch_shapes(flat_vars, n)
    known = {e.flax_path for e in table}
    missing = ["/".join(e.flax_path) for e in table if e.flax_path not in flat_vars]
    unexpected = ["/".join(p) for p in flat_vars if p not in known]
    state_dict: OrderedDict[str, torch.Tensor] = OrderedDict()
    misshaped = []
    for entry in table:
        if entry.flax_path not in flat_vars:
            continue
        value = np.ascontiguousarray(to_torch_layout(entry, np.array(flat_vars[entry.flax_path], copy=True)))
        if value.shape != shapes.get(entry.torch_key):
            misshaped.append(f"{'/'.join(entry.flax_path)} {np.shape(flat_vars[entry.flax_path])} (expected {shapes.get(entry.torch_key)} in PyTorch layout as {value.shape})")
        state_dict[entry.torch_key] = torch.from_numpy(value)
        if entry.torch_key.endswith(".running_var"):
            counter = entry.torch_key.replace(".running_var", ".num_batches_tracked")
            state_dict[counter] = torch.tensor(num_batches_tracked, dtype=torch.long)
    _raise_if_any("cannot convert the Flax variables", missing, unexpected, misshaped)
    return state_dict
