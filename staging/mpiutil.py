"""Byte broadcasts and gathers over MPI with buffer-based calls (no pickle between processes)."""

from __future__ import annotations

import numpy as np


def bcast_bytes(comm, data, root=0):
    """Broadcast a bytes object from ``root`` (collective). Non-root ranks pass anything."""
    from mpi4py import MPI

    n = np.array([len(data) if comm.Get_rank() == root else 0], dtype=np.int64)
    comm.Bcast(n, root=root)
    buf = np.frombuffer(data, dtype=np.uint8).copy() if comm.Get_rank() == root else np.empty(int(n[0]), dtype=np.uint8)
    if n[0]:
        comm.Bcast([buf, MPI.BYTE], root=root)
    return buf.tobytes()


def gather_bytes(comm, data, root=0):
    """Gather one bytes object per rank on ``root`` (collective).

    Returns
    -------
    parts : list of bytes on ``root`` (in rank order), None elsewhere.
    """
    from mpi4py import MPI

    sizes = np.zeros(comm.Get_size(), dtype=np.int64)
    comm.Gather(np.array([len(data)], dtype=np.int64), sizes, root=root)
    send = np.frombuffer(data, dtype=np.uint8)
    if comm.Get_rank() == root:
        recv = np.empty(int(sizes.sum()), dtype=np.uint8)
        displs = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        comm.Gatherv(send, [recv, sizes, displs, MPI.BYTE], root=root)
        return [recv[d:d + s].tobytes() for d, s in zip(displs, sizes)]
    comm.Gatherv(send, None, root=root)
    return None


def allreduce_flag(comm, flag, op="max"):
    """Combine an int flag over ``comm`` (``op`` in ``"max"``, ``"min"``, ``"sum"``)."""
    from mpi4py import MPI

    buf = np.array([int(flag)], dtype=np.int64)
    comm.Allreduce(MPI.IN_PLACE, buf, op={"max": MPI.MAX, "min": MPI.MIN, "sum": MPI.SUM}[op])
    return int(buf[0])


def raise_first_error(comm, error):
    """Raise, on every rank, the error of the lowest rank that has one (collective over ``comm``).

    Parameters
    ----------
    comm : mpi4py.MPI.Comm
    error : str or None
        This rank's error message, or None.

    Raises
    ------
    ValueError
        With the first bad rank's message, on every rank, when any rank passed an error; all ranks
        agree before raising, so none is left waiting in a later collective.
    """
    size = comm.Get_size()
    first = allreduce_flag(comm, comm.Get_rank() if error is not None else size, op="min")
    if first < size:
        raise ValueError(bcast_bytes(comm, (error or "").encode(), root=first).decode())
