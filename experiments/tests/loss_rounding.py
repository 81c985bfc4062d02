"""How far the float32 training loss is from float64, with a one-pass mean and with
`jaxddpm.diffusion.example_means`; and whether the choice changes training.

    python experiments/tests/loss_rounding.py

1. The model of `tests/test_parity_checks.py::test_report_cli_on_a_users_checkpoint` (the
   article's SimpleUNet at the parity report's small size, seed 3, running statistics from
   two train-mode passes) on the training check's first batch: the loss in float64 (PyTorch
   and jaxddpm), and each float32 loss's relative distance from it.
2. Three training steps of the quickstart config with each mean: whether the parameters,
   EMA parameters and Adam state are the same bit for bit.
"""

import copy

import jax
import jax.numpy as jnp
import numpy as np
import torch

from jaxddpm import config as config_lib
from jaxddpm import diffusion, factory, train
from parity import checks, reference


def one_pass(noise, pred):
    return jnp.mean(jnp.square(noise - pred))


def users_checkpoint() -> dict:
    torch.manual_seed(3)
    model = reference.SimpleUNet(image_channels=3, channels=(8, 16, 32), out_channels=3, time_emb_dim=16)
    with torch.no_grad():
        model.train()
        for _ in range(2):
            model(torch.randn(4, 3, 16, 16), torch.randint(0, 300, (4,)))
    return model.state_dict()


def losses(state_dict, float64: bool) -> dict:
    with checks.precision(float64):  # both frameworks' default dtypes too
        s = checks.build_setup(checks.SMALL, float64, state_dict=state_dict, num_train_steps=1)
        x0, t, noise = checks._batches(s)[0]
        model = copy.deepcopy(s.torch_model).train()
        out = {"torch": reference.get_loss(model, checks.nchw(x0), torch.from_numpy(t).long(), s.tables, checks.nchw(noise)).item()}

        @jax.jit
        def ours(x0, t, noise):
            x_t = diffusion.q_sample(s.schedule, x0, t, noise)
            pred, _ = s.model.apply(s.variables, x_t, t, True, mutable=["batch_stats"])
            return one_pass(noise, pred), diffusion.noise_mse(noise, pred)

        out["jaxddpm, one-pass mean"], out["jaxddpm, example_means"] = map(float, ours(jnp.asarray(x0), jnp.asarray(t), jnp.asarray(noise)))
        return out


def quickstart_steps(mse, num_steps: int = 3):
    diffusion.noise_mse = mse  # prediction_loss looks it up at trace time
    config = config_lib.load_config("quickstart")
    model, tx, schedule = factory.build_model(config), factory.build_optimizer(config), factory.build_schedule(config)
    init_key, data_key, step_key = factory.run_keys(0)
    images = jnp.asarray(np.random.default_rng(0).integers(0, 256, (256, 8, 8, 1)), jnp.uint8)
    state = train.create_train_state(model, tx, init_key, factory.image_shape(config))
    step = factory.make_train_step(model, tx, schedule, config)
    for _ in range(num_steps):
        state, _ = step(state, images, jnp.zeros((256,), jnp.int32), data_key, step_key)
    return jax.tree.leaves((state.params, state.ema_params, state.opt_state))


def main() -> None:
    sd = users_checkpoint()
    exact = losses(sd, True)
    print(f"float64 loss: PyTorch {exact['torch']:.15f}, jaxddpm {exact['jaxddpm, example_means']:.15f}")
    for name, value in losses(sd, False).items():
        print(f"float32 {name}: {abs(value - exact['torch']) / exact['torch']:.2e} from float64")
    example_means = diffusion.noise_mse
    a, b = quickstart_steps(one_pass), quickstart_steps(example_means)
    diffusion.noise_mse = example_means
    same = all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, b))
    print(f"quickstart, 3 steps: parameters, EMA and Adam state the same bit for bit with either mean: {same}")


if __name__ == "__main__":
    main()
