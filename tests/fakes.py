"""Fake MPI communicators for unit tests that need no ``mpiexec``.

:func:`run_ranks` runs one function per rank in threads over a :class:`FakeComm` group whose
collectives (the buffer-based calls the project uses: ``Bcast``, ``Allreduce``, ``Gather``,
``Gatherv``, ``Allgather``, ``Barrier``, and the lower-case ``bcast``/``allreduce``) meet at a
barrier, so a test drives several "ranks" of a component in one process::

    results = run_ranks(2, lambda comm: comm.Get_rank() * 10)   # [0, 10]

Every collective has a timeout (``timeout_s``): a rank that never arrives makes the others fail
with ``threading.BrokenBarrierError`` instead of hanging the test.
"""

from __future__ import annotations

import threading

import numpy as np

try:  # the op constants of mpi4py when it is installed (the code under test compares against them)
    from mpi4py import MPI

    _IN_PLACE, _MAX, _MIN, _SUM = MPI.IN_PLACE, MPI.MAX, MPI.MIN, MPI.SUM
except ImportError:  # pragma: no cover
    _IN_PLACE, _MAX, _MIN, _SUM = object(), "max", "min", "sum"


def _reduce(values, op):
    if op is _MAX or op == "max":
        return np.max(values, axis=0)
    if op is _MIN or op == "min":
        return np.min(values, axis=0)
    if op is _SUM or op == "sum" or op is None:
        return np.sum(values, axis=0)
    raise NotImplementedError(f"FakeComm: reduction op {op!r}")


def _buffer(spec):
    """The ndarray of an mpi4py buffer spec (``arr`` or ``[arr, MPI.TYPE]`` or ``[arr, counts, displs, TYPE]``)."""
    return spec[0] if isinstance(spec, (list, tuple)) else spec


class _Group:
    def __init__(self, size, timeout_s):
        self.size = size
        self.barrier = threading.Barrier(size, timeout=timeout_s)
        self.slots = [None] * size

    def exchange(self, rank, value):
        """Every rank contributes ``value``; every rank gets the list of all contributions (rank order)."""
        self.barrier.wait()
        self.slots[rank] = value
        self.barrier.wait()
        out = list(self.slots)
        self.barrier.wait()
        return out


class FakeComm:
    """One rank of an in-process communicator group (see :func:`make_group`)."""

    def __init__(self, group, rank):
        self._group, self._rank = group, rank

    # -- queries
    def Get_rank(self):
        return self._rank

    def Get_size(self):
        return self._group.size

    rank = property(Get_rank)
    size = property(Get_size)

    # -- collectives
    def Barrier(self):
        self._group.exchange(self._rank, None)

    def Bcast(self, buf, root=0):
        arr = _buffer(buf)
        vals = self._group.exchange(self._rank, np.array(arr, copy=True) if self._rank == root else None)
        if self._rank != root:
            arr[...] = vals[root].reshape(arr.shape)

    def bcast(self, obj, root=0):
        return self._group.exchange(self._rank, obj if self._rank == root else None)[root]

    def Allreduce(self, sendbuf, recvbuf, op=_SUM):
        src = _buffer(recvbuf) if sendbuf is _IN_PLACE else _buffer(sendbuf)
        vals = self._group.exchange(self._rank, np.array(src, copy=True))
        _buffer(recvbuf)[...] = _reduce(np.stack(vals), op)

    def allreduce(self, obj, op=_SUM):
        vals = self._group.exchange(self._rank, obj)
        return _reduce(np.stack([np.asarray(v) for v in vals]), op).tolist() if not np.isscalar(obj) \
            else type(obj)(_reduce(np.asarray(vals), op))

    def Allgather(self, sendbuf, recvbuf):
        vals = self._group.exchange(self._rank, np.array(_buffer(sendbuf), copy=True))
        _buffer(recvbuf)[...] = np.concatenate([v.ravel() for v in vals]).reshape(_buffer(recvbuf).shape)

    def allgather(self, obj):
        return self._group.exchange(self._rank, obj)

    def Gather(self, sendbuf, recvbuf, root=0):
        vals = self._group.exchange(self._rank, np.array(_buffer(sendbuf), copy=True))
        if self._rank == root:
            _buffer(recvbuf)[...] = np.concatenate([v.ravel() for v in vals]).reshape(_buffer(recvbuf).shape)

    def Gatherv(self, sendbuf, recvbuf, root=0):
        vals = self._group.exchange(self._rank, np.array(_buffer(sendbuf), copy=True))
        if self._rank == root:
            out = _buffer(recvbuf)
            flat = np.concatenate([v.ravel() for v in vals]) if vals else np.zeros(0, out.dtype)
            out[: flat.size] = flat.view(out.dtype) if flat.dtype != out.dtype else flat

    def gather(self, obj, root=0):
        vals = self._group.exchange(self._rank, obj)
        return vals if self._rank == root else None

    def Abort(self, errorcode=1):  # pragma: no cover - a test that reaches it failed already
        raise SystemExit(f"FakeComm.Abort({errorcode})")


def make_group(size, *, timeout_s=10.0):
    """``size`` FakeComm objects sharing one group (rank order)."""
    group = _Group(size, timeout_s)
    return [FakeComm(group, r) for r in range(size)]


def run_ranks(size, fn, *, timeout_s=10.0):
    """Run ``fn(comm)`` on ``size`` fake ranks in threads; return the results in rank order.

    An exception on any rank is re-raised (the first by rank) after all threads end; the others
    then fail at their next collective (broken barrier) instead of hanging.
    """
    comms = make_group(size, timeout_s=timeout_s)
    results, errors = [None] * size, [None] * size

    def target(r):
        try:
            results[r] = fn(comms[r])
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            errors[r] = exc
            comms[r]._group.barrier.abort()

    threads = [threading.Thread(target=target, args=(r,), daemon=True) for r in range(size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout_s * 4)
    for r, t in enumerate(threads):
        if t.is_alive():
            raise TimeoutError(f"fake rank {r} still running after {timeout_s * 4:g} s")
    primary = [e for e in errors if e is not None and not isinstance(e, threading.BrokenBarrierError)]
    if primary or any(errors):
        raise (primary or [e for e in errors if e is not None])[0]
    return results
