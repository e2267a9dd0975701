"""Two-phase quantized all-reduce (delta_ritz_rs): error bound, error feedback, payload and wire bytes."""

import numpy as np
import pytest
from mpi4py import MPI

from stagelearn.analytics.dpca import solve
from stagelearn.analytics.comm_counter import CommCounter
from stagelearn.analytics.quantized_allreduce import (GatherDeltaSum, TwoPhaseDeltaSum, encode_f32, encode_pow2,
                                                      message_bytes_two_phase, pack, packed_size, pow2_up, segments)


def test_power_of_two_quantizer_error_is_within_half_a_step():
    D = np.random.default_rng(1).normal(size=(50, 4)) * [1e-30, 1e-3, 1.0, 1e4]
    codes, e = encode_pow2(D)
    scale = np.ldexp(1.0, e.astype(np.int64))
    assert np.all(scale >= np.abs(D).max(axis=0) / 127) and np.all(scale < 2 * np.abs(D).max(axis=0) / 127)
    assert np.all(np.abs(codes * scale - D) <= scale / 2)
    zero_codes, _ = encode_pow2(np.zeros((5, 2)))
    assert not zero_codes.any()
    x = np.array([0.0, 1e-9, 0.3, 1.0, 5.0])
    assert np.all(np.ldexp(1.0, pow2_up(x).astype(np.int64)) >= x)


def test_packed_bytes_written_by_hand():
    """8 bits: the int8 codes' own bytes; 9 bits: offset binary (code + 255), least significant bit first."""
    assert pack(np.array([-1, 0, 127, -127]), 8).tolist() == [255, 0, 127, 129]
    # u = 0 and 510 = 0b111111110: bits 0..9 zero, 10..17 one -> 00000000 00111111 11000000
    assert pack(np.array([-255, 255]), 9).tolist() == [0, 63, 192] and packed_size(2, 9) == 3
    with pytest.raises(ValueError, match="bits must be an integer 8..16, got 17"):
        encode_f32(np.ones((2, 1)), 17)


class _Recorder(CommCounter):
    """One rank: keeps every message the exchanges hand to the collectives."""

    def __init__(self):
        super().__init__(MPI.COMM_SELF)
        self.sent = []

    def allgather(self, x, dtype=np.float64):
        self.sent.append(bytes(x))
        return super().allgather(x, dtype=dtype)

    def allgatherv(self, x, *, new_round=True):
        self.sent.append(bytes(x))
        return super().allgatherv(x, new_round=new_round)

    def alltoallv(self, chunks, *, new_round=True):
        self.sent.extend(bytes(c) for c in chunks)
        return super().alltoallv(chunks, new_round=new_round)


def test_default_exchanges_send_int8_bytes_written_by_hand():
    """bits=8 (the default): codes 127, -64 (rint(-63.5), half to even), 0 as int8 bytes 127, 192, 0."""
    P = np.array([[127.0], [-63.5], [0.0]])
    rec = _Recorder()
    G, _, B = GatherDeltaSum(1, 3, 1).exchange(rec, P, 0.5)  # scale 127 / 127 = 1.0 (float32)
    assert rec.sent == [bytes([127, 192, 0]) + np.float32(1.0).tobytes() + np.float64(0.5).tobytes()]
    assert G.ravel().tolist() == [127.0, -64.0, 0.0] and B == 0.5
    rec = _Recorder()
    G, _, B = TwoPhaseDeltaSum(1, 3, 1).exchange(rec, P, 0.5)  # exponent 0 (2**0 = 127 / 127); phase-1 bound 2**-1
    f32 = np.float32(0.5).tobytes()
    assert rec.sent == [bytes([127, 192, 0, 0]) + f32, bytes([127, 192, 0, 0, 255]) + f32]
    assert G.ravel().tolist() == [127.0, -64.0, 0.0] and B == 0.5


def test_segments_cover_the_rows():
    assert segments(10, 4) == [(0, 3), (3, 6), (6, 8), (8, 10)]
    assert segments(3, 1) == [(0, 3)]


def test_one_rank_byte_count():
    d, k, rounds = 12, 2, 3
    A = np.cov(np.random.default_rng(0).normal(size=(200, d)) * np.arange(1, d + 1), rowvar=False)
    _, info = solve("delta_ritz_rs", A, k, MPI.COMM_SELF, max_rounds=rounds, tol=0.0)
    assert info["rounds"] == rounds and info["bytes_sent"] == rounds * message_bytes_two_phase(d, k, 1)
    assert info["wire_bytes"] == 0  # nothing leaves a single rank


@pytest.mark.mpi
@pytest.mark.timeout(240)
def test_two_phase_sum_bound_feedback_and_wire_bytes_on_4_ranks(mpirun):
    proc = mpirun(4, """
        import numpy as np
        from mpi4py import MPI
        from stagelearn.analytics.comm_counter import CommCounter
        from stagelearn.analytics.dpca import local_problem, sin_theta, solve
        from stagelearn.analytics.quantized_allreduce import TwoPhaseDeltaSum, message_bytes_two_phase, segments
        from stagelearn.analytics.synthetic import sample
        comm = MPI.COMM_WORLD
        p, me = comm.size, comm.rank
        d, m = 30, 3  # 30 rows over 4 ranks: segments of 8, 8, 7, 7
        rng = np.random.default_rng(me)
        base = rng.normal(size=(d, m)) * 10.0 ** rng.integers(-2, 3, size=m)
        s = TwoPhaseDeltaSum(p, d, m)
        counter = CommCounter(comm)
        errs = []
        for it in range(6):  # slowly changing matrices: error feedback keeps the error relative to the change
            P = base + 1e-3 * it * rng.normal(size=(d, m))
            G, eps, B = s.exchange(counter, P, float(me + 1))
            true = np.empty_like(P)
            comm.Allreduce(P, true, op=MPI.SUM)  # independent float64 sum
            err = np.linalg.norm(true - G)
            assert err <= eps * (1 + 1e-9), (it, err, eps)
            assert B >= 10.0 and B <= 10.0 * (1 + 1e-6)  # sum of b_r = 1 + 2 + 3 + 4, rounded up in float32
            assert comm.allreduce(G.tobytes()) == G.tobytes() * p  # identical on every rank
            errs.append(err / np.linalg.norm(true))
        assert errs[-1] < errs[0] / 20, errs  # later rounds send only the change
        # bytes: phase 1 = int8 rows of the other segments + one exponent byte per column (+ float32 b to rank 0),
        # phase 2 = own segment + two exponent bytes per column (+ float32 sum of b from rank 0)
        seg = segments(d, p)
        n = [hi - lo for lo, hi in seg]
        phase1 = sum(n[j] * m + m for j in range(p) if j != me) + (4 if me != 0 else 0)
        block = [n[j] * m + 2 * m + (4 if j == 0 else 0) for j in range(p)]
        assert counter.bytes_sent == 6 * (phase1 + block[me]), (counter.bytes_sent, phase1, block[me])
        assert counter.wire_bytes == 6 * (phase1 + round((p - 1) * np.mean(block)))
        assert counter.rounds == 6
        if me == 0:
            assert counter.bytes_sent == 6 * message_bytes_two_phase(d, m - 1, p)
        # fewer rows than ranks: empty segments still work
        tiny = TwoPhaseDeltaSum(p, 2, 2)
        P = rng.normal(size=(2, 2))
        G, eps, _ = tiny.exchange(CommCounter(comm), P, 0.0)
        assert np.linalg.norm(comm.allreduce(P) - G) <= eps * (1 + 1e-9)
        # the method: delta_ritz_rs tracks like delta_ritz, with a sound certificate and fewer wire bytes than f32
        D, k = 64, 4
        X = sample(me, p, 1500, D, k, heterogeneity=1.0)
        A, _, _ = local_problem(X, CommCounter(comm))
        U, _ = solve("exact", A, k, comm)
        V, info = solve("delta_ritz_rs", A, k, comm, tol=1e-4, max_rounds=40, reference=U)
        errors = [e for _, _, e in info["history"]]
        assert all(c >= e for c, e in zip(info["certificates"], errors))
        assert sin_theta(V, U) <= info["certificate"] <= 1e-4
        assert comm.allreduce(V.tobytes()) == V.tobytes() * p
        _, f32 = solve("subspace_f32", A, k, comm, tol=1e-4, max_rounds=1)
        wire_round = info["wire_bytes"] / info["rounds"]
        assert f32["wire_bytes"] == round(2 * (p - 1) / p * D * k * 4)
        if me == 0:
            print("OK", info["rounds"], wire_round, f32["wire_bytes"])
    """)
    assert "OK" in proc.stdout
