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
    met it; a stage without one, such as MD or an optimizer without ``convergence_hook``,
    ran its ``n_steps``). Not the same as *converged*: such a system's ``converged`` field
    and result ``status`` say so only if every optimizer stage met a criterion
    (:meth:`~batchmd.dynamics.stage_results.StageRecorder.converged`; otherwise
    ``completed``).
    ``OUT_OF_STEPS``: a stage with a convergence criterion exhausted its step budget
    without meeting it; the system graduates without entering later stages.
    ``FAILED``: non-finite energy or forces, a runaway caught by a guard
    (:mod:`batchmd.dynamics.guards`), or a hook marked it failed; taken out of the run
    without stopping the others (``failure`` says why).
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
    a non-finite stress.

    Runaway guards (:mod:`batchmd.dynamics.guards`, set on the device every step):
    ``NONFINITE_CELL`` and ``DENSITY`` (checked before the model is called, so the model never
    sees them), ``NONFINITE_POSITIONS`` / ``NONFINITE_VELOCITIES`` / ``NONFINITE_STRESS``
    (with the force statistics; the stress when it is computed). ``DENSITY``: a fully periodic
    system denser than ``Guards.max_density`` atoms/Å^3 (a collapsing cell), failed before its
    neighbor list or edges are built. ``DISPLACEMENT`` (an MD step would move an atom more than
    ``Guards.max_displacement`` Å), ``ENERGY_DROP`` (the energy per atom fell more than
    ``Guards.max_energy_drop`` eV/atom below its start).
    ``NOT_PERIODIC``, ``CONSTRAINTS``, ``SPECIES``: refused at
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
    NONFINITE_POSITIONS = 32
    NONFINITE_CELL = 64
    NONFINITE_VELOCITIES = 128
    NONFINITE_STRESS = 256
    DENSITY = 512
    DISPLACEMENT = 1024
    ENERGY_DROP = 2048
    NOT_PERIODIC = 4096
    CONSTRAINTS = 8192
    SPECIES = 16384

    @classmethod
    def before_evaluation(cls) -> int:
        """Bits set before the model is called: such a system's energy, forces and stress are NaN."""
        return int(cls.NONFINITE_CELL | cls.DENSITY)


def failure_text(code: int, step: int | None = None) -> str:
    """One line naming the failure bits of ``code`` (``""`` for 0); ``step``: the step it failed at.

    >>> failure_text(3)
    'non-finite energy; non-finite forces'
    >>> failure_text(64, step=4)
    'non-finite cell at step 4'
    """
    words = {
        FailureReason.NONFINITE_ENERGY: "non-finite energy",
        FailureReason.NONFINITE_FORCES: "non-finite forces",
        FailureReason.HOOK: "marked failed by a hook",
        FailureReason.INVALID_INPUT: "invalid input",
        FailureReason.CELL: "cell filter: non-periodic or degenerate cell, or non-finite stress",
        FailureReason.NONFINITE_POSITIONS: "non-finite positions",
        FailureReason.NONFINITE_CELL: "non-finite cell",
        FailureReason.NONFINITE_VELOCITIES: "non-finite velocities",
        FailureReason.NONFINITE_STRESS: "non-finite stress",
        FailureReason.DENSITY: "density above Guards.max_density (collapsing cell)",
        FailureReason.DISPLACEMENT: "an MD step would move an atom more than Guards.max_displacement",
        FailureReason.ENERGY_DROP: "energy per atom fell more than Guards.max_energy_drop below its start",
        FailureReason.NOT_PERIODIC: "refused at admission: a stage it would meet needs a fully periodic 3-D cell",
        FailureReason.CONSTRAINTS: "refused at admission: a stage it would meet does not support its constraints "
                                   "(FixAtoms/FixCom)",
        FailureReason.SPECIES: "refused at admission: the model has no parameters for one of its elements",
    }
    code = int(code)
    text = "; ".join(text for bit, text in words.items() if code & int(bit))
    if text and step is not None:
        text += f" at step {int(step)}"
    return text


#: System-level int32 fields owned by the dynamics loop (``failure``: :class:`FailureReason` bits).
LOOP_FIELDS = ("stage", "status", "stage_steps", "n_steps", "failure")
