"""Where jaxddpm keeps files: writing a file so that it is either complete or absent, never
half-written, and the cache directory of decoded datasets, classifiers and statistics."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import IO


@contextlib.contextmanager
def atomic_write(path: str, mode: str = "w") -> Iterator[IO]:
    """A file object whose contents replace ``path`` only once the block ends without error.

    It writes to a temporary file beside ``path`` (same directory, so the final rename is
    atomic) and renames it over ``path``; if the block or the write fails, the temporary
    file is removed and ``path`` is left as it was.
    """
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, mode) as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def cache_dir(configured: str = "") -> str:
    """``configured`` (``data.cache_dir``), or ``~/.cache/jaxddpm`` when it is empty."""
    return configured or os.path.join(os.path.expanduser("~"), ".cache", "jaxddpm")
