"""Rank 0's control decisions are followed by every rank (analytics/dpca_control.py, issue 17).

The MPI test makes ranks disagree on purpose, as ranks with different floating point could: other
stopping thresholds, a sketch rule and a rate controller replaced on one rank. Every rank must follow
rank 0 (same rounds, same message shapes, the same basis), nothing may hang, and the result must be
what rank 0 alone would certify, checked against numpy's eigh of the pooled covariance.
"""

import itertools

import pytest
from mpi4py import MPI

from stagelearn.analytics.comm_counter import CommCounter
from stagelearn.analytics.dpca_control import Decision, agree


def test_decision_byte_round_trips_every_combination():
    for stop, stalled, sketch, bits in itertools.product([False, True], [False, True], [False, True], range(8, 17)):
        d = Decision(stop, stalled, sketch, bits)
        assert 0 <= d.pack() < 128 and Decision.unpack(d.pack()) == d
    assert Decision(True, False, False, 8).pack() == 1 and Decision(False, False, True, 12).pack() == 4 | 4 << 3
    with pytest.raises(ValueError, match="next_bits must be 8..16, got 17"):
        Decision(False, False, False, 17).pack()


def test_one_rank_sends_nothing():
    counter = CommCounter(MPI.COMM_SELF)
    d = Decision(False, True, True, 11)
    assert agree(counter, d) == d and counter.bytes_sent == counter.wire_bytes == counter.rounds == 0


@pytest.mark.mpi
@pytest.mark.timeout(240)
def test_every_rank_follows_rank_0_where_its_own_decision_differs(mpirun):
    proc = mpirun(3, """
        import numpy as np
        from mpi4py import MPI
        from stagelearn.analytics import dpca_delta
        from stagelearn.analytics.comm_counter import CommCounter
        from stagelearn.analytics.dpca import local_problem, sin_theta, solve
        from stagelearn.analytics.dpca_delta import message_bytes
        from stagelearn.analytics.synthetic import sample
        comm = MPI.COMM_WORLD
        me, p = comm.rank, comm.size
        d, k = 24, 3

        def problem(t):
            A, _, _ = local_problem(sample(me, p, 1500, d, k, heterogeneity=1.0, t=t, drift=0.05), CommCounter(comm))
            C = comm.allreduce(A)  # evaluation only: numpy eigh of the pooled covariance
            return A, np.linalg.eigh(C)[1][:, ::-1][:, :k]

        def same(x):
            return all(np.array_equal(x, y) for y in comm.allgather(x))

        # 1. stop: rank 1 alone would never stop (tol 0), rank 2 alone after the first round (tol 1: every
        #    certificate is <= 1); all follow rank 0's tol = 1e-3
        A, U = problem(0)
        tol = {0: 1e-3, 1: 0.0, 2: 1.0}[me]
        V, info = solve("delta_ritz", A, k, comm, tol=tol, max_rounds=40, reference=U, sketch="never", first_bits=8)
        errors = [e for _, _, e in info["history"]]
        assert all(c >= e for c, e in zip(info["certificates"], errors)), (me, info["certificates"], errors)
        assert same(info["rounds"]) and info["rounds"] > 1 and same(V)
        assert sin_theta(V, U) <= info["certificate"] <= 1e-3
        assert same(np.array(info["certificates"]))
        # bytes: one message per round, plus rank 0's control byte to the p - 1 others (not a round)
        extra = info["rounds"] * (p - 1) if me == 0 else 0
        assert info["bytes_sent"] == info["rounds"] * message_bytes(d, k) + extra, (me, info["bytes_sent"])
        assert info["wire_bytes"] == info["rounds"] * (p - 1) * message_bytes(d, k) + extra

        # 2. the sketch: on rank 1 the rule always asks for it; the two-phase exchange's message shapes follow rank 0
        own_rule = dpca_delta.wants_sketch
        if me == 1:
            dpca_delta.wants_sketch = lambda *a: True
        V, info = solve("delta_ritz_rs", A, k, comm, tol=1e-3, max_rounds=40, reference=U, first_bits=8)
        dpca_delta.wants_sketch = own_rule
        assert same(np.array(info["sketched"])) and same(V), (me, info["sketched"])
        assert not all(info["sketched"][1:]), info["sketched"]  # rank 0's rule, not rank 1's "always"
        assert sin_theta(V, U) <= info["certificate"] <= 1e-3

        # 3. the first round's code width: on rank 2 the controller always asks for 16 bits
        own_rate = dpca_delta.next_first_bits
        if me == 2:
            dpca_delta.next_first_bits = lambda rate, bits, first_error, target: 16
        V, state, widths = None, None, []
        for t in range(4):
            A, U = problem(t)
            V, info = solve("delta_ritz_rs", A, k, comm, V0=V, state=state, tol=1e-4, max_rounds=40, reference=U,
                            rate_target=1e-3)
            state = info["state"]
            assert same(np.array(info["bits"])) and same(V), (me, t, info["bits"])
            errors = [e for _, _, e in info["history"]]
            assert all(c >= e for c, e in zip(info["certificates"], errors))
            widths.append(state["first_bits"])
        dpca_delta.next_first_bits = own_rate
        assert same(np.array(widths)) and max(widths) < 16, widths  # rank 0's controller, not rank 2's
        if me == 0:
            print("OK", widths)
    """, timeout=200)
    assert "OK" in proc.stdout
