"""``mlip_step_split`` for the e3nn >= 0.6 families (fairchem, MatterSim, NequIP), random weights.

Run in the second environment (``.ci/run-e3nn6``'s): ``python -m benchmarks.mlip_step_split_e3nn6
--sizes 16,64 --steps 2``; prints a Markdown table (phases as in ``benchmarks/mlip_step_split.py``,
rattled 8-atom NaCl cells, float32, one torch thread) to paste into ``mlip_step_split.md``.
MatterSim's three-body lists are built inside its ``compute_energy``, so they count as "model".
"""

from __future__ import annotations

import argparse
import copy
import os
import tempfile

import torch

from benchmarks.mlip_step_split import DEVICE, ase_step, batchmd_step, structures


def build(name: str, tmp: str):
    if name == "fairchem":
        from fairchem.core.calculate.ase_calculator import FAIRChemCalculator
        from fairchem.core.units.mlip_unit import load_predict_unit

        from batchmd.models import load_model
        from batchmd.models.mlip.fairchem import random_fairchem_checkpoint

        path = random_fairchem_checkpoint(os.path.join(tmp, "uma.pt"), channels=16)
        return (load_model(f"fairchem:{path}?task=omat"),
                lambda: FAIRChemCalculator(load_predict_unit(path, inference_settings="traineval", device="cpu"),
                                           task_name="omat"))
    if name == "mattersim":
        from mattersim.forcefield.potential import MatterSimCalculator

        from batchmd.models.mlip.mattersim import MatterSimModel, random_mattersim

        potential = random_mattersim()
        reference = copy.deepcopy(potential)
        return MatterSimModel(potential.model), lambda: MatterSimCalculator(potential=reference, device="cpu")
    from nequip.data.transforms import ChemicalSpeciesToAtomTypeMapper, NeighborListTransform
    from nequip.integrations.ase import NequIPCalculator

    from batchmd.models.mlip.nequip import NequIPModel, random_nequip

    module = random_nequip("nequip", model_dtype="float32")
    reference = copy.deepcopy(module)
    return NequIPModel(module), lambda: NequIPCalculator(
        reference, device="cpu", transforms=[ChemicalSpeciesToAtomTypeMapper(reference.type_names),
                                             NeighborListTransform(r_max=4.0)])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="fairchem,mattersim,nequip")
    parser.add_argument("--sizes", default="16,64")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print("| model | B | atoms | step ms | neighbors | graph | model | loop | outside network "
          "| ASE one at a time ms | speed-up |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            model, make_calc = build(name, tmp)
            for b in [int(s) for s in args.sizes.split(",")]:
                frames = structures("nacl", b)
                split = batchmd_step(model, frames, torch.float32, args.steps)
                ase = ase_step(make_calc, frames, 1)
                ms = {k: 1e3 * v for k, v in split.items() if k != "overhead"}
                print(f"| {name} | {b} | {8 * b} | {ms['step']:.0f} | {ms['neighbors']:.1f} | {ms['graph']:.1f} | "
                      f"{ms['model_time']:.0f} | {ms['loop']:.1f} | {100 * split['overhead']:.1f}% | "
                      f"{1e3 * ase:.0f} | {ase / split['step']:.1f}x |", flush=True)


if __name__ == "__main__":
    main()
