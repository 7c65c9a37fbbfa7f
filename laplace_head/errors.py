"""Exceptions whose message is meant for the user (printed without a traceback)."""

from __future__ import annotations


class LaplaceHeadError(Exception):
    """Base class: the message names the bad value and says what to do."""
