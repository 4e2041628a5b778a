"""``batchmd neb PAIRS... -o OUT.csv|OUT.json``: nudged elastic bands, many at once (:mod:`batchmd.neb`).

PAIRS (any format ASE reads):

- one file whose frames alternate initial, final, initial, final, ... (one band per pair);
- two files, ``INITIALS FINALS``: frame i of the first with frame i of the second;
- one file of prepared bands: every frame has ``info["neb_band"]`` (a band's frames are
  consecutive, endpoints first and last, at least 3); images used as given (no
  interpolation). The images file this command writes is such a file.

Writes one row per band to OUT (``.csv``/``.json``; ``barrier_forward_eV``,
``barrier_backward_eV``, ``reaction_energy_eV``, ``ts_image``, ``energies_eV``, ``status``,
``n_steps``, ``fmax_eV_A``, ``ok``, a one-line ``error``), every image of every band to
``--images`` (default ``OUT_STEM_images.extxyz``; ``info["neb_band"]``/``["neb_image"]``),
and one energy-profile PNG per band (``--plot DIR``, default ``OUT_STEM_plots``;
``--no-plot``). Rows and images are rewritten atomically as bands finish, so Ctrl-C (130)
or SIGTERM (143) keeps every finished band; the same command with ``--resume`` computes
only the rest. Exit status 0; 2 for a user error (one line: bad endpoints, too few images,
an unsupported method, ...); 3 when some bands failed or did not converge (named on stderr,
written with ``ok=False``).

Example::

    batchmd neb pairs.extxyz -o barriers.csv --model emt --n-images 7 --climb --fmax 0.05
"""

from __future__ import annotations

import logging
import os
import signal
import time
from pathlib import Path

from batchmd.cli.errors import CLIError, Interrupted

__all__ = ["add_parser", "run_neb", "group_bands"]

log = logging.getLogger("batchmd")


def add_parser(subparsers) -> None:
    from batchmd.cli.common import add_determinism_argument, add_input_arguments
    from batchmd.cli.main import add_verbosity_arguments
    from batchmd.cli.models import add_model_arguments

    parser = subparsers.add_parser(
        "neb", help="nudged elastic bands: barriers of many reaction paths at once (ASE's NEB, batched)",
        description="Every band is one system of the live batch, optimized as ase.optimize.FIRE/LBFGS optimize "
                    "ase.mep.NEB (same steps, same images). PAIRS: one file of alternating initial/final frames, "
                    "two files INITIALS FINALS, or one file of prepared bands (info['neb_band'] on every frame). "
                    "One row per band: barriers (eV), transition-state image, status.")
    parser.add_argument("pairs", nargs="+", metavar="PAIRS", help="endpoint pairs or prepared bands (see above)")
    parser.add_argument("-o", "--output", required=True, help="results, one row per band: .csv or .json")
    parser.add_argument("--resume", action="store_true",
                        help="skip the bands already in OUTPUT from this same run (after Ctrl-C), compute the rest")
    parser.add_argument("--images", default=None, help="every image of every band (default OUTPUT_STEM_images.extxyz)")
    parser.add_argument("--plot", default=None, metavar="DIR", help="one PNG per band (default OUTPUT_STEM_plots)")
    parser.add_argument("--no-plot", action="store_true", help="write no plots")
    group = parser.add_argument_group("neb")
    group.add_argument("--n-images", type=int, default=7, help="images per band from a pair, endpoints included")
    group.add_argument("--method", default="improvedtangent",
                       choices=("improvedtangent", "aseneb", "eb", "spline", "string"),
                       help="ase.mep.NEB method (spline, string: ASE's, without preconditioning)")
    group.add_argument("--climb", action="store_true", help="climbing image")
    group.add_argument("--k", type=float, default=0.1, help="spring constant, eV/Å^2")
    group.add_argument("--interpolation", default="linear", choices=("linear", "idpp"),
                       help="initial path from a pair (ASE's NEB.interpolate)")
    group.add_argument("--mic", default="auto", choices=("auto", "on", "off"),
                       help="minimum image in the interpolation (auto: on for periodic endpoints)")
    group.add_argument("--relax-endpoints", action="store_true",
                       help="relax every pair's endpoints first (one batched FIRE run, --endpoint-fmax)")
    group.add_argument("--endpoint-fmax", type=float, default=0.01, help="endpoint relaxation threshold, eV/Å")
    group.add_argument("--fmax", type=float, default=0.05, help="largest NEB force on any atom of a band, eV/Å")
    group.add_argument("--max-steps", type=int, default=1000, help="optimizer step budget per band")
    group.add_argument("--optimizer", choices=("fire", "lbfgs"), default="fire",
                       help="fire (ase.optimize.FIRE) or lbfgs (ase.optimize.LBFGS)")
    parser.add_argument("--max-atoms", type=int, default=None,
                        help="atom budget of the live batch (a band counts moving images x atoms; default: all, "
                             "at most 4096)")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available, else cpu)")
    parser.add_argument("--dtype", default=None, choices=("float32", "float64"),
                        help="floating precision (default: float32 for machine-learned potentials, float64 for lj "
                             "and emt)")
    add_input_arguments(parser)
    add_determinism_argument(parser)
    add_verbosity_arguments(parser)
    add_model_arguments(parser)
    parser.set_defaults(command=run_neb)


def group_bands(paths, frames_of) -> list:
    """The bands of PAIRS: a list of ``(initial, final)`` pairs or of image lists; CLIError when malformed.

    ``frames_of(path) -> list of ase.Atoms``.
    """
    if len(paths) == 2:
        first, second = frames_of(paths[0]), frames_of(paths[1])
        if len(first) != len(second):
            raise CLIError(f"{paths[0]} has {len(first)} frames and {paths[1]} {len(second)}: INITIALS FINALS must "
                           "hold one frame per band each")
        return list(zip(first, second))
    if len(paths) != 1:
        raise CLIError(f"PAIRS: give one file (alternating initial/final frames, or prepared bands) or two files "
                       f"(INITIALS FINALS), not {len(paths)}")
    frames = frames_of(paths[0])
    tagged = ["neb_band" in a.info for a in frames]
    if any(tagged):
        if not all(tagged):
            first = tagged.index(False)
            raise CLIError(f"{paths[0]}: frame {first} has no info['neb_band'] while others do (a file of prepared "
                           "bands tags every frame)")
        bands, order = {}, []
        for i, atoms in enumerate(frames):
            key = str(atoms.info["neb_band"])
            if key in bands and order[-1] != key:
                raise CLIError(f"{paths[0]}: the frames of band {key!r} are not consecutive (frame {i})")
            if key not in bands:
                bands[key] = []
                order.append(key)
            bands[key].append(atoms)
        for key in order:
            if len(bands[key]) < 3:
                raise CLIError(f"{paths[0]}: band {key!r} has {len(bands[key])} images; a band needs at least 3 "
                               "(endpoints included)")
        return [(key, bands[key]) for key in order]
    if len(frames) % 2:
        raise CLIError(f"{paths[0]}: {len(frames)} frames; a file of pairs alternates initial and final frames "
                       "(an even count)")
    return [(frames[i], frames[i + 1]) for i in range(0, len(frames), 2)]


def _default_path(output: Path, suffix: str) -> Path:
    stem = output.name[: -len(output.suffix)] if output.suffix else output.name
    return output.with_name(stem + suffix)


def _write_images_atomic(frames, path: Path) -> None:
    from ase.io import write

    tmp = path.with_name(path.name + ".tmp" + path.suffix)
    if frames:
        write(str(tmp), frames)
        os.replace(tmp, path)


def run_neb(args) -> int:
    """Run ``batchmd neb`` (see the module docstring); returns the exit status."""
    from batchmd.cli.common import check_number, check_positive_int, default_dtype_name, resolve_device, \
        resolve_dtype
    from batchmd.cli.properties import _existing_rows, _is_ok, _stderr_is_terminal
    from batchmd.cli.run import EXIT_SOME_FAILED, init_warp_quietly

    quiet = getattr(args, "quiet", False)
    output = Path(args.output)
    if output.suffix.lower() not in (".csv", ".json"):
        raise CLIError(f"{output}: the results table is written as .csv or .json, not "
                       f"{output.suffix or '(no extension)'!r}")
    if not output.resolve().parent.is_dir():
        raise CLIError(f"{output}: directory {output.resolve().parent} does not exist")
    for path in args.pairs:
        if Path(path).exists() and output.resolve() == Path(path).resolve():
            raise CLIError(f"the output {output} is an input file: it would be overwritten; choose another -o")
    check_number("--fmax", args.fmax)
    check_number("--k", args.k)
    check_number("--endpoint-fmax", args.endpoint_fmax)
    check_positive_int("--max-steps", args.max_steps, allow_none=False)
    check_positive_int("--max-atoms", args.max_atoms)
    if args.n_images < 3:
        raise CLIError(f"--n-images must be >= 3 (endpoints included), got {args.n_images}")
    images_path = Path(args.images) if args.images else _default_path(output, "_images.extxyz")
    if images_path.resolve() in {Path(p).resolve() for p in args.pairs if Path(p).exists()}:
        raise CLIError(f"--images {images_path} is an input file: it would be overwritten")
    if getattr(args, "deterministic", False):
        from batchmd.runtime import set_deterministic

        set_deterministic()
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype or default_dtype_name(args.model))
    init_warp_quietly()

    from batchmd.cli.common import read_frames
    from batchmd.cli.models import build_model, model_info, model_text
    from batchmd.cli.runner import _interruptible, file_checksum, fingerprint_digest
    from batchmd.neb import Band, plot_band, run_bands
    from batchmd.properties.common import write_rows

    items = group_bands(list(args.pairs), lambda p: read_frames(p, ignore_constraints=args.ignore_constraints))
    bands, names = [], []
    for i, item in enumerate(items):
        if isinstance(item[0], str):
            names.append(item[0])
            bands.append(Band(images=list(item[1]), k=args.k, climb=args.climb, method=args.method, band_id=item[0]))
        else:
            names.append(str(i))
            bands.append(item)
    all_frames = [a for item in items for a in (item[1] if isinstance(item[0], str) else item)]
    model = build_model(args.model, all_frames, sigma=args.sigma, epsilon=args.epsilon, cutoff=args.cutoff,
                        device=device, dtype=dtype)
    info = model_info(model, args.model)
    options = {k: getattr(args, k) for k in ("n_images", "method", "climb", "k", "interpolation", "mic",
                                             "relax_endpoints", "endpoint_fmax", "fmax", "max_steps", "optimizer")}
    fingerprint = {"command": "neb", "input": [file_checksum(p) for p in args.pairs], "model": info,
                   "options": options, "dtype": str(dtype)}
    digest = fingerprint_digest(fingerprint)
    done = _existing_rows(output, digest, len(bands), args.resume)
    kept_images = []
    if done and images_path.exists():
        from ase.io import read

        try:
            kept_images = [a for a in read(str(images_path), ":") if int(a.info.get("neb_index", -1)) in done]
        except Exception as error:  # noqa: BLE001 - a damaged images file is recomputed, not fatal
            log.warning("--resume: cannot read %s (%s); the finished bands' images are not kept", images_path, error)
    if args.resume and len(done) == len(bands):
        failed = sum(not _is_ok(row) for row in done.values())
        if not quiet:
            note = f" ({failed} failed or not converged)" if failed else ""
            print(f"batchmd: --resume: {output} is already complete from this run{note}: nothing recomputed")
        return EXIT_SOME_FAILED if failed else 0
    todo = [i for i in range(len(bands)) if i not in done]
    plot_dir = None if args.no_plot else (Path(args.plot) if args.plot else _default_path(output, "_plots"))
    if plot_dir is not None:
        plot_dir.mkdir(parents=True, exist_ok=True)
    log.info("model: %s; device %s, dtype %s; %d bands (%d from %s)", model_text(info), device,
             str(dtype).removeprefix("torch."), len(bands), len(done), output)
    rows = dict(done)
    images = {}  # band index -> frames
    last_write = [0.0]

    def flush(force=False):
        if force or time.monotonic() - last_write[0] > 1.0:
            write_rows([rows[i] for i in sorted(rows)], output)
            _write_images_atomic(kept_images + [a for i in sorted(images) for a in images[i]], images_path)
            last_write[0] = time.monotonic()

    def finished(result):
        index = todo[result.index]
        result.index = index
        for atoms in result.images:
            atoms.info["neb_band"] = names[index]
            atoms.info["neb_index"] = index
            atoms.info.pop("adsorbate_info", None)
        row = {**result.row(), "band": names[index], "index": index, "ok": result.converged,
               "model": info.get("model", args.model), "run_fingerprint": digest}
        rows[index] = row
        images[index] = result.images
        if plot_dir is not None:
            path = plot_dir / f"band_{index:04d}.png"
            try:
                plot_band(result, path)
            except Exception as error:  # noqa: BLE001 - a plot is never worth a result
                log.warning("band %d: cannot plot %s (%s)", index, path, error)
        flush()

    mic = {"auto": None, "on": True, "off": False}[args.mic]
    start = time.perf_counter()
    try:
        with _interruptible():
            run_bands([bands[i] for i in todo], model, n_images=args.n_images, method=args.method,
                      climb=args.climb, k=args.k, fmax=args.fmax, max_steps=args.max_steps, optimizer=args.optimizer,
                      interpolation=args.interpolation, mic=mic, relax_endpoints=args.relax_endpoints,
                      endpoint_fmax=args.endpoint_fmax, device=device, dtype=dtype, max_atoms=args.max_atoms,
                      on_band=finished, progress=not quiet and _stderr_is_terminal())
    except KeyboardInterrupt as error:
        flush(force=True)
        signum = error.args[0] if isinstance(error, Interrupted) and error.args else signal.SIGINT
        raise Interrupted(signum, f"interrupted ({signal.Signals(signum).name}): {len(rows)} of {len(bands)} bands' "
                                  f"results are in {output}; run the same command with --resume to continue") from None
    except ValueError as error:
        message = str(error)
        if message.startswith("band "):  # name the band as the user knows it
            parts = message.split(":", 1)
            try:
                index = todo[int(parts[0].split()[1])]
                message = f"band {names[index]}" + (":" + parts[1] if len(parts) > 1 else "")
            except (ValueError, IndexError):
                pass
        raise CLIError(message) from None
    elapsed = time.perf_counter() - start
    flush(force=True)
    failed = [i for i in sorted(rows) if not _is_ok(rows[i])]
    for i in failed:
        log.error("band %s %s: %s", rows[i].get("band"), rows[i].get("status"), rows[i].get("error"))
    if not quiet:
        resumed = f", {len(done)} from the interrupted run" if done else ""
        print(f"model: {model_text(info)}")
        print(f"neb: {len(rows) - len(failed)} of {len(rows)} bands converged{resumed} in {elapsed:.1f} s")
        for i in sorted(rows):
            row = rows[i]
            barrier = row.get("barrier_forward_eV")
            text = f"{float(barrier):.4f} eV" if barrier not in (None, "", "None") else "n/a"
            print(f"  band {row.get('band')}: barrier {text}, {row.get('status')} in {row.get('n_steps')} steps")
        plots = f", plots in {plot_dir}" if plot_dir is not None else ""
        print(f"wrote {output}, images in {images_path}{plots}")
    return EXIT_SOME_FAILED if failed else 0
