"""Scalars from TensorFlow event files, read as they grow, without importing TensorFlow.

An event file is a TFRecord stream (length, its CRC, an ``Event`` protobuf, its CRC); the
protobuf classes come from ``tensorboard`` (protobuf only: tensorboard's readers would import
TensorFlow, seconds per trial). A TF1 summary stores a scalar as ``simple_value``; TF2's
``tf.summary.scalar`` stores a scalar tensor.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

_HEADER = 12  # uint64 length + uint32 masked CRC of the length
_FOOTER = 4  # uint32 masked CRC of the data
_DTYPES = {1: "<f", 2: "<d"}  # DT_FLOAT, DT_DOUBLE


def _scalar(value: object) -> float | None:
    kind = value.WhichOneof("value")  # type: ignore[attr-defined]
    if kind == "simple_value":
        return float(value.simple_value)  # type: ignore[attr-defined]
    if kind != "tensor":
        return None
    tensor = value.tensor  # type: ignore[attr-defined]
    if tensor.float_val:
        return float(tensor.float_val[0])
    if tensor.double_val:
        return float(tensor.double_val[0])
    form = _DTYPES.get(tensor.dtype)
    if form and len(tensor.tensor_content) == struct.calcsize(form):
        return float(struct.unpack(form, tensor.tensor_content)[0])
    return None


class EventScalars:
    """The scalars ``(step, tag, value)`` appended to the event files of a directory (or one
    file) since the last :meth:`read`."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self._offsets: dict[Path, int] = {}

    def _files(self) -> list[Path]:
        if self.path.is_file():
            return [self.path]
        if not self.path.is_dir():
            return []
        return sorted(p for p in self.path.rglob("*") if p.is_file() and "tfevents" in p.name)

    def read(self) -> list[tuple[int, str, float]]:
        try:
            from tensorboard.compat.proto import event_pb2
        except ImportError:
            raise RuntimeError(
                "the TensorFlowEvent collector reads event files with tensorboard's protobuf "
                "classes: install tensorboard in the trial image (pip install "
                "'hypersweep[tracking]')"
            ) from None

        found: list[tuple[int, str, float]] = []
        for file in self._files():
            offset = self._offsets.get(file, 0)
            with open(file, "rb") as handle:
                handle.seek(offset)
                data = handle.read()
            position = 0
            while len(data) - position >= _HEADER:
                (length,) = struct.unpack("<Q", data[position : position + 8])
                end = position + _HEADER + length + _FOOTER
                if end > len(data):
                    break  # a record still being written
                event = event_pb2.Event.FromString(data[position + _HEADER : end - _FOOTER])
                for value in event.summary.value:
                    number = _scalar(value)
                    if number is not None:
                        found.append((int(event.step), str(value.tag), number))
                position = end
            self._offsets[file] = offset + position
        return found


def remove_event_files(path: str) -> None:
    """Event files left in ``path`` by an earlier attempt (a fresh pod would have none)."""
    scalars = EventScalars(path)
    for file in scalars._files():
        os.remove(file)
