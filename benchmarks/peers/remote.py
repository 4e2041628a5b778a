"""A peer that lives in another Python environment, driven from the report's process.

TorchSim 0.6 needs Python >= 3.12 and brings its own torch (2.14.1), so it cannot share
batchmd's venv (torch 2.13.0, Python 3.11). ``RemotePeer`` starts one long-lived worker
process in that venv (``BENCH_<PEER>_PYTHON``, e.g.
``BENCH_TORCHSIM_PYTHON=/work/venv-ts312/bin/python``), imports the same peer module
there, and forwards each call (function name and pickled arguments: lists of
``ase.Atoms``, numbers) over a pipe; the worker times the call itself and sends back the
pickled :class:`~benchmarks.common.Result`. The worker stays warm between calls, so timed
rounds interleave across peers exactly as for in-process peers; only the pickling of the
inputs, outside the timed region, is extra.

Protocol: 8-byte little-endian length, then a pickle, both ways. The worker's own stdout
is redirected to stderr so library prints cannot corrupt the stream.
"""

from __future__ import annotations

import os
import pickle
import struct
import subprocess
import sys
from pathlib import Path

from benchmarks.common import PeerUnavailable

ROOT = Path(__file__).resolve().parents[2]


def _send(stream, obj) -> None:
    data = pickle.dumps(obj, protocol=4)
    stream.write(struct.pack("<Q", len(data)))
    stream.write(data)
    stream.flush()


def _recv(stream):
    head = stream.read(8)
    if len(head) < 8:
        raise EOFError("remote peer: the worker closed its pipe")
    (n,) = struct.unpack("<Q", head)
    return pickle.loads(stream.read(n))


class RemotePeer:
    """The peer module ``benchmarks.peers.<name>_peer`` running under ``python``."""

    def __init__(self, name: str, python: str):
        self.name = name
        self.python = python
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT)])
        env.pop("LD_LIBRARY_PATH", None)  # the other venv's libraries, not ours
        self.proc = subprocess.Popen([python, "-m", "benchmarks.peers.remote", name], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, cwd=ROOT, env=env)
        self.NAME = name

    def _call(self, func: str, *args, **kwargs):
        _send(self.proc.stdin, (func, args, kwargs))
        ok, value = _recv(self.proc.stdout)
        if not ok:
            kind, message = value
            if kind == "PeerUnavailable":
                raise PeerUnavailable(message)
            raise RuntimeError(f"remote {self.name} ({self.python}): {kind}: {message}")
        return value

    def setup(self) -> None:
        self._call("setup")

    def __getattr__(self, func: str):
        if func.startswith("_"):
            raise AttributeError(func)
        return lambda *args, **kwargs: self._call(func, *args, **kwargs)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=30)


def serve(name: str) -> None:
    """Worker loop: call ``benchmarks.peers.<name>_peer.<func>(*args, **kwargs)`` per request."""
    import importlib
    import traceback

    channel_in = sys.stdin.buffer
    channel_out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # anything printed by libraries goes to stderr
    sys.stdout = sys.stderr
    try:
        mod = importlib.import_module(f"benchmarks.peers.{name}_peer")
    except Exception as exc:  # report it on the first call
        mod, failure = None, ("PeerUnavailable", f"{type(exc).__name__}: {exc}")
    while True:
        try:
            func, args, kwargs = _recv(channel_in)
        except EOFError:
            return
        try:
            if mod is None:
                raise PeerUnavailable(failure[1])
            _send(channel_out, (True, getattr(mod, func)(*args, **kwargs)))
        except PeerUnavailable as exc:
            _send(channel_out, (False, ("PeerUnavailable", str(exc))))
        except Exception as exc:
            traceback.print_exc()
            _send(channel_out, (False, (type(exc).__name__, str(exc))))


if __name__ == "__main__":
    serve(sys.argv[1])
