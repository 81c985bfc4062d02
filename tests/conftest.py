import os

# Tests are sized for a 2-core CPU; keep XLA from oversubscribing it.
os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=true")

import jax  # noqa: E402

# Silent broadcasting between arrays of different rank is a bug in this code base.
jax.config.update("jax_numpy_rank_promotion", "raise")
