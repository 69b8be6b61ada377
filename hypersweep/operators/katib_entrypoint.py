"""Run a Katib-style trial command and relay its metrics: no sidecar.

``python -m hypersweep.operators.katib_entrypoint -- COMMAND ARGS...`` does what the command of a
Katib-shaped Sweep's trials does (``python3 -I -c <relay source> -- COMMAND...``, see
:mod:`hypersweep.operators._katib_relay`), for images that have hypersweep installed and for
trial commands written by earlier versions of ``hypersweep katib convert``.
"""

from __future__ import annotations

import sys

from hypersweep.operators._katib_relay import PUSH_FD_ENV, main

__all__ = ["PUSH_FD_ENV", "main"]

if __name__ == "__main__":
    sys.exit(main())
