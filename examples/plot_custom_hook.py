"""
Writing a hook
==============

Hooks are user code the dynamics loop calls at named points of a step
(:class:`~batchmd.dynamics.HookStage`): ``BEFORE_STEP``, ``AFTER_FORCES``, ``AFTER_STEP``
and ``ON_GRADUATION``. A hook is an object with ``stage``, ``frequency`` and
``__call__(batch, context)``; subclass :class:`~batchmd.dynamics.Hook` for the defaults.

Here two hooks watch an inflight relaxation: one records the live batch's size every few
steps (host-side numbers only: no device synchronisation), the other collects each
system's step count as it graduates.
"""

import matplotlib.pyplot as plt
from ase.build import bulk

from batchmd.ase import run_frames
from batchmd.dynamics import FIRE, ConvergenceHook, Hook, HookStage
from batchmd.models.lj import LennardJones


class LiveBatchSize(Hook):
    """Record the number of systems and atoms in the live batch every ``frequency`` steps."""

    stage = HookStage.AFTER_STEP

    def __init__(self, frequency=2):
        self.frequency = frequency
        self.steps, self.systems, self.atoms = [], [], []

    def __call__(self, batch, context):
        # num_graphs and num_nodes are tensor shapes: known on the host, no sync.
        self.steps.append(context.step)
        self.systems.append(batch.num_graphs)
        self.atoms.append(batch.num_nodes)


class GraduationLog(Hook):
    """Collect (system_id, n_steps, status) of every system when it leaves the run."""

    stage = HookStage.ON_GRADUATION

    def __init__(self):
        self.rows = []

    def __call__(self, batch, context):
        # Graduated systems arrive on the CPU with their final fields.
        for sid, steps, status in zip(batch.system_id.reshape(-1).tolist(), batch["n_steps"].tolist(),
                                      batch["status"].tolist()):
            self.rows.append((sid, steps, status))


# %%
# Run 24 crystals through a live batch of at most 64 atoms
# --------------------------------------------------------
frames = []
for i in range(24):
    atoms = bulk("Ar", "fcc", a=5.3, cubic=True).repeat([(1, 1, 1), (2, 1, 1), (2, 2, 1)][i % 3])
    atoms.rattle(0.05 + 0.01 * (i % 5), seed=i)
    frames.append(atoms)

# ``capacity``: neighbors per atom, allocated once for every system of the dataset.
model = LennardJones(sigma=3.405, epsilon=0.0104, cutoff=8.5125, capacity=160)
size_hook, graduation_hook = LiveBatchSize(frequency=2), GraduationLog()
fire = FIRE(model, convergence_hook=ConvergenceHook.from_forces(0.02), n_steps=200)
result = run_frames(frames, fire, max_atoms=64, refill_frequency=4, hooks=[size_hook, graduation_hook])

print("graduations seen:", len(graduation_hook.rows))
print("first five (system_id, n_steps, status):", graduation_hook.rows[:5])

# %%
# The live batch stays full until the dataset runs dry
# ----------------------------------------------------
fig, ax = plt.subplots(figsize=(6, 3.5))
ax.step(size_hook.steps, size_hook.atoms, where="post", label="atoms in the live batch")
ax.axhline(64, color="k", linestyle=":", label="max_atoms")
ax.set_xlabel("loop step")
ax.set_ylabel("atoms")
ax.legend()
fig.tight_layout()
# Headless (no display: CI, ssh, the docs build) the figure is saved instead of shown.
if plt.get_backend().lower().endswith("agg"):
    plt.savefig("custom_hook.png", dpi=100)
else:
    plt.show()
