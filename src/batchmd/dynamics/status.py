"""Per-system status codes and the system-level fields the dynamics loop maintains.

Every system in a live batch carries four int32 system fields, all on the device:

``stage``
    Index of the stage (in a :class:`~batchmd.dynamics.fused.FusedStage`) the system is in.
``status``
    One of :class:`SystemStatus`. Only ``ACTIVE`` systems move.
``stage_steps``
    Steps taken in the current stage (reset to 0 when the system enters a stage).
``n_steps``
    Steps taken in total, over all stages.

Example
-------
>>> from batchmd.dynamics.status import SystemStatus
>>> SystemStatus.CONVERGED.name
'CONVERGED'
"""

from __future__ import annotations

from enum import IntEnum

__all__ = ["SystemStatus", "LOOP_FIELDS"]


class SystemStatus(IntEnum):
    """Life-cycle state of one system in a live batch.

    ``ACTIVE``: still moving in its current stage.
    ``CONVERGED``: finished every stage normally (a stage with a convergence criterion
    met it; a stage without one, such as MD, ran its ``n_steps``).
    ``OUT_OF_STEPS``: a stage with a convergence criterion exhausted its step budget
    without meeting it; the system graduates without entering later stages.
    ``FAILED``: non-finite energy or forces (or a hook marked it failed); taken out of
    the run without stopping the others.
    ``PENDING``: just inserted by an inflight refill; it does not move in its first step,
    whose force evaluation gives it forces at its initial positions, and becomes ACTIVE
    (or graduates, if already converged) at the end of that step. This saves a separate
    evaluation of the newcomers at every refill.
    """

    ACTIVE = 0
    CONVERGED = 1
    OUT_OF_STEPS = 2
    FAILED = 3
    PENDING = 4


#: System-level int32 fields owned by the dynamics loop.
LOOP_FIELDS = ("stage", "status", "stage_steps", "n_steps")
