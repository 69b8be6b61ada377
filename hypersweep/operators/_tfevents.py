"""Scalars from TensorFlow event files, read as they grow, with the standard library only.

An event file is a TFRecord stream (length, its CRC, an ``Event`` protobuf, its CRC). The Katib
relay decodes the few ``Event`` fields it needs by hand (:mod:`hypersweep.operators._katib_relay`),
so a trial image needs neither TensorFlow nor tensorboard nor protobuf. A TF1 summary stores a
scalar as ``simple_value``; TF2's ``tf.summary.scalar`` stores a scalar tensor.
"""

from __future__ import annotations

from hypersweep.operators._katib_relay import EventScalars, event_scalars, remove_event_files

__all__ = ["EventScalars", "event_scalars", "remove_event_files"]
