"""TensorBoard event files, written in the caller's thread, with no dependency.

An event file is a sequence of TFRecords (length, masked CRC-32C of the length, data,
masked CRC-32C of the data), each holding one ``tensorflow.Event`` protocol buffer. The few
fields jaxddpm writes (wall time, step, file version, scalar and PNG image summaries) are
encoded here directly: the libraries that provide these protos load far more than they
are needed for (tensorboardX imports PyTorch when it is installed).

``EventLog`` writes and flushes each batch of events where it is called, so a write fails
at its call site like any other file write (no background thread, no exit handler), and
``close`` releases the file even when the final flush fails.
"""

from __future__ import annotations

import io
import os
import socket
import struct
import time

import numpy as np
from PIL import Image


def _crc32c_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
        table.append(crc)
    return table


_CRC32C_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), the checksum of TFRecord framing."""
    crc = 0xFFFFFFFF
    table = _CRC32C_TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _masked_crc(data: bytes) -> bytes:
    crc = crc32c(data)
    return struct.pack("<I", (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF)


def tfrecord(data: bytes) -> bytes:
    length = struct.pack("<Q", len(data))
    return length + _masked_crc(length) + data + _masked_crc(data)


# Protocol buffer wire format: a field is a varint key (number << 3 | wire type) and a value.
def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        bits, n = n & 0x7F, n >> 7
        out.append(bits | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _int_field(number: int, value: int) -> bytes:
    return _varint(number << 3) + _varint(value)


def _bytes_field(number: int, value: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(value)) + value


def _event(wall_time: float, step: int = 0, *, file_version: str = "", values: list[bytes] = ()) -> bytes:
    """``tensorflow.Event``: wall_time = 1 (double), step = 2, file_version = 3,
    summary = 5 (``Summary``, whose repeated ``value`` = 1)."""
    out = _varint(1 << 3 | 1) + struct.pack("<d", wall_time)
    if step:
        out += _int_field(2, step)
    if file_version:
        out += _bytes_field(3, file_version.encode())
    if values:
        out += _bytes_field(5, b"".join(_bytes_field(1, v) for v in values))
    return out


def _scalar_value(tag: str, value: float) -> bytes:
    """``Summary.Value``: tag = 1, simple_value = 2 (float)."""
    return _bytes_field(1, tag.encode()) + _varint(2 << 3 | 5) + struct.pack("<f", value)


def _image_value(tag: str, image: np.ndarray) -> bytes:
    """``Summary.Value`` with image = 4 (``Summary.Image``: height = 1, width = 2,
    colorspace = 3, encoded_image_string = 4)."""
    height, width, channels = image.shape
    png = io.BytesIO()
    Image.fromarray(image[..., 0] if channels == 1 else image).save(png, format="PNG")
    encoded = _int_field(1, height) + _int_field(2, width) + _int_field(3, channels) + _bytes_field(4, png.getvalue())
    return _bytes_field(1, tag.encode()) + _bytes_field(4, encoded)


class EventLog:
    """An append-only TensorBoard event file in ``logdir``; one new file per instance."""

    def __init__(self, logdir: str):
        os.makedirs(logdir, exist_ok=True)
        now = time.time()
        self.path = os.path.join(logdir, f"events.out.tfevents.{int(now)}.{socket.gethostname()}.{os.getpid()}")
        self._file = open(self.path, "wb")
        self._write([_event(now, file_version="brain.Event:2")])

    def _write(self, events: list[bytes]) -> None:
        self._file.write(b"".join(tfrecord(e) for e in events))
        self._file.flush()

    def scalars(self, values: dict[str, float], step: int) -> None:
        """One scalar per tag at ``step``."""
        now = time.time()
        self._write([_event(now, step, values=[_scalar_value(tag, float(v))]) for tag, v in values.items()])

    def image(self, tag: str, image: np.ndarray, step: int) -> None:
        """An HxWxC uint8 image (C = 1 or 3) at ``step``, stored as PNG."""
        self._write([_event(time.time(), step, values=[_image_value(tag, np.asarray(image, np.uint8))])])

    def close(self) -> None:
        """Flush and close; the file is closed even if the flush fails (the error is raised)."""
        file, self._file = self._file, None
        if file is not None:
            file.close()  # a buffered file closes its descriptor even when its final flush raises
