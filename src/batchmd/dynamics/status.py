"""Per-system status codes and the system-level fields the dynamics loop maintains.

Every system in a live batch carries five int32 system fields, all on the device:

``stage``
    Index of the stage (in a :class:`~batchmd.dynamics.fused.FusedStage`) the system is in.
``status``
    One of :class:`SystemStatus`. Only ``ACTIVE`` systems move.
``stage_steps``
    Steps taken in the current stage (reset to 0 when the system enters a stage).
``n_steps``
    Steps taken in total, over all stages.
``failure``
    Why a FAILED system failed (:class:`FailureReason` bits; 0 otherwise).

Example
-------
>>> from batchmd.dynamics.status import SystemStatus
>>> SystemStatus.CONVERGED.name
'CONVERGED'
"""

from __future__ import annotations

from enum import IntEnum, IntFlag

__all__ = ["SystemStatus", "FailureReason", "LOOP_FIELDS", "failure_text"]


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
    ``EMPTY``: not a system: the free rows of a slot in a padded live batch (inflight
    refills in place, :mod:`batchmd.dynamics.slot_layout`). Never evaluated, listed,
    moved, graduated or returned to the user.
    """

    ACTIVE = 0
    CONVERGED = 1
    OUT_OF_STEPS = 2
    FAILED = 3
    PENDING = 4
    EMPTY = 5


class FailureReason(IntFlag):
    """Why a system is FAILED: bits of its int32 system field ``failure`` (0: not failed).

    ``NONFINITE_ENERGY`` / ``NONFINITE_FORCES``: the model returned NaN or inf for the
    system (set on the device by the loop). ``HOOK``: a hook set the system's status to
    FAILED (hooks should also OR this bit into ``failure``). ``INVALID_INPUT``: the input
    was rejected before the run (``run_frames(..., invalid="skip")``). ``CELL``: a cell
    filter met a cell it cannot relax (not periodic in all three directions, zero volume) or
    a non-finite stress. ``NOT_PERIODIC``, ``CONSTRAINTS``, ``SPECIES``: refused at
    admission (:mod:`batchmd.dynamics.admission`): a stage the system would meet needs a fully
    periodic 3-D cell, does not support its constraints (``FixAtoms``/``FixCom``), or the
    model has no parameters for one of its elements; such a system never ran.
    :func:`failure_text` turns the bits into the text written with results.
    """

    NONE = 0
    NONFINITE_ENERGY = 1
    NONFINITE_FORCES = 2
    HOOK = 4
    INVALID_INPUT = 8
    CELL = 16
    NOT_PERIODIC = 256
    CONSTRAINTS = 512
    SPECIES = 1024


def failure_text(code: int) -> str:
    """One line naming the failure bits of ``code`` (``""`` for 0).

    >>> failure_text(3)
    'non-finite energy; non-finite forces'
    """
    words = {
        FailureReason.NONFINITE_ENERGY: "non-finite energy",
        FailureReason.NONFINITE_FORCES: "non-finite forces",
        FailureReason.HOOK: "marked failed by a hook",
        FailureReason.INVALID_INPUT: "invalid input",
        FailureReason.CELL: "cell filter: non-periodic or degenerate cell, or non-finite stress",
        FailureReason.NOT_PERIODIC: "refused at admission: a stage it would meet needs a fully periodic 3-D cell",
        FailureReason.CONSTRAINTS: "refused at admission: a stage it would meet does not support its constraints "
                                   "(FixAtoms/FixCom)",
        FailureReason.SPECIES: "refused at admission: the model has no parameters for one of its elements",
    }
    code = int(code)
    return "; ".join(text for bit, text in words.items() if code & int(bit))


#: System-level int32 fields owned by the dynamics loop (``failure``: :class:`FailureReason` bits).
LOOP_FIELDS = ("stage", "status", "stage_steps", "n_steps", "failure")
