"""Counting what distributed learners communicate: bytes sent and communication rounds.

Every algorithm in :mod:`.dpca` talks through one :class:`CommCounter`, so their costs are
counted the same way:

- ``allreduce(x)``: each rank contributes ``x.nbytes``; one round;
- ``allgather(x, dtype)``: each rank contributes ``x.nbytes`` (in ``dtype``: e.g. the packed int8
  messages of ``delta_ritz`` as uint8); one round. Each rank *receives* ``p - 1`` such messages,
  so on the wire an all-gather costs more than an all-reduce of the same payload as ``p`` grows;
- ``bcast(x, root)``: the root's payload reaches ``p - 1`` ranks: ``(p - 1) * x.nbytes``, counted
  at the root; one round;
- ``neighbours(x, graph)``: each rank sends ``x.nbytes`` to each of its neighbours; one round.

Bytes are what a rank puts on the network as payload (the algorithm's message size), not what a
particular MPI implementation moves internally (a ring all-reduce moves about twice that).
``bytes_sent`` is per rank (the maximum over ranks is what limits a round); ``total_bytes``
sums all ranks.
"""

from __future__ import annotations

import numpy as np


class CommCounter:
    """Communication through ``comm`` with byte and round accounting.

    Parameters
    ----------
    comm : mpi4py.MPI.Comm

    Attributes
    ----------
    bytes_sent : int
        Payload bytes this rank sent.
    rounds : int
        Communication rounds (collective or neighbour exchanges).
    """

    def __init__(self, comm):
        self.comm = comm
        self.bytes_sent = 0
        self.rounds = 0

    def allreduce(self, x, dtype=np.float64):
        """Sum of ``x`` over ranks, sent as ``dtype`` (float64 or float32), returned as float64."""
        from mpi4py import MPI

        x = np.ascontiguousarray(x, dtype=dtype)
        out = np.empty_like(x)
        self.comm.Allreduce(x, out, op=MPI.SUM)
        self.bytes_sent += x.nbytes
        self.rounds += 1
        return out.astype(np.float64)

    def allgather(self, x, dtype=np.float64):
        """Every rank's ``x`` stacked: ndarray of shape (size,) + x.shape, sent and returned as ``dtype``."""
        x = np.ascontiguousarray(x, dtype=dtype)
        out = np.empty((self.comm.Get_size(),) + x.shape, dtype=dtype)
        self.comm.Allgather(x, out)
        self.bytes_sent += x.nbytes
        self.rounds += 1
        return out

    def bcast(self, x, root):
        """``x`` from ``root`` on every rank."""
        x = np.ascontiguousarray(x, dtype=np.float64).copy()
        self.comm.Bcast(x, root=root)
        if self.comm.Get_rank() == root:
            self.bytes_sent += x.nbytes * (self.comm.Get_size() - 1)
        self.rounds += 1
        return x

    def neighbours(self, x, neighbours):
        """Send ``x`` to each neighbour and receive theirs (one round).

        Parameters
        ----------
        x : ndarray
        neighbours : sequence of int
            This rank's neighbours (symmetric graph: every rank lists the ranks that list it).

        Returns
        -------
        received : dict of int to ndarray
        """
        from mpi4py import MPI

        x = np.ascontiguousarray(x, dtype=np.float64)
        recv = {n: np.empty_like(x) for n in neighbours}
        reqs = [self.comm.Irecv(recv[n], source=n, tag=7) for n in neighbours]
        reqs += [self.comm.Isend(x, dest=n, tag=7) for n in neighbours]
        MPI.Request.Waitall(reqs)
        self.bytes_sent += x.nbytes * len(neighbours)
        self.rounds += 1
        return recv

    def total_bytes(self):
        """Bytes sent by all ranks together (collective, not counted)."""
        from mpi4py import MPI

        buf = np.array([self.bytes_sent], dtype=np.int64)
        self.comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
        return int(buf[0])
