"""The quickstart's final sampler (64 ancestral samples): its compile and run times, and
whether compiling it in a second thread while the training step compiles saves time.

    python experiments/quickstart/round8/sampler_compile.py
"""

import threading
import time

import jaxddpm  # noqa: F401  (XLA flags before JAX starts)
import jax
import jax.numpy as jnp

from jaxddpm import config as config_lib, factory, sampling


def main() -> None:
    c = config_lib.load_config("quickstart")
    model, schedule, tx = factory.build_model(c), factory.build_schedule(c), factory.build_optimizer(c)
    shape = factory.image_shape(c)
    state = factory.initial_state(c, jax.random.key(0))
    variables = sampling.sampling_variables(state)
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), variables)
    images = jax.random.randint(jax.random.key(1), (1500, *shape), 0, 256).astype(jnp.uint8)
    args = (images, jnp.zeros((1500,), jnp.int32), jax.random.key(2), jax.random.key(3))

    def sampler():
        return sampling.make_sampler(model, schedule, (c.sample.num, *shape), None, **sampling.sampler_options(c))

    def compile_sampler(out: dict) -> None:
        t0 = time.perf_counter()
        out["program"] = sampler().lower(abstract, jax.random.key(1), None).compile()
        out["seconds"] = time.perf_counter() - t0

    def compile_step() -> float:
        t0 = time.perf_counter()
        factory.make_train_step(model, tx, schedule, c).lower(state, *args).compile()
        return time.perf_counter() - t0

    alone: dict = {}
    compile_sampler(alone)
    t0 = time.perf_counter()
    jax.block_until_ready(alone["program"](variables, jax.random.key(1), None))
    print(f"sampler alone: compiled in {alone['seconds']:.2f} s, ran in {time.perf_counter() - t0:.2f} s")
    for mode in ("one after the other", "sampler in a second thread"):
        out: dict = {}
        t0 = time.perf_counter()
        thread = threading.Thread(target=compile_sampler, args=(out,)) if mode.endswith("thread") else None
        if thread:
            thread.start()
        step_s = compile_step()
        if thread:
            thread.join()
        else:
            compile_sampler(out)
        print(f"{mode}: step {step_s:.2f} s, sampler {out['seconds']:.2f} s, both {time.perf_counter() - t0:.2f} s")


if __name__ == "__main__":
    main()
