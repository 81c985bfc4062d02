"""What the command line writes to the terminal: one-line errors that still reach the real
stderr after a failed run has silenced the libraries' output, and the libraries' own log
lines and warnings kept off it (``JAXDDPM_DEBUG=1`` or ``--verbose`` lets them through)."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys

USAGE_ERROR, RUNTIME_ERROR = 2, 1  # bad usage, config or data; a failure while running


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser with its errors as one line (``error: ...; see PROG --help``) and
    exit code 2, like every other usage error of the command line."""

    def error(self, message: str):
        sys.stderr.write(f"error: {message}; see {self.prog} --help\n")
        raise SystemExit(USAGE_ERROR)


def _flush_python_stderr() -> None:
    """Write out what Python buffered for stderr before file descriptor 2 changes or is
    bypassed."""
    try:
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


class Stderr:
    """Where the one-line errors go. `keep_real` (called before training starts) keeps a
    handle on the real stderr; after `silence`, file descriptor 2 points at /dev/null (so
    tracebacks that library threads, atexit handlers and never-awaited tasks print while a
    failed run shuts down stay off the terminal) and our own line still reaches the real
    stderr. ``JAXDDPM_DEBUG=1`` keeps that library output visible."""

    real_fd: int | None = None
    silenced = False

    @classmethod
    def keep_real(cls) -> None:
        """Keep a duplicate of fd 2 while it is still the real stderr: `silence` may run
        while a checkpoint write holds fd 2 (see `jaxddpm.checkpoint.save`)."""
        from jaxddpm.checkpoint import show_library_output

        if cls.real_fd is not None or show_library_output():
            return
        if sys.stderr is not sys.__stderr__:  # captured (e.g. called in-process by a test): leave fd 2 alone
            return
        try:
            sys.stderr.flush()
            cls.real_fd = os.dup(2)
        except (OSError, ValueError):  # no real fd 2
            pass

    @classmethod
    def silence(cls) -> None:
        import logging
        import threading
        import warnings

        from jaxddpm.checkpoint import show_library_output

        if cls.silenced or show_library_output():
            return
        cls.silenced = True
        # Python-level reports of the same failure (also where fd 2 cannot be redirected).
        logging.getLogger("asyncio").setLevel(logging.CRITICAL)
        logging.getLogger("absl").setLevel(logging.CRITICAL)
        threading.excepthook = lambda args: None
        sys.unraisablehook = lambda unraisable: None
        warnings.simplefilter("ignore")
        if cls.real_fd is None:
            return
        _flush_python_stderr()
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)

    @classmethod
    def write_line(cls, line: str) -> None:
        if cls.real_fd is None:
            print(line, file=sys.stderr, flush=True)
        else:
            _flush_python_stderr()
            os.write(cls.real_fd, (line + "\n").encode())


def fail(message: str, code: int) -> int:
    Stderr.write_line(f"error: {message}".splitlines()[0])
    return code


def failing_run(exc: BaseException) -> None:
    """Called by the trainer with the exception that ends a run: for a failed checkpoint
    write while the checkpoint library's output is still held, otherwise before the trainer
    closes its checkpoint manager and log writers (whose threads then print the same I/O
    error)."""
    from jaxddpm.trainer import TrainingInterrupted

    if not isinstance(exc, (TrainingInterrupted, KeyboardInterrupt, SystemExit)):
        Stderr.silence()


LIBRARY_LOGGERS = ("absl", "asyncio", "orbax", "tensorstore", "jax._src.xla_bridge")


@contextlib.contextmanager
def quiet_libraries():
    """While a command runs, keep the libraries' own log lines (absl/orbax, TensorStore,
    asyncio) off the terminal and print Python warnings as one line each, unless
    JAXDDPM_DEBUG=1 (--verbose)."""
    import logging
    import warnings

    if os.environ.get("JAXDDPM_DEBUG", "").strip() not in ("", "0"):
        yield
        return
    loggers = [logging.getLogger(name) for name in LIBRARY_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    # A damaged checkpoint is reported in one line (jaxddpm.checkpoint); the reports of its
    # failed array reads that arrive later, from the checkpoint library's threads (up to the
    # process's exit), are not. This filter stays installed.
    if not getattr(sys.unraisablehook, "jaxddpm_filter", False):
        previous_hook = sys.unraisablehook

        def unraisable_hook(unraisable) -> None:
            from jaxddpm.checkpoint import is_failed_read_report

            if not is_failed_read_report(unraisable):
                previous_hook(unraisable)

        unraisable_hook.jaxddpm_filter = True
        sys.unraisablehook = unraisable_hook
    showwarning = warnings.showwarning
    warnings.showwarning = lambda message, category, filename, lineno, file=None, line=None: Stderr.write_line(
        f"warning: {message}")
    try:
        yield
    finally:
        warnings.showwarning = showwarning
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
