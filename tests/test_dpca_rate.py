"""Rate control of delta_ritz (analytics/dpca_rate.py): b-bit codes, their bytes, the first-round controller."""

import numpy as np
import pytest
from mpi4py import MPI

from stagelearn.analytics.dpca import solve
from stagelearn.analytics.dpca_delta import message_bytes
from stagelearn.analytics.dpca_rate import next_first_bits
from stagelearn.analytics.quantized_allreduce import (encode_f32, encode_pow2, levels, message_bytes_two_phase, pack,
                                                      packed_size, unpack)


@pytest.mark.parametrize("bits", [8, 9, 11, 12, 16])
def test_codes_round_trip_and_stay_within_half_a_step(bits):
    D = np.random.default_rng(bits).normal(size=(37, 3)) * [1e-3, 1.0, 1e4]
    codes, scale = encode_f32(D, bits)
    assert np.abs(codes).max() <= levels(bits)
    buf = pack(codes, bits)
    assert buf.nbytes == packed_size(codes.size, bits) == (codes.size * bits + 7) // 8
    np.testing.assert_array_equal(unpack(buf, codes.size, bits).reshape(codes.shape), codes)
    assert np.all(np.abs(codes * scale.astype(np.float64) - D) <= scale * 0.5 * (1 + 1e-6))
    codes2, e = encode_pow2(D, bits)
    step = np.ldexp(1.0, e.astype(np.int64))
    assert np.all(step >= np.abs(D).max(axis=0) / levels(bits)) and np.all(np.abs(codes2 * step - D) <= step / 2)


def test_one_rank_bytes_at_a_fixed_first_round_width():
    """12 bits in the first round, 8 after: the packed sizes, counted by hand."""
    d, k, rounds = 24, 3, 3
    A = np.cov(np.random.default_rng(0).normal(size=(300, d)) * np.arange(1, d + 1), rowvar=False)
    _, info = solve("delta_ritz", A, k, MPI.COMM_SELF, max_rounds=rounds, tol=0.0, first_bits=12, sketch="never")
    m = k + 1
    assert info["bits"] == [12, 8, 8]
    assert info["bytes_sent"] == (d * m * 12 // 8 + 4 * m + 8) + 2 * (d * m + 4 * m + 8)
    assert message_bytes(d, k, bits=12) == d * m * 12 // 8 + 4 * m + 8
    _, info = solve("delta_ritz_rs", A, k, MPI.COMM_SELF, max_rounds=rounds, tol=0.0, first_bits=8, sketch="never")
    assert info["bytes_sent"] == rounds * message_bytes_two_phase(d, k, 1)  # 8 bits: the int8 exchange's bytes


def test_controller_adds_bits_when_they_pay_and_returns_to_8_when_they_do_not():
    rate = {}
    assert next_first_bits(rate, 8, 4.2e-3, 1e-3) == 12  # 4.2e-3 -> predicted 2.6e-4 <= 5e-4 at 12 bits
    assert next_first_bits(rate, 12, 3.0e-4, 1e-3) == 12  # it paid (14x for 16x predicted): stay
    assert not rate.get("locked")
    rate = {}
    assert next_first_bits(rate, 8, 2e-3, 1e-3) == 10
    assert next_first_bits(rate, 10, 1.9e-3, 1e-3) == 8 and rate["locked"]  # contraction-limited: more bits useless
    assert next_first_bits(rate, 8, 5e-3, 1e-3) == 8
    assert next_first_bits({}, 12, 1e-5, 1e-3) == 8  # far below the target: fewer bits
    assert next_first_bits({}, 8, 1.0, 1e-3) == 16  # capped
    assert next_first_bits({}, 9, 0.0, 1e-3) == 9 and next_first_bits({}, 9, 1e-3, 0.0) == 9


def test_auto_rate_keeps_the_certificate_sound_while_tracking():
    """One rank, drifting spectrum: the controller changes the first round's width; every round's
    certificate stays above the true error (exact eigh)."""
    rng = np.random.default_rng(5)
    d, k = 40, 3
    Q0 = np.linalg.qr(rng.normal(size=(d, d)))[0]
    lam = np.concatenate([[10.0, 8.0, 6.0, 2.0], 0.5 * rng.random(d - 4)])
    V, state, widths = None, None, []
    for t in range(6):
        Q = np.linalg.qr(Q0 + 0.02 * t * rng.normal(size=(d, d)))[0]
        C = (Q * lam) @ Q.T
        U = np.linalg.eigh(C)[1][:, ::-1][:, :k]
        V, info = solve("delta_ritz", C, k, MPI.COMM_SELF, V0=V, state=state, tol=1e-6, max_rounds=30, reference=U,
                        rate_target=1e-3)
        state = info["state"]
        widths.append(info["bits"][0])
        errors = [e for _, _, e in info["history"]]
        assert all(c >= e for c, e in zip(info["certificates"], errors)), (t, info["certificates"], errors)
    assert widths[0] == 8 and all(8 <= b <= 16 for b in widths)


def test_bad_options_are_refused_with_the_name_and_the_choices():
    A = np.eye(6)
    with pytest.raises(ValueError, match="first_bits must be 'auto' or an integer 8..16, got 20"):
        solve("delta_ritz", A, 2, MPI.COMM_SELF, first_bits=20)
    with pytest.raises(ValueError, match="sketch must be 'auto', 'always' or 'never', got 'sometimes'"):
        solve("delta_ritz", A, 2, MPI.COMM_SELF, sketch="sometimes")
