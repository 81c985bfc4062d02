"""The quickstart's training step on every JAX device, the batch split over them, as
`jaxddpm train` runs it on a mesh (median of 60 steps). Run it once as it is and once with
two CPU devices, in separate processes (JAX reads XLA_FLAGS when it starts):

    python experiments/quickstart/round8/step_devices.py
    XLA_FLAGS=--xla_force_host_platform_device_count=2 python experiments/quickstart/round8/step_devices.py
"""

import time

import jaxddpm  # noqa: F401  (XLA flags before JAX starts)
import jax
import jax.numpy as jnp

from jaxddpm import config as config_lib, factory, parallel
from jaxddpm.profiling import program_runner, timed


def main() -> None:
    c = config_lib.load_config("quickstart")
    model, tx, schedule = factory.build_model(c), factory.build_optimizer(c), factory.build_schedule(c)
    shape = factory.image_shape(c)
    mesh = parallel.make_mesh()
    state = factory.create_sharded_state(model, tx, jax.random.key(0), shape, mesh)
    shardings = parallel.tree_shardings(state, mesh, "replicated")
    images = parallel.put_replicated(jax.random.randint(jax.random.key(1), (1500, *shape), 0, 256).astype(jnp.uint8), mesh)
    labels = parallel.put_replicated(jnp.zeros((1500,), jnp.int32), mesh)
    args = (images, labels, jax.random.key(2), jax.random.key(3))
    on_mesh = mesh.size > 1
    t0 = time.perf_counter()
    step = factory.make_train_step(model, tx, schedule, c, mesh=mesh if on_mesh else None,
                                   state_shardings=shardings if on_mesh else None).lower(state, *args).compile()
    compile_s = time.perf_counter() - t0
    median = timed(program_runner(step, state, args), 60)["median_s"]
    print(f"{mesh.size} devices: compiled in {compile_s:.1f} s, median {median * 1e3:.2f} ms/step")


if __name__ == "__main__":
    main()
