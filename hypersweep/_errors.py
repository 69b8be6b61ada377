"""Errors shared by every part of hypersweep."""

from __future__ import annotations


class ConfigError(ValueError):
    """Invalid user input (a space, a sweep file, an argument).

    The message names the offending field and what is expected, so that the CLI can print it as
    it is, without a traceback. It is raised before anything starts.
    """
