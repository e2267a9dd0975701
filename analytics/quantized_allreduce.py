"""Delta-coded sums of per-rank matrices with ``b``-bit messages: the two exchanges ``delta_ritz`` can use.

Both keep, across calls, a *reference* of what has been transmitted, so each call sends only the
change of the rank's matrix ``P_r`` (closed loop: the next change is taken against the decoded
reference, so quantization errors do not accumulate). Both return ``G`` (the same on every rank)
with ``||sum_r P_r - G||_F <= eps``, ``eps`` known from the transmitted scales, and ``B = sum_r b_r``
of a scalar each rank adds.

Codes are symmetric ``bits``-bit integers (8 to 16; ``L = 2**(bits-1) - 1`` levels each side,
error per entry ``<= scale / 2``) packed ``bits`` bits per entry (:func:`pack`). Every rank passes
the same ``bits`` in a round (``delta_ritz`` derives it from quantities all ranks share,
:mod:`.dpca_rate`), so it is not sent. The default, 8, sends int8 codes; the byte counts below are
for 8 bits (``d m`` becomes :func:`packed_size` ``(d m, bits)``).

:class:`GatherDeltaSum`
    one all-gather of every rank's int8 change (per-column float32 scales): payload
    ``d m + 4 m + 8`` bytes per rank, but every rank receives ``p - 1`` messages, so the wire
    volume grows with ``p``.
:class:`TwoPhaseDeltaSum`
    a quantized all-reduce in two phases. Rows are split into ``p`` segments; rank ``j`` owns
    segment ``j``. (1) reduce-scatter: rank ``r`` sends the int8 code of segment ``j`` of its
    change to rank ``j`` (one power-of-two scale per column, sent as an int8 exponent);
    (2) owner ``j`` adds the decoded contributions exactly, adds its own carried residual,
    re-quantizes the segment of the change of the sum (error feedback: it keeps what the
    re-quantization lost for the next call) and all-gathers it with the per-column bound of the
    phase-1 error. Wire bytes per rank: about ``2 (p - 1)/p d m`` plus ``3 m`` bytes of exponents
    per segment, like a ring all-reduce of int8 instead of float32.
"""

from __future__ import annotations

import math

import numpy as np

LEVELS = 127  # levels of the default 8-bit codes: levels(8)


def levels(bits):
    """Largest code magnitude of ``bits``-bit symmetric codes: ``2**(bits-1) - 1``."""
    return 2 ** (bits - 1) - 1


def _code_dtype(bits):
    if bits not in range(8, 17):
        raise ValueError(f"quantized_allreduce: bits must be an integer 8..16, got {bits!r}")
    return np.int8 if bits == 8 else np.int16


def pack(codes, bits=8):
    """Codes in ``[-L, L]`` as the bytes sent: ``bits`` bits each (uint8, :func:`packed_size` bytes).

    8 bits: the int8 codes' own bytes (two's complement). 9 to 16 bits: offset binary
    (``code + L``), least significant bit first, packed by :func:`numpy.packbits`.
    """
    if bits == 8:
        return np.asarray(codes).astype(np.int8, copy=False).ravel().view(np.uint8)
    u = (np.asarray(codes, dtype=np.int64).ravel() + levels(bits)).astype(np.uint32)
    b = ((u[:, None] >> np.arange(bits, dtype=np.uint32)) & 1).astype(np.uint8)
    return np.packbits(b.ravel())


def unpack(buf, n, bits=8):
    """Inverse of :func:`pack`: the ``n`` codes in ``buf`` (int64)."""
    if bits == 8:
        return buf[:n].view(np.int8).astype(np.int64)
    b = np.unpackbits(buf)[:n * bits].reshape(n, bits).astype(np.int64)
    return (b << np.arange(bits)).sum(axis=1) - levels(bits)


def packed_size(n, bits=8):
    """Bytes of ``n`` packed ``bits``-bit codes: ``ceil(n bits / 8)``."""
    return n if bits == 8 else (n * bits + 7) // 8


def encode_f32(D, bits=8):
    """Codes (int8 at 8 bits, else int16) and float32 per-column scales (rounded up: no clipping).

    Error per entry <= scale / 2.
    """
    L = levels(bits)
    raw = np.abs(D).max(axis=0) / L if D.size else np.zeros(D.shape[1])
    scale = raw.astype(np.float32)
    scale = np.where(scale < raw, np.nextafter(scale, np.float32(np.inf)), scale)
    safe = np.where(scale > 0, scale, 1).astype(np.float64)
    return np.clip(np.rint(D / safe), -L, L).astype(_code_dtype(bits)), scale


def encode_pow2(D, bits=8):
    """Codes (int8 at 8 bits, else int16) and int8 exponents per column: scale ``2**e >= max|D[:, c]| / L``.

    Error per entry <= scale / 2.

    Raises
    ------
    ValueError
        If a column's largest magnitude exceeds ``L * 2**127`` (not representable).
    """
    L = levels(bits)
    peak = np.abs(D).max(axis=0) if D.size else np.zeros(D.shape[1])
    with np.errstate(divide="ignore"):
        e = np.ceil(np.log2(np.maximum(peak / L, 2.0 ** -128)))
    if np.any(e > 127):
        raise ValueError(f"quantized_allreduce.encode_pow2: a column's magnitude {peak.max():.3g} exceeds {L} * 2**127")
    e = e.astype(np.int64)
    e += (peak / L > np.ldexp(1.0, e)).astype(np.int64)  # log2 round-off: make sure 2**e >= peak / L
    e = np.minimum(e, 127).astype(np.int8)
    scale = np.ldexp(1.0, e.astype(np.int64))
    return np.clip(np.rint(D / scale), -L, L).astype(_code_dtype(bits)), e


def pow2_up(x):
    """int8 exponents ``e`` with ``2**e >= x`` (x >= 0): a bound sent in one byte."""
    with np.errstate(divide="ignore"):
        e = np.ceil(np.log2(np.maximum(np.asarray(x, dtype=np.float64), 2.0 ** -128)))
    e = np.clip(e, -128, 127).astype(np.int64)
    e += (np.asarray(x) > np.ldexp(1.0, e)).astype(np.int64)
    return np.minimum(e, 127).astype(np.int8)


def segments(d, p):
    """Row ranges ``(start, stop)`` of the ``p`` segments of ``d`` rows (balanced, the first ones larger)."""
    q, r = divmod(d, p)
    starts = [i * q + min(i, r) for i in range(p + 1)]
    return list(zip(starts[:-1], starts[1:]))


def _f32_up(x):
    """``x`` as float32, rounded up."""
    v = np.float32(x)
    return np.nextafter(v, np.float32(np.inf)) if v < x else v


class GatherDeltaSum:
    """All-gather exchange: every rank holds every rank's reference (``p d m`` floats of memory)."""

    def __init__(self, p, d, m, state=None):
        ok = state is not None and state.get("collective", "allgather") == "allgather" and state["Y"].shape == (p, d, m)
        self.Y = state["Y"] if ok else np.zeros((p, d, m))

    def exchange(self, counter, P, b, bits=8):
        """One round with ``bits``-bit codes (the same on every rank): returns ``(G, eps, B)``."""
        p, d, m = self.Y.shape
        me = counter.comm.Get_rank()
        codes, scale = encode_f32(P - self.Y[me], bits)
        nb = packed_size(d * m, bits)
        msg = np.concatenate([pack(codes, bits), scale.view(np.uint8), np.array([b]).view(np.uint8)])
        bufs = counter.allgather(msg, dtype=np.uint8)
        err_cols, B = np.zeros(m), 0.0
        for r in range(p):
            c = unpack(bufs[r][:nb], d * m, bits).reshape(d, m).astype(np.float64)
            s = bufs[r][nb:nb + 4 * m].view(np.float32).astype(np.float64)
            self.Y[r] += c * s
            err_cols += s / 2
            B += float(bufs[r][nb + 4 * m:].view(np.float64)[0])
        G = self.Y.sum(axis=0)
        return G, math.sqrt(d * float(np.sum(err_cols ** 2))), B

    def rotate(self, Q):
        self.Y = self.Y @ Q

    def state(self):
        return {"collective": "allgather", "Y": self.Y}


class TwoPhaseDeltaSum:
    """Two-phase quantized all-reduce (reduce-scatter of ``b``-bit segments, re-quantize at the owner, all-gather).

    State per rank: its own reference ``Y`` (d x m, what it has transmitted, decoded), the shared
    sum ``G`` (d x m, identical on all ranks) and, as owner, the residual ``E`` of its segment that
    the re-quantization has not yet sent (``G = sum_r Y_r - E`` stacked over owners).
    """

    def __init__(self, p, d, m, state=None):
        self.seg = segments(d, p)
        ok = state is not None and state.get("collective") == "two_phase" and state["G"].shape == (d, m)
        self.Y = state["Y"] if ok else np.zeros((d, m))
        self.G = state["G"] if ok else np.zeros((d, m))
        self.E = state["E"] if ok else np.zeros((d, m))  # only the owned segment's rows are non-zero

    def exchange(self, counter, P, b, bits=8):
        """One round (two collectives, counted as one round; ``bits``-bit codes in both): returns ``(G, eps, B)``."""
        comm = counter.comm
        p, me = comm.Get_size(), comm.Get_rank()
        d, m = self.Y.shape
        D = P - self.Y
        chunks = []
        for j, (lo, hi) in enumerate(self.seg):
            codes, e = encode_pow2(D[lo:hi], bits)
            self.Y[lo:hi] += codes * np.ldexp(1.0, e.astype(np.int64))  # closed loop on what was sent
            extra = np.array([_f32_up(b)], dtype=np.float32).view(np.uint8) if j == 0 else np.zeros(0, np.uint8)
            chunks.append(np.concatenate([pack(codes, bits), e.view(np.uint8), extra]))
        got = counter.alltoallv(chunks)
        lo, hi = self.seg[me]
        n = hi - lo
        nb = packed_size(n * m, bits)
        S, err1, B = np.zeros((n, m)), np.zeros(m), 0.0
        for r in range(p):
            codes = unpack(got[r][:nb], n * m, bits).reshape(n, m).astype(np.float64)
            scale = np.ldexp(1.0, got[r][nb:nb + m].view(np.int8).astype(np.int64))
            S += codes * scale
            err1 += scale / 2
            if me == 0:
                B += float(got[r][nb + m:].view(np.float32)[0])
        T = S + self.E[lo:hi]
        codes2, e2 = encode_pow2(T, bits)
        sent = codes2 * np.ldexp(1.0, e2.astype(np.int64))
        self.E[lo:hi] = T - sent
        extra = np.array([_f32_up(B)], dtype=np.float32).view(np.uint8) if me == 0 else np.zeros(0, np.uint8)
        msg = np.concatenate([pack(codes2, bits), e2.view(np.uint8), pow2_up(err1).view(np.uint8), extra])
        parts = counter.allgatherv(msg, new_round=False)
        sq = 0.0
        for j, (lo, hi) in enumerate(self.seg):
            n = hi - lo
            nb = packed_size(n * m, bits)
            buf = parts[j]
            codes = unpack(buf[:nb], n * m, bits).reshape(n, m).astype(np.float64)
            s2 = np.ldexp(1.0, buf[nb:nb + m].view(np.int8).astype(np.int64))
            e1 = np.ldexp(1.0, buf[nb + m:nb + 2 * m].view(np.int8).astype(np.int64))
            self.G[lo:hi] += codes * s2
            sq += n * float(np.sum((e1 + s2 / 2) ** 2))
            if j == 0:
                B = float(buf[nb + 2 * m:].view(np.float32)[0])
        return self.G.copy(), math.sqrt(sq), B

    def rotate(self, Q):
        self.Y, self.G, self.E = self.Y @ Q, self.G @ Q, self.E @ Q

    def state(self):
        return {"collective": "two_phase", "Y": self.Y, "G": self.G, "E": self.E}


def message_bytes_two_phase(d, k, p, guard_columns=1, bits=8):
    """Payload (= wire) bytes rank 0 sends per ``two_phase`` round: off-rank chunks plus its all-gather block.

    Rank 0 owns the largest segment and carries the two float32 sums of ``b``.
    """
    m = k + guard_columns
    seg = segments(d, p)
    phase1 = sum(packed_size((hi - lo) * m, bits) + m for lo, hi in seg[1:])
    n0 = seg[0][1] - seg[0][0]
    return phase1 + packed_size(n0 * m, bits) + 2 * m + 4
