"""Number-by-number checks of jaxddpm against the PyTorch reference.

Each check returns `CheckResult`s. `Setup` holds what every check shares: one reference
model (random or a user's checkpoint), its weights converted to Flax, and inputs drawn
once in NumPy and fed to both frameworks.

Tolerances. float64 runs are held to 1e-10 relative everywhere: both frameworks then
compute the same real-number function and only differ by reduction order. float32 runs use
bounds measured or derived for single precision (see the constants below).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
from typing import Iterator, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import torch

import jaxddpm
from jaxddpm import diffusion, train
from parity import convert, reference

EPS32 = 2.0**-23


class CheckResult(NamedTuple):
    name: str
    max_abs_diff: float
    rel_diff: float
    tolerance: float
    passed: bool


@dataclasses.dataclass(frozen=True)
class Sizes:
    channels: tuple[int, ...]
    image_size: int
    image_channels: int = 3
    time_emb_dim: int = 32
    batch: int = 2
    num_timesteps: int = 300


FULL = Sizes(channels=(64, 128, 256, 512, 1024), image_size=64, batch=4)
SMALL = Sizes(channels=(8, 16, 32), image_size=16, time_emb_dim=16, batch=4)


@contextlib.contextmanager
def precision(float64: bool) -> Iterator[None]:
    """Both frameworks in float64 (or float32), matmul/conv precision pinned, TF32 off."""
    saved = (
        jax.config.jax_enable_x64,
        jax.config.jax_default_matmul_precision,
        torch.get_default_dtype(),
        torch.backends.cudnn.allow_tf32,
        torch.backends.cuda.matmul.allow_tf32,
    )
    jax.config.update("jax_enable_x64", float64)
    jax.config.update("jax_default_matmul_precision", "highest")
    torch.set_default_dtype(torch.float64 if float64 else torch.float32)
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", saved[0])
        jax.config.update("jax_default_matmul_precision", saved[1])
        torch.set_default_dtype(saved[2])
        torch.backends.cudnn.allow_tf32 = saved[3]
        torch.backends.cuda.matmul.allow_tf32 = saved[4]


def compare(name: str, ours, theirs, tolerance: float, relative: bool = False, norm: bool = False) -> CheckResult:
    """Max |diff| and a relative difference; pass on the chosen one <= tolerance.

    The relative difference is max |diff| / max |reference|, or with ``norm`` the
    Frobenius norm of the difference over that of the reference.
    """
    a = np.asarray(ours, dtype=np.float64)
    b = _np(theirs).astype(np.float64)
    if a.shape != b.shape:
        return CheckResult(f"{name} (shape {a.shape} vs {b.shape})", math.inf, math.inf, tolerance, False)
    diff = float(np.max(np.abs(a - b))) if a.size else 0.0
    if norm:
        rel = float(np.linalg.norm(a - b)) / max(float(np.linalg.norm(b)), 1e-30)
    else:
        rel = diff / max(float(np.max(np.abs(b))) if b.size else 0.0, 1e-30)
    ok = bool(np.isfinite(diff)) and (rel if relative else diff) <= tolerance
    return CheckResult(name, diff, rel, tolerance, ok)


def _np(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy().copy()
    return np.asarray(x)


def nchw(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(np.asarray(x).transpose(0, 3, 1, 2)))


def nhwc(x: torch.Tensor) -> np.ndarray:
    return _np(x).transpose(0, 2, 3, 1)


@dataclasses.dataclass
class Setup:
    """Shared state of one parity run. Build it inside `precision(...)`."""

    sizes: Sizes
    float64: bool
    torch_model: reference.SimpleUNet
    model: jaxddpm.SimpleUNet
    variables: dict
    schedule: jaxddpm.Schedule
    tables: dict[str, torch.Tensor]  # our schedule's tables as torch tensors
    x0: np.ndarray
    t: np.ndarray
    noise: np.ndarray
    num_train_steps: int = 3
    cache: dict = dataclasses.field(default_factory=dict)  # results computed once for several checks

    @property
    def dtype(self):
        return np.float64 if self.float64 else np.float32

    # Tolerances, by kind of comparison.
    def tol(self, kind: str) -> float:
        if self.float64:
            return 1e-10
        return {
            # Sums of a few products of values of order 1: a few float32 ulps.
            "elementwise": 1e-6,
            # Eval forward of the full model: ~6e-8 measured on the CPU; 1e-5 allowed.
            "eval": 1e-5,
            # Train-mode BatchNorm divides by batch std: 1e-4.
            "train": 1e-4,
            # MSE of identical-to-1e-7 predictions.
            "loss": 1e-6,
            # Gradients through train-mode BatchNorm: relative norm.
            "grad": 1e-2,
        }[kind]


def build_setup(
    sizes: Sizes, float64: bool, seed: int = 0, state_dict: dict | None = None, num_train_steps: int = 3,
    model_options: dict | None = None,
) -> Setup:
    """``model_options``: further `jaxddpm.SimpleUNet` fields (``conv_policy``)."""
    torch.manual_seed(seed)
    torch_model = reference.SimpleUNet(
        image_channels=sizes.image_channels, channels=sizes.channels,
        out_channels=sizes.image_channels, time_emb_dim=sizes.time_emb_dim,
    )
    if state_dict is not None:
        torch_model.load_state_dict(state_dict, strict=True)
    dtype = torch.float64 if float64 else torch.float32
    torch_model = torch_model.to(dtype)
    variables = convert.torch_to_flax(torch_model.state_dict())
    jdtype = jnp.float64 if float64 else jnp.float32
    model = convert.model_from_state_dict(torch_model.state_dict(), dtype=jdtype, param_dtype=jdtype, **(model_options or {}))
    variables = jax.tree.map(lambda v: jnp.asarray(v, jdtype), variables)
    schedule = jaxddpm.make_schedule(num_timesteps=sizes.num_timesteps, dtype=jdtype)
    tables = {name: torch.from_numpy(np.array(getattr(schedule, name))) for name in reference.TABLE_NAMES}

    rng = np.random.default_rng(seed)
    npdtype = np.float64 if float64 else np.float32
    shape = (sizes.batch, sizes.image_size, sizes.image_size, sizes.image_channels)
    x0 = rng.uniform(-1.0, 1.0, shape).astype(npdtype)
    t = rng.integers(0, sizes.num_timesteps, sizes.batch).astype(np.int32)
    noise = rng.standard_normal(shape).astype(npdtype)
    return Setup(sizes, float64, torch_model, model, variables, schedule, tables, x0, t, noise, num_train_steps)


# 1. Sinusoidal embeddings -------------------------------------------------------------
def check_embeddings(s: Setup) -> list[CheckResult]:
    T, dim = s.sizes.num_timesteps, s.sizes.time_emb_dim
    ours = jaxddpm.sinusoidal_embedding(jnp.arange(T), dim, s.model.dtype)
    theirs = reference.SinusoidalPositionEmbeddings(dim)(torch.arange(T))
    # float32: torch rounds each frequency within an ulp of the exact value; angles
    # t * f then differ by up to t * f * 2^-23 <= T * 2^-23, and so do sin and cos.
    tol = s.tol("elementwise") if s.float64 else T * EPS32
    return [compare(f"embedding t=0..{T - 1}, dim {dim}", ours, theirs, tol)]


# 2. Schedule tables -------------------------------------------------------------------
def check_schedule(s: Setup) -> list[CheckResult]:
    T = s.sizes.num_timesteps
    theirs = reference.article_tables(T)
    # float32: the article builds its tables in float32, so a cumulative product of T
    # factors carries up to T half-ulps of relative error; jaxddpm rounds float64 once.
    tol = s.tol("elementwise") if s.float64 else T * EPS32 / 2
    return [
        compare(f"schedule {name}", getattr(s.schedule, name), theirs[name], tol, relative=True)
        for name in reference.TABLE_NAMES
    ]


# 3. q_sample --------------------------------------------------------------------------
def check_q_sample(s: Setup) -> list[CheckResult]:
    ours = diffusion.q_sample(s.schedule, jnp.asarray(s.x0), jnp.asarray(s.t), jnp.asarray(s.noise))
    theirs, _ = reference.forward_diffusion_sample(
        nchw(s.x0), torch.from_numpy(s.t).long(), s.tables, nchw(s.noise)
    )
    return [compare("q_sample", ours, nhwc(theirs), s.tol("elementwise"), relative=s.float64)]


# 4. Forward ---------------------------------------------------------------------------
def _torch_forward(s: Setup, train_mode: bool) -> np.ndarray:
    model = _copy_torch_model(s)
    model.train(train_mode)
    with torch.no_grad():
        return nhwc(model(nchw(s.x0), torch.from_numpy(s.t).long()))


def _copy_torch_model(s: Setup) -> reference.SimpleUNet:
    return copy.deepcopy(s.torch_model)


def check_forward(s: Setup) -> list[CheckResult]:
    # Compiled, as training and sampling run the model (op by op, a forward pass of even the
    # small model dispatches hundreds of separately compiled operations).
    x, t = jnp.asarray(s.x0), jnp.asarray(s.t)

    @jax.jit
    def both_modes(variables):
        train_out, _ = s.model.apply(variables, x, t, train=True, mutable=["batch_stats"])
        return s.model.apply(variables, x, t, train=False), train_out

    eval_out, train_out = both_modes(s.variables)
    return [
        compare("forward, eval mode", eval_out, _torch_forward(s, False), s.tol("eval"), relative=s.float64),
        compare("forward, train mode", train_out, _torch_forward(s, True), s.tol("train"), relative=s.float64),
    ]


# 5. Loss ------------------------------------------------------------------------------
def _jax_loss(s: Setup, params):
    x0, t, noise = jnp.asarray(s.x0), jnp.asarray(s.t), jnp.asarray(s.noise)

    def eps_fn(x_t, t_):
        out, _ = s.model.apply(
            {"params": params, "batch_stats": s.variables["batch_stats"]}, x_t, t_, train=True, mutable=["batch_stats"]
        )
        return out

    return diffusion.diffusion_loss(s.schedule, eps_fn, x0, t, noise)


def _torch_loss(s: Setup, model) -> torch.Tensor:
    return reference.get_loss(model, nchw(s.x0), torch.from_numpy(s.t).long(), s.tables, nchw(s.noise))


def _jax_loss_and_grads(s: Setup):
    """The loss and its gradients at the setup's parameters, compiled once for both checks."""
    if "loss_and_grads" not in s.cache:
        s.cache["loss_and_grads"] = jax.jit(jax.value_and_grad(lambda p: _jax_loss(s, p)))(s.variables["params"])
    return s.cache["loss_and_grads"]


def check_loss(s: Setup) -> list[CheckResult]:
    model = _copy_torch_model(s).train()
    theirs = _torch_loss(s, model)
    ours, _ = _jax_loss_and_grads(s)
    return [compare("loss (train mode)", ours, theirs, s.tol("loss"), relative=True)]


# 6. Gradients -------------------------------------------------------------------------
def _params_in_torch_layout(params) -> dict[str, np.ndarray]:
    flat = {tuple(p.key for p in path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path({"params": params})[0]}
    n = len({p[1] for p in flat if p[1].startswith("down_blocks_")})
    return {
        e.torch_key: convert.to_torch_layout(e, np.asarray(flat[e.flax_path]))
        for e in convert.conversion_table(n)
        if e.flax_path[0] == "params"
    }


def check_gradients(s: Setup) -> list[CheckResult]:
    model = _copy_torch_model(s).train()
    _torch_loss(s, model).backward()
    theirs = {k: p.grad for k, p in model.named_parameters()}
    _, grads = _jax_loss_and_grads(s)
    ours = _params_in_torch_layout(grads)
    if s.float64:
        return [compare(f"grad {k}", ours[k], theirs[k], s.tol("grad"), relative=True) for k in theirs]
    # float32: judge each tensor by relative norm and direction.
    results = []
    for k, g in theirs.items():
        a, b = ours[k].astype(np.float64), _np(g).astype(np.float64)
        diff = float(np.max(np.abs(a - b)))
        rel_norm = float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))
        cosine = float(np.dot(a.ravel(), b.ravel()) / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-30))
        ok = rel_norm <= s.tol("grad") and cosine > 0.999
        results.append(CheckResult(f"grad {k} (cos {cosine:.6f})", diff, rel_norm, s.tol("grad"), ok))
    return results


def to_torch_layout_tree(variables) -> dict[str, np.ndarray]:
    return {k: _np(v) for k, v in convert.flax_to_torch(variables).items() if not k.endswith("num_batches_tracked")}


# 7. Training steps with Adam -----------------------------------------------------------
def _batches(s: Setup) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(1234)
    out = []
    for _ in range(s.num_train_steps):
        out.append(
            (
                rng.uniform(-1.0, 1.0, s.x0.shape).astype(s.dtype),
                rng.integers(0, s.sizes.num_timesteps, s.sizes.batch).astype(np.int32),
                rng.standard_normal(s.x0.shape).astype(s.dtype),
            )
        )
    return out


def check_training(s: Setup, learning_rate: float = 1e-3) -> list[CheckResult]:
    """N Adam steps on the same batches: loss, weights and running statistics per step.

    float64: every step, every tensor, to 1e-10 in relative norm. (Adam divides each
    gradient element by its own magnitude, so an element whose gradient is tiny carries
    the absolute float64 noise of its tensor as a relative error into its update; the
    tensor's relative norm is the measure that does not depend on such elements.)
    float32: Adam's first update is
    lr * grad / (|grad| + eps), about lr * sign(grad), so weights whose gradient is pure
    float32 noise move either way, and from there the two trajectories drift apart
    (in float64 the trajectories agree to ~1e-13). float32 therefore judges step 1 only: its loss, the share of
    weights whose update differs by more than lr / 2 (at most 1e-3), and the running
    statistics; the trajectory beyond step 1 is checked in float64.
    """
    num_steps = s.num_train_steps if s.float64 else 1
    batches = _batches(s)[:num_steps]
    model = _copy_torch_model(s).train()
    opt = torch.optim.Adam(model.parameters(), lr=learning_rate)
    tx = train.make_optimizer(learning_rate)
    state = train.state_from_variables(s.variables, tx)
    update = jax.jit(lambda st, x0, t, n: train.apply_update(
        st, x0, t, n, model=s.model, tx=tx, schedule=s.schedule, ema_decay=0.999))
    start = {k: _np(v).astype(np.float64) for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    results = []
    for i, (x0, t, noise) in enumerate(batches, start=1):
        opt.zero_grad()
        loss = reference.get_loss(model, nchw(x0), torch.from_numpy(t).long(), s.tables, nchw(noise))
        loss.backward()
        opt.step()
        state, metrics = update(state, jnp.asarray(x0), jnp.asarray(t), jnp.asarray(noise))
        results.append(compare(f"step {i}: loss", metrics["loss"], loss, s.tol("loss"), relative=True))
        ours = to_torch_layout_tree({"params": state.params, "batch_stats": state.batch_stats})
        theirs = {k: _np(v) for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
        if s.float64:
            results += [compare(f"step {i}: {k}", ours[k], theirs[k], s.tol("grad"), relative=True, norm=True) for k in theirs]
        else:
            results += _compare_first_adam_step(s, ours, theirs, start, learning_rate)
    return results


def _compare_first_adam_step(s: Setup, ours, theirs, start, learning_rate: float) -> list[CheckResult]:
    stats = [k for k in theirs if ".running_" in k]
    weights = [k for k in theirs if k not in stats]
    delta_ours = np.concatenate([(ours[k] - start[k]).ravel() for k in weights])
    delta_theirs = np.concatenate([(theirs[k] - start[k]).ravel() for k in weights])
    gap = np.abs(delta_ours - delta_theirs)
    share = float(np.mean(gap > learning_rate / 2))
    tolerance = 1e-3
    results = [CheckResult("step 1: share of weights updated differently (> lr/2)", float(gap.max()), share, tolerance, share <= tolerance)]
    stat_ours = np.concatenate([ours[k].ravel() for k in stats])
    stat_theirs = np.concatenate([theirs[k].ravel() for k in stats])
    results.append(compare("step 1: BatchNorm running stats", stat_ours, stat_theirs, s.tol("train"), relative=True))
    return results


# 8. Reverse sampling ------------------------------------------------------------------
def check_sampling(s: Setup, chain_steps: int = 8) -> list[CheckResult]:
    model = _copy_torch_model(s).eval()
    variables = s.variables
    eps_fn = lambda x, t: s.model.apply(variables, x, t, train=False)  # noqa: E731
    x_t, noise = jnp.asarray(s.x0), jnp.asarray(s.noise)
    t = np.array(s.t)
    t[0] = 0  # one element takes the final, noise-free step
    ours = jax.jit(lambda x, t: diffusion.p_sample_step(s.schedule, eps_fn(x, t), x, t, noise))(x_t, jnp.asarray(t))
    theirs = reference.sample_timestep(model, nchw(s.x0), torch.from_numpy(t).long(), s.tables, nchw(s.noise))
    results = [compare("reverse step (t includes 0)", ours, nhwc(theirs), s.tol("eval"), relative=s.float64)]

    # A short chain: same x_T and per-step noise, drawn as `jaxddpm.sample` documents.
    short = jaxddpm.make_schedule(num_timesteps=chain_steps, dtype=s.model.dtype)
    short_tables = {name: torch.from_numpy(np.array(getattr(short, name))) for name in reference.TABLE_NAMES}
    key = jax.random.key(7)
    shape = s.x0.shape
    ours = jax.jit(lambda k: diffusion.sample(short, eps_fn, k, shape, dtype=s.model.dtype))(key)
    init_key, step_key = jax.random.split(key)
    x_T = jax.random.normal(init_key, shape, s.model.dtype)
    noises = [nchw(np.asarray(jax.random.normal(jax.random.fold_in(step_key, i), shape, s.model.dtype))) for i in range(chain_steps)]
    theirs = reference.sample_chain(model, nchw(np.asarray(x_T)), short_tables, noises)
    results.append(compare(f"sampling chain, {chain_steps} steps", ours, nhwc(theirs), s.tol("train"), relative=s.float64))
    return results


# 9. Round trip ------------------------------------------------------------------------
def check_round_trip(s: Setup) -> list[CheckResult]:
    original = s.torch_model.state_dict()
    counters = {int(v) for k, v in original.items() if k.endswith("num_batches_tracked")}
    back = convert.flax_to_torch(convert.torch_to_flax(original), num_batches_tracked=counters.pop() if len(counters) == 1 else 0)
    same_keys = list(back) == list(original)
    same_dtypes = same_keys and all(back[k].dtype == original[k].dtype for k in original)
    diff = max(float((back[k].double() - original[k].double()).abs().max()) for k in original) if same_keys else math.inf
    ok = same_keys and same_dtypes and all(torch.equal(back[k], original[k]) for k in original)
    return [CheckResult("round trip torch -> flax -> torch (keys, dtypes, values)", diff, diff, 0.0, ok)]


CHECKS = {
    "embeddings": check_embeddings,
    "schedule": check_schedule,
    "q_sample": check_q_sample,
    "forward": check_forward,
    "loss": check_loss,
    "gradients": check_gradients,
    "training": check_training,
    "sampling": check_sampling,
    "round_trip": check_round_trip,
}


def run_checks(
    sizes: Sizes = FULL,
    float64: bool = False,
    state_dict: dict | None = None,
    num_train_steps: int = 3,
    only: list[str] | None = None,
    seed: int = 0,
    model_options: dict | None = None,
) -> list[tuple[str, CheckResult]]:
    """Run the named checks (all by default) on jaxddpm's SimpleUNet with ``model_options``
    (see `build_setup`); returns (check, result) pairs."""
    with precision(float64):
        setup = build_setup(sizes, float64, seed=seed, state_dict=state_dict, num_train_steps=num_train_steps,
                            model_options=model_options)
        out = []
        for name, fn in CHECKS.items():
            if only is None or name in only:
                out += [(name, r) for r in fn(setup)]
        return out
