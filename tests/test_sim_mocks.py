"""Mock simulations: the domain decomposition does not change the physics."""

import numpy as np
import pytest
from mpi4py import MPI

from stagelearn.sim_mocks import AdvectionDiffusion2D, GrayScott3D

SCRIPT = """
    import numpy as np
    from mpi4py import MPI
    from stagelearn.sim_mocks import GrayScott3D, AdvectionDiffusion2D
    from stagelearn.sim_mocks.runner import gather_field
    comm = MPI.COMM_WORLD
    gs = GrayScott3D(16, F=0.01, k=0.05, Du=0.2, Dv=0.1, dt=1.0, noise=0.0, comm=comm)
    gs.advance(30)
    v = gather_field(comm, gs.fields()["V"], gs.domain.start, gs.domain.count, gs.shape)
    ht = AdvectionDiffusion2D(24, 20, kappa=0.1, velocity=(0.3, 0.1), amplitude=1.0, sigma=3.0, omega=0.05,
                              decay=0.002, dt=1.0, comm=comm)
    ht.advance(40)
    t = gather_field(comm, ht.fields()["T"], ht.domain.start, ht.domain.count, ht.shape)
    if comm.rank == 0:
        np.save("V_%d.npy" % comm.size, v)
        np.save("T_%d.npy" % comm.size, t)
"""


@pytest.mark.mpi
@pytest.mark.timeout(200)
def test_decomposition_invariance(mpirun, tmp_path):
    mpirun(1, SCRIPT)
    mpirun(4, SCRIPT)
    for name in ("V", "T"):
        one, four = np.load(tmp_path / f"{name}_1.npy"), np.load(tmp_path / f"{name}_4.npy")
        assert np.ptp(one) > 1e-3  # something happened
        np.testing.assert_allclose(four, one, rtol=0, atol=1e-6)


def test_gray_scott_pattern_forms_and_stays_bounded():
    gs = GrayScott3D(16, F=0.01, k=0.05, Du=0.2, Dv=0.1, dt=2.0, noise=0.1, comm=MPI.COMM_SELF)
    v0 = gs.fields()["V"].copy()
    gs.advance(200)
    u, v = gs.fields()["U"], gs.fields()["V"]
    assert np.all(np.isfinite(u)) and np.all(np.isfinite(v))
    assert v.max() < 1.5 and u.max() < 2.0
    assert np.abs(v - v0).max() > 0.05


def test_heat_source_moves():
    ht = AdvectionDiffusion2D(32, 32, kappa=0.1, velocity=(0.3, 0.1), amplitude=1.0, sigma=3.0, omega=0.05,
                              decay=0.002, dt=1.0, comm=MPI.COMM_SELF)
    ht.advance(30)
    a = np.unravel_index(np.argmax(ht.fields()["T"]), (32, 32))
    ht.advance(30)
    b = np.unravel_index(np.argmax(ht.fields()["T"]), (32, 32))
    assert a != b


def test_unstable_time_step_is_rejected():
    with pytest.raises(ValueError, match="unstable"):
        AdvectionDiffusion2D(8, 8, kappa=1.0, velocity=(0.0, 0.0), amplitude=1, sigma=1, omega=0, decay=0, dt=1.0,
                             comm=MPI.COMM_SELF)


def test_balanced_split_is_the_one_split():
    """Contiguous parts covering 0..n-1, the first n % parts one larger; staging's M-to-N block
    assignment is the same split (staging/wire.py uses sim_mocks.decomposition.balanced_split)."""
    from stagelearn.sim_mocks.decomposition import balanced_split
    from stagelearn.staging.wire import assign_blocks

    for n in range(0, 13):
        for parts in range(1, 6):
            got = [balanced_split(n, parts, i) for i in range(parts)]
            assert [s for s, _ in got] == [sum(c for _, c in got[:i]) for i in range(parts)]
            assert sum(c for _, c in got) == n and max(c for _, c in got) - min(c for _, c in got) <= 1
            assert all(got[i][1] >= got[i + 1][1] for i in range(parts - 1))
            assert [assign_blocks(n, parts, i) for i in range(parts)] == [range(s, s + c) for s, c in got]
