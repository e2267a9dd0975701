"""Cartesian domain decomposition and halo exchange with mpi4py.

The global grid is split over an ``MPI.Compute_dims`` process grid (``comm.Create_cart``);
each rank owns one box ``[start, start + count)`` and keeps one ghost layer per side,
refreshed by :meth:`CartesianDomain.exchange_halos` with ``Sendrecv`` along each axis.
"""

from __future__ import annotations

import numpy as np


def balanced_split(n, parts, index):
    """Start and count of part ``index`` when ``n`` items are split into ``parts`` (first ones larger).

    The one balanced split of the project: grid axes over simulation ranks here, producer blocks
    over staging ranks in :func:`stagelearn.staging.wire.assign_blocks` (staging may import this
    pure function; ``sim_mocks`` never imports ``staging``).

    Returns
    -------
    start, count : int
    """
    base, rem = divmod(n, parts)
    count = base + (1 if index < rem else 0)
    start = index * base + min(index, rem)
    return start, count


class CartesianDomain:
    """One rank's box of a periodic or bounded Cartesian grid.

    Parameters
    ----------
    shape : tuple of int
        Global grid shape (cells).
    comm : mpi4py.MPI.Comm
        Communicator of the simulation ranks (collective construction).
    periodic : bool, default=True
        Periodic boundaries (Gray-Scott tutorial) or not (ghosts then copy the edge).
    dims : tuple of int, optional
        Process grid; default ``MPI.Compute_dims(comm.size, len(shape))``.

    Attributes
    ----------
    cart : mpi4py.MPI.Cartcomm
    start, count : tuple of int
        This rank's box in global cell indices (ADIOS2 ``start``/``count``).
    """

    def __init__(self, shape, comm, *, periodic=True, dims=None):
        from mpi4py import MPI

        self.shape = tuple(int(s) for s in shape)
        ndim = len(self.shape)
        self.dims = tuple(dims) if dims is not None else tuple(MPI.Compute_dims(comm.Get_size(), ndim))
        if int(np.prod(self.dims)) != comm.Get_size():
            raise ValueError(f"process grid {self.dims} does not have {comm.Get_size()} ranks")
        if any(d > s for d, s in zip(self.dims, self.shape)):
            raise ValueError(f"process grid {self.dims} is finer than the grid {self.shape}")
        self.periodic = periodic
        self.cart = comm.Create_cart(self.dims, periods=[periodic] * ndim, reorder=False)
        coords = self.cart.Get_coords(self.cart.Get_rank())
        se = [balanced_split(n, d, c) for n, d, c in zip(self.shape, self.dims, coords)]
        self.start = tuple(s for s, _ in se)
        self.count = tuple(c for _, c in se)
        self._neighbours = [self.cart.Shift(axis, 1) for axis in range(ndim)]

    def allocate(self, fill=0.0, dtype=np.float64):
        """Local array with one ghost layer per side, shape ``count + 2``."""
        return np.full(tuple(c + 2 for c in self.count), fill, dtype=dtype)

    def interior(self, a):
        """View of the owned cells of a ghosted array."""
        return a[tuple(slice(1, -1) for _ in self.count)]

    def global_coords(self):
        """Global cell indices of the owned cells, one broadcastable array per axis."""
        return np.meshgrid(*[np.arange(s, s + c) for s, c in zip(self.start, self.count)], indexing="ij", sparse=True)

    def exchange_halos(self, a):
        """Fill the ghost layers of ``a`` from the neighbours (collective over the cart comm)."""
        from mpi4py import MPI

        ndim = a.ndim
        for axis in range(ndim):
            lo, hi = self._neighbours[axis]
            def face(i):
                idx = [slice(None)] * ndim
                idx[axis] = i
                return tuple(idx)
            send_hi = np.ascontiguousarray(a[face(-2)])
            recv_lo = np.empty_like(send_hi)
            self.cart.Sendrecv(send_hi, dest=hi, recvbuf=recv_lo, source=lo)
            send_lo = np.ascontiguousarray(a[face(1)])
            recv_hi = np.empty_like(send_lo)
            self.cart.Sendrecv(send_lo, dest=lo, recvbuf=recv_hi, source=hi)
            if lo != MPI.PROC_NULL:
                a[face(0)] = recv_lo
            else:
                a[face(0)] = a[face(1)]
            if hi != MPI.PROC_NULL:
                a[face(-1)] = recv_hi
            else:
                a[face(-1)] = a[face(-2)]
