"""Exception and warning types raised by lazyreg."""

from __future__ import annotations

__all__ = ["LazyregError", "LazyregWarning"]


class LazyregError(ValueError):
    """Bad input or a failed operation, with a message naming the argument and the problem.

    Subclasses :class:`ValueError`, so ``except ValueError`` also catches it.
    """


class LazyregWarning(UserWarning):
    """Something works but probably not the way the user wants (e.g. memory or speed)."""
