"""What a long-running command needs around its loop: a progress display, and SIGINT or
SIGTERM turned into a flag that the loop polls."""

from __future__ import annotations

import contextlib
import signal
import sys
import threading


@contextlib.contextmanager
def stop_requests():
    """A dict that gets ``"signum"`` when SIGINT or SIGTERM arrives (main thread only;
    elsewhere the dict stays empty and signals keep their handlers)."""
    flag: dict = {}
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in previous:
        signal.signal(sig, lambda signum, frame: flag.setdefault("signum", signum))
    try:
        yield flag
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class Progress:
    """A progress bar with ETA on a terminal, plain log lines otherwise; silent if quiet."""

    def __init__(self, total: int, initial: int = 0, quiet: bool = False, unit: str = "step"):
        self.bar = None
        self.quiet = quiet
        if sys.stderr.isatty() and not quiet:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, unit=unit, dynamic_ncols=True)

    def update(self, n: int, message: str = "") -> None:
        if self.bar is not None:
            self.bar.update(n)
            if message:
                self.bar.set_postfix_str(message, refresh=False)

    def log(self, line: str) -> None:
        if self.quiet:
            return
        if self.bar is not None:
            self.bar.write(line)
        else:
            print(line, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
