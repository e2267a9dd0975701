"""A simulation that already writes with ADIOS2 and knows nothing of stagelearn.

A 3-D Gray-Scott solver (the ADIOS2 tutorial's model) on MPI ranks that writes ``U``, ``V``
(global arrays, ``shape/start/count``) and ``step`` with the plain ``adios2`` API, its IO
configured by an ``adios2.xml`` it is given. Switching that IO's engine from BP5 to SST (the only
change, in the XML) streams its output to ``stagelearn stage`` in in-transit mode, which
discovers the variables, learns, and writes the compressed output; see README.md in this folder.

    mpiexec -n 4 python gray_scott_writer.py adios2.xml gs.bp --L 64 --steps 1000 --plotgap 10

Deliberately standalone: numpy, mpi4py and adios2 only (no stagelearn import).
"""

import argparse

import numpy as np
from mpi4py import MPI

from adios2 import bindings as adios2


def laplacian(a):
    """7-point Laplacian divided by 6, as the ADIOS2 tutorial's gray-scott.cpp (one ghost layer on each side)."""
    return (a[:-2, 1:-1, 1:-1] + a[2:, 1:-1, 1:-1] + a[1:-1, :-2, 1:-1] + a[1:-1, 2:, 1:-1]
            + a[1:-1, 1:-1, :-2] + a[1:-1, 1:-1, 2:] - 6.0 * a[1:-1, 1:-1, 1:-1]) / 6.0


def exchange(cart, a):
    """Fill the ghost layers from the periodic neighbours (two Sendrecv per axis)."""
    for axis in range(3):
        lo, hi = cart.Shift(axis, 1)

        def plane(i):
            idx = [slice(None)] * 3
            idx[axis] = i
            return tuple(idx)

        for send_i, recv_i, dest, source in ((-2, 0, hi, lo), (1, -1, lo, hi)):
            buf = np.ascontiguousarray(a[plane(send_i)])
            out = np.empty_like(buf)
            cart.Sendrecv(buf, dest=dest, recvbuf=out, source=source)
            a[plane(recv_i)] = out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("xml")
    p.add_argument("output")
    p.add_argument("--L", type=int, default=64)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--plotgap", type=int, default=10)
    p.add_argument("--F", type=float, default=0.01)
    p.add_argument("--k", type=float, default=0.05)
    p.add_argument("--Du", type=float, default=0.2)
    p.add_argument("--Dv", type=float, default=0.1)
    p.add_argument("--dt", type=float, default=2.0)
    p.add_argument("--noise", type=float, default=1e-7)
    a = p.parse_args()

    comm = MPI.COMM_WORLD
    dims = MPI.Compute_dims(comm.Get_size(), 3)
    cart = comm.Create_cart(dims, periods=[True] * 3)
    coords = cart.Get_coords(cart.Get_rank())
    count = [a.L // d + (1 if c < a.L % d else 0) for d, c in zip(dims, coords)]
    start = [sum(a.L // d + (1 if i < a.L % d else 0) for i in range(c)) for d, c in zip(dims, coords)]
    u = np.ones([n + 2 for n in count])
    v = np.zeros_like(u)
    lo, hi = a.L // 2 - 6, a.L // 2 + 6  # the tutorial's initial square of V
    for g in np.ndindex(*count):
        x = [s + i for s, i in zip(start, g)]
        if all(lo <= xi < hi for xi in x):
            u[tuple(i + 1 for i in g)], v[tuple(i + 1 for i in g)] = 0.25, 0.33
    rng = np.random.default_rng(cart.Get_rank())

    ad = adios2.ADIOS(a.xml, comm)
    io = ad.DeclareIO("SimulationOutput")  # engine and parameters come from the XML
    var_u = io.DefineVariable("U", np.zeros(count), [a.L] * 3, start, count)
    var_v = io.DefineVariable("V", np.zeros(count), [a.L] * 3, start, count)
    var_step = io.DefineVariable("step", np.zeros(1, dtype=np.int32))
    engine = io.Open(a.output, adios2.Mode.Write)
    for step in range(a.steps + 1):
        if step % a.plotgap == 0:
            engine.BeginStep()
            engine.Put(var_step, np.array([step], dtype=np.int32), adios2.Mode.Sync)
            engine.Put(var_u, np.ascontiguousarray(u[1:-1, 1:-1, 1:-1]), adios2.Mode.Sync)
            engine.Put(var_v, np.ascontiguousarray(v[1:-1, 1:-1, 1:-1]), adios2.Mode.Sync)
            engine.EndStep()
        if step == a.steps:
            break
        exchange(cart, u)
        exchange(cart, v)
        uc, vc = u[1:-1, 1:-1, 1:-1], v[1:-1, 1:-1, 1:-1]
        uvv = uc * vc * vc
        du = a.Du * laplacian(u) - uvv + a.F * (1.0 - uc) + a.noise * rng.uniform(-1, 1, uc.shape)
        dv = a.Dv * laplacian(v) + uvv - (a.F + a.k) * vc
        u[1:-1, 1:-1, 1:-1] += a.dt * du
        v[1:-1, 1:-1, 1:-1] += a.dt * dv
    engine.Close()


if __name__ == "__main__":
    main()
