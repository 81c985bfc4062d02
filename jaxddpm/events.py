"""TensorBoard event files, written in the caller's thread.

tensorboardX's ``SummaryWriter`` hands events to a background thread and flushes what is
left from an exit handler. When the disk fills, both fail after the run has already
stopped (a traceback from the thread, another at interpreter exit) and the event file stays
open. ``EventLog`` writes and flushes each batch of events where it is called, so a write
fails at its call site like any other file write, and ``close`` releases the file even when
the final flush fails. The file format is TensorBoard's (TFRecord-framed ``Event``
protocol buffers); tensorboardX provides the framing and the summary protos.
"""

from __future__ import annotations

import os
import socket
import time

import numpy as np
from tensorboardX import summary
from tensorboardX.proto import event_pb2
from tensorboardX.record_writer import RecordWriter


class EventLog:
    """An append-only TensorBoard event file in ``logdir``; one new file per instance."""

    def __init__(self, logdir: str):
        os.makedirs(logdir, exist_ok=True)
        now = time.time()
        self.path = os.path.join(logdir, f"events.out.tfevents.{int(now)}.{socket.gethostname()}.{os.getpid()}")
        self._file = RecordWriter(self.path)
        self._write([event_pb2.Event(wall_time=now, file_version="brain.Event:2")])

    def _write(self, events: list) -> None:
        for event in events:
            self._file.write(event.SerializeToString())
        self._file.flush()

    def scalars(self, values: dict[str, float], step: int) -> None:
        """One scalar per tag at ``step``."""
        now = time.time()
        self._write([event_pb2.Event(wall_time=now, step=step, summary=summary.scalar(tag, float(v))) for tag, v in values.items()])

    def image(self, tag: str, image: np.ndarray, step: int) -> None:
        """An HxWxC uint8 image (C = 1 or 3) at ``step``, stored as PNG."""
        self._write([event_pb2.Event(wall_time=time.time(), step=step, summary=summary.image(tag, image, dataformats="HWC"))])

    def close(self) -> None:
        """Flush and close; the file is closed even if the flush fails (the error is raised)."""
        file, self._file = self._file, None
        if file is not None:
            file.close()  # a buffered file closes its descriptor even when its final flush raises
