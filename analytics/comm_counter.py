"""Counting what distributed learners communicate: payload bytes, wire bytes and rounds.

Every algorithm in :mod:`.dpca` talks through one :class:`CommCounter`, so their costs are
counted the same way. Two byte figures per rank:

``bytes_sent`` (payload)
    the message a rank contributes to a collective (the algorithm's message size);
``wire_bytes``
    what leaves the rank for other ranks, under the usual bandwidth-optimal algorithm of each
    collective (MPI does not report what it moved, so for the collectives below this is a model,
    stated here; for ``alltoallv`` and ``neighbours`` it is exact):

=================  ==============================  ============================================
call               payload (per rank)              wire (per rank)
=================  ==============================  ============================================
``allreduce(x)``   ``x.nbytes``                    ``2 (p - 1) / p * x.nbytes`` (ring:
                                                   reduce-scatter, then all-gather)
``allgather(x)``   ``x.nbytes``                    ``(p - 1) * x.nbytes`` (ring: every block
                                                   reaches the ``p - 1`` others)
``allgatherv(x)``  ``x.nbytes``                    ``(p - 1) * mean block size`` (ring)
``alltoallv(c)``   bytes of the chunks to others   the same (each chunk travels once)
``bcast(x, root)`` ``(p - 1) * x.nbytes`` at root  the same, at the root
``control(flags)`` ``(p - 1) * flags.nbytes`` at   the same, at rank 0 (not a round: see below)
                   rank 0
``neighbours(x)``  ``x.nbytes`` per neighbour      the same
=================  ==============================  ============================================

Each call is one round, except that ``new_round=False`` lets the second phase of a two-phase
collective (``alltoallv`` then ``allgatherv``: a quantized all-reduce) count with the first, as
the reduce-scatter and all-gather inside a ring all-reduce do. ``total_bytes`` sums ``bytes_sent``
over ranks.

``control`` carries rank 0's control decisions of a round (stop, what the next message holds: a
few flag bits in one byte) to every rank, so that ranks whose floating point differs (mixed CPUs
or BLAS builds in one job) still agree on the shape of every message. Its bytes are counted in
full; it is not counted as a round, as the baselines' convergence test (one MAX all-reduce of a
scalar per round, :func:`.dpca._converged`) is not either: both are the per-round agreement on
whether and how to go on, not a message of the algorithm.
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
    wire_bytes : int
        Bytes this rank put on the network for other ranks (see the module's table).
    rounds : int
        Communication rounds (collective or neighbour exchanges).
    """

    def __init__(self, comm):
        self.comm = comm
        self.bytes_sent = 0
        self.wire_bytes = 0
        self.rounds = 0

    def _count(self, payload, wire, new_round=True):
        self.bytes_sent += int(payload)
        self.wire_bytes += int(round(wire))
        self.rounds += int(new_round)

    def allreduce(self, x, dtype=np.float64):
        """Sum of ``x`` over ranks, sent as ``dtype`` (float64 or float32), returned as float64."""
        from mpi4py import MPI

        x = np.ascontiguousarray(x, dtype=dtype)
        out = np.empty_like(x)
        self.comm.Allreduce(x, out, op=MPI.SUM)
        p = self.comm.Get_size()
        self._count(x.nbytes, 2 * (p - 1) / p * x.nbytes)
        return out.astype(np.float64)

    def allgather(self, x, dtype=np.float64):
        """Every rank's ``x`` stacked: ndarray of shape (size,) + x.shape, sent and returned as ``dtype``."""
        x = np.ascontiguousarray(x, dtype=dtype)
        out = np.empty((self.comm.Get_size(),) + x.shape, dtype=dtype)
        self.comm.Allgather(x, out)
        self._count(x.nbytes, (self.comm.Get_size() - 1) * x.nbytes)
        return out

    def allgatherv(self, x, *, new_round=True):
        """Every rank's 1-D uint8 ``x`` (sizes may differ): list of ``size`` arrays.

        Parameters
        ----------
        x : ndarray of uint8, 1-D
        new_round : bool
            False when this is the second phase of a collective already counted as a round.
        """
        from mpi4py import MPI

        x = np.ascontiguousarray(x, dtype=np.uint8).ravel()
        sizes = np.empty(self.comm.Get_size(), dtype=np.int64)
        self.comm.Allgather(np.array([x.size], dtype=np.int64), sizes)  # sizes: metadata, not counted
        offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        out = np.empty(int(sizes.sum()), dtype=np.uint8)
        self.comm.Allgatherv(x, [out, sizes, offsets, MPI.BYTE])
        p = self.comm.Get_size()
        self._count(x.nbytes, (p - 1) * float(sizes.mean()), new_round)
        return [out[o:o + n] for o, n in zip(offsets, sizes)]

    def alltoallv(self, chunks, *, new_round=True):
        """Send ``chunks[j]`` (1-D uint8) to rank ``j``; returns the list of chunks received from each rank.

        Only the chunks for other ranks are counted (payload and wire).
        """
        from mpi4py import MPI

        p, me = self.comm.Get_size(), self.comm.Get_rank()
        chunks = [np.ascontiguousarray(c, dtype=np.uint8).ravel() for c in chunks]
        if len(chunks) != p:
            raise ValueError(f"alltoallv needs one chunk per rank ({p}), got {len(chunks)}")
        send_sizes = np.array([c.size for c in chunks], dtype=np.int64)
        recv_sizes = np.empty(p, dtype=np.int64)
        self.comm.Alltoall(send_sizes, recv_sizes)  # sizes: metadata, not counted
        send = np.concatenate(chunks) if p else np.zeros(0, np.uint8)
        soff = np.concatenate([[0], np.cumsum(send_sizes)[:-1]])
        roff = np.concatenate([[0], np.cumsum(recv_sizes)[:-1]])
        recv = np.empty(int(recv_sizes.sum()), dtype=np.uint8)
        self.comm.Alltoallv([send, send_sizes, soff, MPI.BYTE], [recv, recv_sizes, roff, MPI.BYTE])
        off_rank = int(send_sizes.sum() - send_sizes[me])
        self._count(off_rank, off_rank, new_round)
        return [recv[o:o + n] for o, n in zip(roff, recv_sizes)]

    def bcast(self, x, root):
        """``x`` from ``root`` on every rank."""
        x = np.ascontiguousarray(x, dtype=np.float64).copy()
        self.comm.Bcast(x, root=root)
        sent = x.nbytes * (self.comm.Get_size() - 1) if self.comm.Get_rank() == root else 0
        self._count(sent, sent)
        return x

    def control(self, flags):
        """Rank 0's ``flags`` (uint8 array, same size on every rank) on every rank: its decisions are followed.

        One ``Bcast`` from rank 0; bytes counted at rank 0 (``(p - 1) * flags.nbytes``, payload and
        wire), not a round (module docstring). On one rank ``flags`` is returned as is.

        Parameters
        ----------
        flags : array_like of uint8
            This rank's decisions; the same size on every rank. Collective over the counter's ``comm``.

        Returns
        -------
        numpy.ndarray of uint8
            Rank 0's ``flags``, on every rank.
        """
        flags = np.array(flags, dtype=np.uint8).ravel()
        p = self.comm.Get_size()
        if p == 1:
            return flags
        self.comm.Bcast(flags, root=0)
        sent = flags.nbytes * (p - 1) if self.comm.Get_rank() == 0 else 0
        self._count(sent, sent, new_round=False)
        return flags

    def neighbours_bytes(self, x, neighbours):
        """:meth:`neighbours` for a packed 1-D uint8 message (e.g. int8 codes with their scales)."""
        return self.neighbours(x, neighbours, dtype=np.uint8)

    def neighbours(self, x, neighbours, dtype=np.float64):
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

        x = np.ascontiguousarray(x, dtype=dtype)
        recv = {n: np.empty_like(x) for n in neighbours}
        reqs = [self.comm.Irecv(recv[n], source=n, tag=7) for n in neighbours]
        reqs += [self.comm.Isend(x, dest=n, tag=7) for n in neighbours]
        MPI.Request.Waitall(reqs)
        self._count(x.nbytes * len(neighbours), x.nbytes * len(neighbours))
        return recv

    def total_bytes(self):
        """Bytes sent by all ranks together (collective, not counted)."""
        from mpi4py import MPI

        buf = np.array([self.bytes_sent], dtype=np.int64)
        self.comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
        return int(buf[0])
