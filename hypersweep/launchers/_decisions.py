"""Rank 0's early-stopping decisions, shared with every other rank of a gang at the same step.

Only rank 0 speaks for a trial: its reports reach the orchestrator, which answers with a
decision (continue, stop, pause). Every other rank reports the same steps and must get the same
decision, or one rank would leave a collective its peers are blocked in. The local and the Ray
gang launchers hold one :class:`SharedDecisions` per attempt; how a decision travels to a rank
(a pipe, an actor call) is theirs.
"""

from __future__ import annotations


class SharedDecisions:
    """Decisions by step: rank 0's pending report, and what each other rank's report gets."""

    def __init__(self) -> None:
        self.pending: int | None = None  # rank 0's report that awaits the orchestrator
        self._decided: dict[int, str] = {}
        self._latest: int | None = None

    def decide(self, decision: str) -> int | None:
        """Record ``decision`` for rank 0's pending report; its step, or None if none pends."""
        step, self.pending = self.pending, None
        if step is not None:
            self._decided[step] = decision
            self._latest = step if self._latest is None else max(self._latest, step)
        return step

    def answer(self, step: int, *, rank0_ended: bool) -> str | None:
        """What another rank's report at ``step`` gets now; None while it must wait."""
        if step in self._decided:
            return self._decided[step]
        if rank0_ended or (self._latest is not None and step < self._latest):
            # Rank 0 has ended, or went past this step without reporting it: nothing to wait
            # for, and nothing was decided.
            return "continue"
        return None

    def settled(self, step: int) -> str:
        """The answer for a rank waiting at ``step`` once rank 0 has decided past it or ended."""
        return self._decided.get(step, "continue")
