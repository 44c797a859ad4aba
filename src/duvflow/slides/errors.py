"""The errors of the slide package: a slide that cannot be used, named with the reason."""

from __future__ import annotations

import os

__all__ = ["MissingMPPError", "SlideReadError"]


class SlideReadError(RuntimeError):
    """A slide cannot be used: unreadable, corrupt, unsupported, or not as the config needs it."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"slide {self.path}: {reason}")


class MissingMPPError(SlideReadError):
    """A size in microns was asked for, but the slide has no microns-per-pixel metadata."""
