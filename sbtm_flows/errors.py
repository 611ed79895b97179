"""Errors raised by sbtm_flows.

``ValueError`` is used for bad arguments (wrong shapes, unknown names, non-positive
step sizes).  :class:`SamplingError` is raised when a run itself goes wrong: a target
score that is NaN/inf, a state that blew up, an adaptive solver whose step size
underflowed.  Every message names the value, the time and what to try.
"""

from __future__ import annotations

__all__ = ["SamplingError"]


class SamplingError(RuntimeError):
    """A run went non-finite or could not make progress.

    Attributes:
        t: the simulated time at which the problem was detected (``None`` if unknown).
    """

    def __init__(self, message: str, t: float | None = None):
        super().__init__(message)
        self.t = t
