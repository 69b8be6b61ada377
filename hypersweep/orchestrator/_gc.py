"""Pausing the cyclic garbage collector while a sweep's trials are read in bulk."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def gc_paused() -> Iterator[None]:
    """Run the block with the cyclic garbage collector off, as it was before afterwards.

    Reading a sweep (restoring the replay snapshot, one record per trial) creates hundreds of
    thousands of objects that all stay alive. Each allocation burst triggers collections that
    traverse every object held so far, so the collector's work grows with the sweep read so
    far: pure overhead, as nothing read here is garbage. Reference counting still frees
    everything that is not in a cycle meanwhile.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        # Everything allocated meanwhile goes to the oldest generation as it is (freeze, then
        # unfreeze: two list splices). Left in the youngest, the next allocation would make
        # the collector traverse all of it at once: 0.5 s for 100,000 trials read.
        gc.freeze()
        gc.unfreeze()
        if was_enabled:
            gc.enable()
