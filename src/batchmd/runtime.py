"""Warp runtime: initialisation, devices, streams and zero-copy torch <-> Warp views.

Everything in batchmd that touches Warp goes through this module, so Warp is
initialised in exactly one place (quietly, with its kernel cache respected) and
every launch runs on torch's current CUDA stream when on a GPU.

Example
-------
>>> import torch
>>> from batchmd.runtime import to_warp, warp_device
>>> x = torch.zeros(4, 3, dtype=torch.float64)
>>> wx = to_warp(x, vector=True)          # zero-copy view, dtype wp.vec3d
>>> wx.shape, str(warp_device(x.device))
((4,), 'cpu')
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import torch
import warp as wp

__all__ = [
    "init_warp",
    "warp_device",
    "warp_scalar",
    "warp_vec3",
    "warp_mat33",
    "to_warp",
    "launch",
    "warp_stream",
    "torch_threads",
    "set_deterministic",
    "WarpViewCache",
    "LaunchCache",
    "CachedLaunch",
]

_INITIALISED = False


def init_warp(quiet: bool | None = None) -> None:
    """Initialise Warp once per process.

    Parameters
    ----------
    quiet : bool, optional
        Suppress Warp's start-up banner and module-load messages. Defaults to
        True unless the environment variable ``BATCHMD_WARP_VERBOSE=1`` is set.

    Warp's kernel cache (``WARP_CACHE_PATH`` or Warp's default) is respected, so
    kernels compiled once are reused by later processes.
    """
    global _INITIALISED
    if _INITIALISED:
        return
    if quiet is None:
        quiet = os.environ.get("BATCHMD_WARP_VERBOSE", "0") != "1"
    if quiet:
        wp.config.log_level = wp.LOG_WARNING
        _init_capturing_stderr()
    else:
        wp.init()
    _INITIALISED = True


def _init_capturing_stderr() -> None:
    """``wp.init()`` with what it prints from C on file descriptor 2 captured.

    On a machine without a GPU Warp prints "Could not find or load the NVIDIA CUDA driver"
    at start-up; for a CPU run that is not news. The captured lines go to the ``batchmd``
    logger at INFO level (``logging.basicConfig(level=logging.INFO)`` shows them), except
    lines that are not about the missing CUDA driver, which are re-issued as warnings.
    Where file descriptor 2 cannot be redirected, Warp prints as usual.
    """
    import logging
    import sys
    import tempfile

    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):
        wp.init()
        return
    with tempfile.TemporaryFile(mode="w+b") as capture:
        os.dup2(capture.fileno(), 2)
        try:
            wp.init()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        capture.seek(0)
        text = capture.read().decode(errors="replace")
    log = logging.getLogger("batchmd")
    for line in filter(None, (line.strip() for line in text.splitlines())):
        if "CUDA driver" in line or "CUDA Toolkit" in line:
            log.info("warp: %s", line)
        else:
            import warnings

            warnings.warn(f"warp: {line}", RuntimeWarning, stacklevel=3)


def warp_device(device: torch.device | str | None) -> wp.context.Device:
    """Map a torch device (or string) to the corresponding Warp device.

    ``cpu`` maps to Warp's ``cpu``; ``cuda`` and ``cuda:k`` map to the Warp CUDA
    device of the same ordinal (``cuda`` meaning torch's current device).
    """
    init_warp()
    if device is None:
        device = torch.device("cpu")
    device = torch.device(device)
    if device.type == "cpu":
        return wp.get_device("cpu")
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return wp.get_device(f"cuda:{index}")
    raise ValueError(f"batchmd: device type {device.type!r} is not supported by Warp (use cpu or cuda)")


def warp_scalar(dtype: torch.dtype) -> Any:
    """Warp scalar type for a torch floating dtype (float32 -> wp.float32, float64 -> wp.float64)."""
    if dtype == torch.float32:
        return wp.float32
    if dtype == torch.float64:
        return wp.float64
    raise ValueError(f"batchmd: floating dtype must be float32 or float64, got {dtype}")


def warp_vec3(dtype: torch.dtype) -> Any:
    """Warp 3-vector type for a torch floating dtype (wp.vec3f or wp.vec3d)."""
    return wp.vec3d if warp_scalar(dtype) is wp.float64 else wp.vec3f


def warp_mat33(dtype: torch.dtype) -> Any:
    """Warp 3x3 matrix type for a torch floating dtype (wp.mat33f or wp.mat33d)."""
    return wp.mat33d if warp_scalar(dtype) is wp.float64 else wp.mat33f


_INT_TYPES = {torch.int32: wp.int32, torch.int64: wp.int64, torch.bool: wp.bool, torch.uint8: wp.uint8}


def to_warp(tensor: torch.Tensor, vector: bool = False, matrix: bool = False, requires_grad: bool = False) -> wp.array:
    """Zero-copy Warp view of a contiguous torch tensor.

    Parameters
    ----------
    tensor : torch.Tensor
        Contiguous tensor on CPU or CUDA.
    vector : bool
        View a ``[..., 3]`` floating tensor as an array of ``vec3`` (one fewer dimension).
    matrix : bool
        View a ``[..., 3, 3]`` floating tensor as an array of ``mat33``.

    The view shares memory with ``tensor``: writes from a kernel are visible in torch.
    """
    if not tensor.is_contiguous():
        raise ValueError("batchmd: to_warp needs a contiguous tensor (call .contiguous() first)")
    if vector and matrix:
        raise ValueError("batchmd: to_warp takes vector or matrix, not both")
    if vector:
        dtype = warp_vec3(tensor.dtype)
    elif matrix:
        dtype = warp_mat33(tensor.dtype)
    elif tensor.dtype in _INT_TYPES:
        dtype = _INT_TYPES[tensor.dtype]
    else:
        dtype = warp_scalar(tensor.dtype)
    init_warp()
    return wp.from_torch(tensor, dtype=dtype, requires_grad=requires_grad)


@contextlib.contextmanager
def warp_stream(device: torch.device | str | None):
    """Context in which Warp launches run on torch's current CUDA stream (no-op on CPU)."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    if device.type == "cuda":
        stream = wp.stream_from_torch(torch.cuda.current_stream(device))
        with wp.ScopedStream(stream, sync_enter=False):
            yield
    else:
        yield


@contextlib.contextmanager
def torch_threads(n: int | None):
    """Run the block with torch's intra-op thread count set to ``n``, then restore it (None: unchanged).

    Example
    -------
    >>> with torch_threads(1):
    ...     pass
    """
    if n is None or n == torch.get_num_threads():
        yield
        return
    if int(n) < 1:
        raise ValueError(f"batchmd: thread count must be >= 1, got {n!r}")
    before = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def set_deterministic(threads: int = 1) -> None:
    """Make runs bitwise reproducible: the same inputs on the same machine and software give the same bits.

    batchmd's own Warp kernels (neighbor lists, Lennard-Jones, integrators, optimizers,
    reductions) use no floating-point atomics, so they are already deterministic on CPU and
    CUDA, for any thread count. A machine-learned potential runs torch operators, and some
    of those reduce in an order that changes from run to run (observed: SevenNet-0 in
    float32 on 2 CPU threads, positions differing by 1.4e-6 Å after a relaxation). This
    function sets, for the whole process:

    - ``torch.use_deterministic_algorithms(True, warn_only=True)``: torch's deterministic
      kernels; an operator without one warns (``UserWarning``) instead of failing;
    - ``torch.set_num_threads(threads)``: a fixed intra-op thread count (1 by default: one
      order of every CPU reduction);
    - on CUDA, ``CUBLAS_WORKSPACE_CONFIG=":4096:8"`` (unless already set; it must be set
      before the first cuBLAS call) and ``torch.backends.cudnn.deterministic = True``,
      ``benchmark = False``.

    Bitwise equality then holds between runs with the same device, dtype, thread count,
    torch / Warp / model package versions and batch composition (``max_atoms``); see
    docs/cli.rst ("Reproducibility"). It costs speed on CPUs with many cores.

    Parameters
    ----------
    threads : int
        torch intra-op threads (>= 1).

    Raises
    ------
    ValueError
        ``threads`` < 1.
    """
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"batchmd: set_deterministic: threads must be an integer >= 1, got {threads!r}")
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.set_num_threads(threads)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def launch(kernel, dim, inputs, device: torch.device | str | None, outputs=None) -> None:
    """Launch a Warp kernel on the Warp device matching ``device``, on torch's current stream.

    A launch of zero threads is skipped. Arguments are passed through to ``wp.launch``.
    """
    if (isinstance(dim, int) and dim == 0) or (isinstance(dim, tuple) and 0 in dim):
        return
    wdev = warp_device(device)
    if wdev.is_cuda:
        stream = wp.stream_from_torch(torch.cuda.current_stream(torch.device(device)))
        wp.launch(kernel, dim=dim, inputs=inputs, outputs=outputs or [], device=wdev, stream=stream)
    else:
        wp.launch(kernel, dim=dim, inputs=inputs, outputs=outputs or [], device=wdev)


class WarpViewCache:
    """Warp views of torch tensors, rebuilt only when a tensor's storage, shape or dtype changes.

    Creating a view with ``wp.from_torch`` costs ~10-20 µs of Python; a dynamics step
    launches several kernels on the same persistent buffers, so stages and the loop keep
    one cache each and call ``views(name, tensor, vector=..., matrix=...)``. The cached
    view holds a reference to its tensor, so a storage address is never reused while cached.

    Example
    -------
    >>> import torch
    >>> views = WarpViewCache()
    >>> x = torch.zeros(5, 3)
    >>> views("x", x, vector=True) is views("x", x, vector=True)
    True
    """

    def __init__(self) -> None:
        self._cache: dict = {}

    def __call__(self, name: str, tensor: torch.Tensor, vector: bool = False, matrix: bool = False) -> wp.array:
        key = (tensor.data_ptr(), tuple(tensor.shape), tensor.stride(), tensor.dtype, vector, matrix)
        hit = self._cache.get(name)
        if hit is not None and hit[0] == key:
            return hit[1]
        view = to_warp(tensor, vector=vector, matrix=matrix)
        self._cache[name] = (key, view)
        return view

    def clear(self) -> None:
        """Drop every cached view."""
        self._cache.clear()


def _same_arg(old, new) -> bool:
    """True when a recorded launch argument can be kept: the same object, or an equal plain number."""
    return old is new or (type(old) is type(new) and type(new) in (int, float, bool) and old == new)


class _Recorded:
    """One recorded Warp launch whose size and arguments are updated in place."""

    __slots__ = ("cmd", "dim", "args", "wdev")

    def __init__(self, kernel, dim, inputs, device) -> None:
        self.wdev = warp_device(device)
        self.cmd = wp.launch(kernel, dim=dim, inputs=inputs, device=self.wdev, record_cmd=True)
        self.dim = dim
        self.args = list(inputs)

    def update(self, dim, inputs) -> None:
        if dim != self.dim:
            self.cmd.set_dim(dim)
            self.dim = dim
        args = self.args
        if len(args) != len(inputs):
            raise TypeError(f"batchmd: kernel {self.cmd.kernel.key} takes {len(args)} arguments, got {len(inputs)}")
        for i, value in enumerate(inputs):
            if not _same_arg(args[i], value):
                self.cmd.set_param_at_index(i, value)
                args[i] = value

    def run(self, device) -> None:
        if self.wdev.is_cuda:
            self.cmd.launch(stream=wp.stream_from_torch(torch.cuda.current_stream(torch.device(device))))
        else:
            self.cmd.launch()


class LaunchCache:
    """Recorded Warp launches, one per (kernel, dtype, device), replayed and updated in place.

    ``wp.launch`` of a dtype-generic kernel infers argument types and packs every
    argument on each call (~0.3 ms on CPU for 20 arguments). This records each launch
    once for its concrete overload and afterwards only re-packs the arguments that
    changed (arrays compared by identity, so pair it with :class:`WarpViewCache`;
    plain numbers by value) and the launch size: after an inflight refill, where every
    array is new, that costs a few µs per argument instead of a fresh recording. Runs
    on torch's current CUDA stream on GPUs.

    Example
    -------
    >>> launches = LaunchCache()
    >>> dt = launches.scalar("dt", wp.float32, 0.5)                   # same object while unchanged
    >>> launches(kernel, n_atoms, [x_view, dt], device, torch.float32)  # doctest: +SKIP
    """

    def __init__(self) -> None:
        self._cmds: dict = {}
        self._scalars: dict = {}

    def scalar(self, name: str, wp_type, value: float):
        """A Warp scalar object that keeps its identity while ``(type, value)`` is unchanged."""
        hit = self._scalars.get(name)
        if hit is None or hit[0] is not wp_type or hit[1] != value:
            hit = (wp_type, value, wp_type(value))
            self._scalars[name] = hit
        return hit[2]

    def __call__(self, kernel, dim: int, inputs: list, device, dtype: torch.dtype) -> None:
        """Launch ``kernel`` (generic or concrete) over ``dim`` threads (an int or a tuple); an empty launch is skipped."""
        if dim == 0 or (isinstance(dim, tuple) and 0 in dim):
            return
        key = (kernel.key, dtype, str(device))
        rec = self._cmds.get(key)
        if rec is None:
            rec = _Recorded(kernel, dim, inputs, device)
            self._cmds[key] = rec
        else:
            rec.update(dim, inputs)
        rec.run(device)


class CachedLaunch:
    """Launch one dtype-generic kernel through its concrete float32/float64 overloads, recorded once.

    A thin front of :class:`LaunchCache` for kernels exported with an overload table.

    Parameters
    ----------
    overloads : dict
        Warp scalar type (``wp.float32``, ``wp.float64``) -> concrete kernel, as
        exported by the kernel modules (e.g. ``fire_atom_kernel_overloads``).

    Example
    -------
    >>> run = CachedLaunch(fire_atom_kernel_overloads)       # doctest: +SKIP
    >>> run(torch.float64, n_atoms, inputs, batch.device)     # doctest: +SKIP
    """

    def __init__(self, overloads):
        self._overloads = overloads
        self._cache = LaunchCache()

    def __call__(self, dtype, dim, inputs, device):
        self._cache(self._overloads[warp_scalar(dtype)], dim, inputs, device, dtype)
