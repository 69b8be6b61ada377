"""Errors shared by every part of hypersweep."""

from __future__ import annotations


class ConfigError(ValueError):
    """Invalid user input (a space, a sweep file, an argument).

    The message names the offending field and what is expected, so that the CLI can print it as
    it is, without a traceback. It is raised before anything starts.
    """


class SweepFailed(RuntimeError):
    """A sweep stopped because its trials fail systematically (e.g. a bug in the objective).

    Raised by ``tune()`` (the CLI exits with status 1) when the first few finished trials all
    failed and none succeeded; the message holds the objective's traceback.
    """
