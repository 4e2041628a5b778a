"""Machine-learned potentials (MLIPs) on batchmd batches: the adapter contract and adapters.

- :mod:`batchmd.models.mlip.base`: :class:`~batchmd.models.mlip.base.GraphModel`, the contract
  (``compute_energy(graph) -> [B]``) and everything shared (edges, species, autograd, chunks).
- :mod:`batchmd.models.mlip.sevennet`: SevenNet (SevenNet-0 ships in the ``sevenn`` package).
- :mod:`batchmd.models.mlip.mace`: MACE from any ``.model`` file.
- :mod:`batchmd.models.mlip.metatomic`: models exported to metatomic.
- :mod:`batchmd.models.mlip.chgnet`: CHGNet (0.3.0, 0.2.0, r2scan ship in the ``chgnet`` package).
- :mod:`batchmd.models.mlip.orb`: ORB v3 conservative models from local ``.ckpt`` files.
- :mod:`batchmd.models.mlip.fairchem`: fairchem's UMA (tasks, charge, spin) and eSEN checkpoints.
- :mod:`batchmd.models.mlip.mattersim`: MatterSim's M3GNet (three-body lists built in torch).
- :mod:`batchmd.models.mlip.nequip`: NequIP and Allegro (nequip >= 0.19).
- :mod:`batchmd.models.mlip.matgl`: matgl's TensorNet and M3GNet potentials.
- :mod:`batchmd.models.mlip.pet`: PET models (upet: PET-MAD, ...) through metatomic.

Load them by name with :func:`batchmd.models.registry.load_model`. Nothing here imports an MLIP
package until a model is built.
"""
