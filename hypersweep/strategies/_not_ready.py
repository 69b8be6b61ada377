"""The signal a strategy gives when it has no config to propose right now.

A module of its own, below the samplers and the Ray Tune searcher adapter, which both raise it.
"""

from __future__ import annotations


class StrategyNotReady(Exception):
    """Raised by a sampler that has no config to propose for a fresh trial right now.

    The orchestrator puts the trial back in the queue and claims no other fresh trial until a
    running one ends; with ``exhausted`` the strategy will never propose another config (the
    sweep ends once the trials already proposed are done). Ray Tune's searchers work this way
    (``suggest`` returns None or ``Searcher.FINISHED``).
    """

    def __init__(self, message: str = "", *, exhausted: bool = False) -> None:
        super().__init__(message or ("no more configs" if exhausted else "no config yet"))
        self.exhausted = exhausted
