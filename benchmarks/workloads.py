"""The benchmark workloads W1-W4 (deterministic: fixed seeds, fixed order).

Units: eV, Å, amu, K, fs. Every builder returns fresh ``ase.Atoms`` copies, so a peer may
relax or integrate them in place without disturbing another peer's input.

- W1: 64 rattled FCC argon supercells (7,056 atoms), FIRE to fmax 0.01 eV/Å, <= 500 steps.
- W2: the first 16 of them (1,560 atoms), Langevin 80 K, dt 2 fs, friction 0.01/fs, 200 steps.
- W3: one 32,000-atom argon FCC box (20x20x20 cubic cells), NVE, dt 2 fs, 1,000 steps.
- W4: 1,000 small cells with rattle amplitudes from 0.01 to 0.3 Å (inflight vs static batching).
- W4W: the same cells with amplitudes from 0.01 to 0.6 Å (widely spread convergence times).
"""

from __future__ import annotations

import numpy as np
from ase import Atoms
from ase.build import bulk

# Lennard-Jones argon, shared by every peer.
SIGMA = 3.405  # Å
EPSILON = 0.0104  # eV
CUTOFF = 2.5 * SIGMA  # 8.5125 Å; pair energies shifted to zero here (ASE smooth=False)
LATTICE = 5.26  # Å, cubic FCC cell of 4 atoms

# W1 (FIRE)
FMAX = 0.01  # eV/Å, on the per-atom force norm (ASE's criterion)
FIRE_MAX_STEPS = 500
W1_SHAPES = [
    (2, 2, 2), (2, 2, 3), (2, 2, 4), (2, 3, 3), (2, 3, 4),
    (3, 3, 3), (2, 4, 4), (3, 3, 4), (3, 4, 4), (4, 4, 4),
]
W1_N_STRUCTURES = 64
W1_N_ATOMS = 7056
W1_RATTLE = 0.1  # Å
W1_SEED = 2024

# W2 (NVT Langevin)
W2_N_STRUCTURES = 16
W2_N_ATOMS = 1560
W2_TEMPERATURE = 80.0  # K
W2_DT = 2.0  # fs
W2_FRICTION = 0.01  # 1/fs
W2_STEPS = 200
W2_SEED = 7

# W3 (NVE, large box)
W3_REPEAT = 20
W3_N_ATOMS = 32000
W3_DT = 2.0  # fs
W3_STEPS = 1000
W3_TEMPERATURE = 80.0  # K, initial Maxwell-Boltzmann velocities
W3_SEED = 11

# W4 (inflight vs static)
W4_N_STRUCTURES = 1000
W4_SHAPES = W1_SHAPES[:6]  # 2x2x2 .. 3x3x3 (32..108 atoms)
W4_RATTLE_MIN, W4_RATTLE_MAX = 0.01, 0.3  # Å
W4W_RATTLE_MAX = 0.6  # Å: FIRE needs ~10 to ~200 steps (0.01..0.3 Å gives ~10..65)
W4_SEED = 4242


def argon_cell() -> Atoms:
    """The 4-atom cubic FCC argon cell."""
    return bulk("Ar", "fcc", a=LATTICE, cubic=True)


def _rattled(shape, amplitude: float, rng: np.random.Generator) -> Atoms:
    atoms = argon_cell().repeat(shape)
    atoms.positions = atoms.positions + rng.normal(0.0, amplitude, size=atoms.positions.shape)
    return atoms


def _maxwell_boltzmann(atoms: Atoms, temperature: float, seed: int) -> None:
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary

    MaxwellBoltzmannDistribution(atoms, temperature_K=temperature, rng=np.random.default_rng(seed))
    Stationary(atoms)


def w1_structures(n: int = W1_N_STRUCTURES) -> list[Atoms]:
    """W1: the rattled supercells, shapes cycling through ``W1_SHAPES``.

    The full set (n=64) holds exactly 7,056 atoms. One generator draws every
    displacement in order, so structure i is the same whatever ``n`` is.
    """
    rng = np.random.default_rng(W1_SEED)
    out = [_rattled(W1_SHAPES[i % len(W1_SHAPES)], W1_RATTLE, rng) for i in range(W1_N_STRUCTURES)]
    if n == W1_N_STRUCTURES:
        assert sum(len(a) for a in out) == W1_N_ATOMS, sum(len(a) for a in out)
    return out[:n]


def w2_structures() -> list[Atoms]:
    """W2: the first 16 W1 structures (1,560 atoms) with 80 K Maxwell-Boltzmann velocities."""
    out = w1_structures()[:W2_N_STRUCTURES]
    assert sum(len(a) for a in out) == W2_N_ATOMS, sum(len(a) for a in out)
    for i, atoms in enumerate(out):
        _maxwell_boltzmann(atoms, W2_TEMPERATURE, W2_SEED + i)
    return out


def w3_structure(repeat: int = W3_REPEAT) -> Atoms:
    """W3: an unrattled FCC argon box (20^3 cubic cells = 32,000 atoms), 80 K velocities."""
    atoms = argon_cell().repeat((repeat, repeat, repeat))
    if repeat == W3_REPEAT:
        assert len(atoms) == W3_N_ATOMS, len(atoms)
    _maxwell_boltzmann(atoms, W3_TEMPERATURE, W3_SEED)
    return atoms


def w4_structures(n: int = W4_N_STRUCTURES, rattle_max: float = W4_RATTLE_MAX) -> list[Atoms]:
    """W4: ``n`` small cells whose rattle amplitudes spread evenly over 0.01..``rattle_max`` Å.

    Amplitudes are shuffled (fixed seed), so easy and hard relaxations are interleaved
    and a static batch is held up by its slowest member.
    """
    rng = np.random.default_rng(W4_SEED)
    amplitudes = rng.permutation(np.linspace(W4_RATTLE_MIN, rattle_max, n))
    return [_rattled(W4_SHAPES[i % len(W4_SHAPES)], float(a), rng) for i, a in enumerate(amplitudes)]


def w4w_structures(n: int = W4_N_STRUCTURES) -> list[Atoms]:
    """W4W: the W4 cells with amplitudes 0.01..0.6 Å, so FIRE step counts spread ~10..200.

    With amplitudes up to 0.3 Å (W4) every structure stays in its harmonic basin and FIRE
    needs 10 to 65 steps, a spread that caps what any refill policy can gain (see the
    benchmark README); larger rattles give the long tail of real relaxation campaigns.
    """
    return w4_structures(n, rattle_max=W4W_RATTLE_MAX)


def n_atoms(structures) -> int:
    return sum(len(a) for a in structures)


def shape_sweep_structure(n_cells_per_side: int) -> Atoms:
    """A rattled cubic box of n^3 FCC cells (4 n^3 atoms) for the system-size sweep."""
    rng = np.random.default_rng(W1_SEED + n_cells_per_side)
    return _rattled((n_cells_per_side,) * 3, W1_RATTLE, rng)


# W5 (a structure-prediction-style relaxation campaign)
W5_N_STRUCTURES = 300
W5_SEED = 5151
W5_FMAX = 0.05  # eV/Å
W5_MAX_STEPS = 400
#: Compositions (formula units) and a rough volume per atom (Å^3) to start from.
W5_CHEMISTRIES = {"Si": ({"Si": 1}, 20.0), "SiO2": ({"Si": 1, "O": 2}, 15.0), "TiO2": ({"Ti": 1, "O": 2}, 10.5),
                  "NaCl": ({"Na": 1, "Cl": 1}, 22.0), "LiCoO2": ({"Li": 1, "Co": 1, "O": 2}, 8.5)}
#: Space groups with few symmetry operations (so 4-32 atoms), by lattice system.
W5_SPACEGROUPS = [(1, "triclinic"), (2, "triclinic"), (3, "monoclinic"), (4, "monoclinic"), (5, "monoclinic"),
                  (6, "monoclinic"), (10, "monoclinic"), (14, "monoclinic"), (16, "orthorhombic"),
                  (19, "orthorhombic"), (25, "orthorhombic"), (47, "orthorhombic")]
W5_MIN_ATOMS, W5_MAX_ATOMS = 4, 32
W5_MIN_DISTANCE = 1.6  # Å: random cells are scaled so that no two atoms start closer


def _random_cellpar(lattice: str, rng: np.random.Generator) -> list[float]:
    a, b, c = rng.uniform(0.8, 1.25, size=3)
    if lattice == "triclinic":
        alpha, beta, gamma = rng.uniform(75.0, 105.0, size=3)
    elif lattice == "monoclinic":
        alpha, beta, gamma = 90.0, rng.uniform(90.0, 120.0), 90.0
    else:
        alpha = beta = gamma = 90.0
    return [a, b, c, alpha, beta, gamma]


def random_symmetric_crystal(rng: np.random.Generator, chemistry: str | None = None) -> Atoms:
    """One random symmetric crystal of a W5 chemistry with 4..32 atoms (``ase.spacegroup.crystal``).

    A space group with few operations and a composition are drawn, each species gets
    random fractional positions (whole formula units in the cell), the cell gets random
    lengths and angles for its lattice system and is scaled to the chemistry's volume per
    atom, then stretched if two atoms are closer than ``W5_MIN_DISTANCE``. Draws that
    land outside 4..32 atoms (atoms on special positions merge) are redrawn.
    """
    from ase.geometry import get_distances
    from ase.spacegroup import Spacegroup, crystal

    names = list(W5_CHEMISTRIES)
    while True:
        name = chemistry or names[int(rng.integers(len(names)))]
        formula, vol_per_atom = W5_CHEMISTRIES[name]
        number, lattice = W5_SPACEGROUPS[int(rng.integers(len(W5_SPACEGROUPS)))]
        n_ops = len(Spacegroup(number).get_symop())
        units_per_orbit = int(rng.integers(1, 3))
        symbols, basis = [], []
        for element, count in formula.items():
            for _ in range(count * units_per_orbit):
                symbols.append(element)
                basis.append(rng.uniform(0.0, 1.0, size=3))
        if not W5_MIN_ATOMS <= len(symbols) * n_ops <= W5_MAX_ATOMS:
            continue
        try:
            atoms = crystal(symbols, basis=basis, spacegroup=number, cellpar=_random_cellpar(lattice, rng),
                            symprec=1e-3, onduplicates="keep")
        except Exception:  # an inconsistent draw (ASE refuses it): draw again
            continue
        if not W5_MIN_ATOMS <= len(atoms) <= W5_MAX_ATOMS:
            continue
        atoms.set_cell(atoms.cell * (vol_per_atom * len(atoms) / atoms.get_volume()) ** (1 / 3), scale_atoms=True)
        _, d = get_distances(atoms.positions, cell=atoms.cell, pbc=True)
        d = d + np.eye(len(atoms)) * 1e9
        dmin = float(d.min())
        if dmin < 1e-3:
            continue
        if dmin < W5_MIN_DISTANCE:
            atoms.set_cell(atoms.cell * (W5_MIN_DISTANCE / dmin), scale_atoms=True)
        atoms.info["chemistry"] = name
        atoms.info["spacegroup"] = number
        return atoms


def w5_structures(n: int = W5_N_STRUCTURES) -> list[Atoms]:
    """W5: ``n`` random symmetric crystals of mixed chemistry (Si, SiO2, TiO2, NaCl, LiCoO2), 4..32 atoms.

    One generator (seed ``W5_SEED``) draws them in order, so the first k structures are
    the same whatever ``n`` is; chemistries cycle so that every subset mixes all five.
    """
    rng = np.random.default_rng(W5_SEED)
    names = list(W5_CHEMISTRIES)
    return [random_symmetric_crystal(rng, names[i % len(names)]) for i in range(n)]
