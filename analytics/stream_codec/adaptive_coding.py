"""Context-adaptive binary arithmetic coding of quantization codes (no tables in the payload; numba).

The alternative to :mod:`.entropy_coding`'s static rANS for frames where most codes are 0 (smooth
fields at moderate PSNR): there the transmitted histograms are a large part of the frame, and a
flat zero-probability per level spends bits on regions that are certainly 0. Here every code is
binarised and each binary decision is coded with an adaptive probability (31-bit, moved towards each
decision seen in its context by ``2^-rate``, the rate growing as ``log2(n + 2)`` up to ``RATE_MAX``:
close to a count-based estimate at first, then a window of ~2^RATE_MAX decisions; integer shifts
only, and both sides update it identically):

- ``k == 0``: context = level group (``min(level, 4)``) x ``min(|previous code|, 2)`` x activity;
- the sign: context = sign of the previous code;
- ``|k| - 1`` in unary up to ``UNARY`` bins (context = bin x activity), then an Exp-Golomb
  remainder (adaptive prefix, raw suffix bits).

*Activity* is what the decoder knows before the frame: the previous reconstructed frame's detail at
the point, ``|p[j] - (p[j - s] + p[j + s]) / 2|`` along the point's interpolation axis at its
stride (one-sided at an edge), in units of the level's step, in ``N_ACT`` bins. On a field that
moves little it says where the codes will be nonzero. Without a previous frame it is 0.

The coder is LZMA's range coder (32-bit range, carry propagation through a cached byte) with
16-bit probabilities; every operation is on integers except the activity's float64 comparisons,
which are IEEE operations in a fixed order (numba without ``fastmath``) on values both sides hold
bit for bit: decoding is bit-exact on any machine.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .interpolation import pass_ranges

N_GROUPS, N_PREV, N_ACT = 5, 3, 5
UNARY = 14  # unary bins of |k| - 1 before the Exp-Golomb remainder
EG_BITS = 32
RATE_MAX = 11  # adaptation rate cap: probabilities follow about the last 2^11 decisions of a context
_TOP = 1 << 24
_N_ZERO = N_GROUPS * N_PREV * N_ACT
_N_SIGN = 3
_N_MAG = (UNARY + 1) * N_ACT
_N_EG = EG_BITS
_N_CTX = _N_ZERO + _N_SIGN + _N_MAG + _N_EG


@njit(cache=True)
def contexts(prev, has_prev, n0, n1, n2, qlev):
    """Per code, in the kernels' traversal order: its level group and its activity bin.

    Returns
    -------
    group, act : ndarray of uint8, shape (n0 * n1 * n2,)
    """
    n = n0 * n1 * n2
    group = np.empty(n, np.uint8)
    act = np.zeros(n, np.uint8)
    shape = (n0, n1, n2)
    strides = (n1 * n2, n2, 1)
    levels = 0
    m = max(n0, max(n1, n2)) - 1
    while m > 0:
        levels += 1
        m >>= 1
    group[0] = N_GROUPS - 1
    pos = 1
    for lev in range(levels - 1, -1, -1):
        s = 1 << lev
        g = np.uint8(min(lev, N_GROUPS - 1))
        q = qlev[lev]
        for d in range(3):
            nd = shape[d]
            if nd <= s:
                continue
            st = strides[d]
            b0, e0, b1, e1, b2, e2 = pass_ranges(d, s)
            for i0 in range(b0, n0, e0):
                for i1 in range(b1, n1, e1):
                    for i2 in range(b2, n2, e2):
                        group[pos] = g
                        if has_prev:
                            j = i0 * strides[0] + i1 * strides[1] + i2
                            i = i0 if d == 0 else (i1 if d == 1 else i2)
                            m1 = np.float64(prev[j - s * st])
                            if i + s < nd:
                                det = abs(np.float64(prev[j]) - (m1 + np.float64(prev[j + s * st])) * 0.5)
                            else:
                                det = abs(np.float64(prev[j]) - m1)
                            # bins at 1/8, 1/2, 2, 8 steps
                            a = 0
                            if det * 8.0 >= q:
                                a = 1
                                if det * 2.0 >= q:
                                    a = 2
                                    if det >= 2.0 * q:
                                        a = 3
                                        if det >= 8.0 * q:
                                            a = 4
                            act[pos] = np.uint8(a)
                        pos += 1
    return group, act




@njit(cache=True, inline="always")
def _p0(counts, c):
    """16-bit probability of a 0 decision in context ``c`` (state: 31-bit probability, count, rate)."""
    return min(max(counts[c, 0] >> 15, 1), 65535)


@njit(cache=True, inline="always")
def _update(counts, c, bit):
    """Move the probability towards the decision by ``2^-rate``; the rate grows as ``log2(n + 2)``
    up to ``RATE_MAX`` (about a count-based estimate at first, then a window of ~2^RATE_MAX)."""
    r = counts[c, 2]
    if bit == 0:
        counts[c, 0] += ((1 << 31) - counts[c, 0]) >> r
    else:
        counts[c, 0] -= counts[c, 0] >> r
    n = counts[c, 1] + 1
    counts[c, 1] = n
    if r < RATE_MAX and n + 2 >= (2 << r):
        counts[c, 2] = r + 1


@njit(cache=True)
def _new_state():
    st = np.zeros((_N_CTX, 3), np.int64)
    for c in range(_N_CTX):
        st[c, 0] = 1 << 30
        st[c, 2] = 1
    return st


@njit(cache=True, inline="always")
def _shift_low(low, cache, csize, out, n_out):
    """LZMA's ShiftLow: emit the top byte of ``low`` once no carry can reach it any more."""
    if low < 0xFF000000 or low >= (1 << 32):
        carry = low >> 32
        temp = cache
        while True:
            out[n_out] = np.uint8((temp + carry) & 0xFF)
            n_out += 1
            temp = 0xFF
            csize -= 1
            if csize == 0:
                break
        cache = (low >> 24) & 0xFF
    csize += 1
    low = (low & 0x00FFFFFF) << 8
    return low, cache, csize, n_out


@njit(cache=True, inline="always")
def _enc_bit(low, rng, cache, csize, out, n_out, p0, bit):
    bound = (rng >> 16) * p0
    if bit == 0:
        rng = bound
    else:
        low += bound
        rng -= bound
    while rng < _TOP:
        rng <<= 8
        low, cache, csize, n_out = _shift_low(low, cache, csize, out, n_out)
    return low, rng, cache, csize, n_out


@njit(cache=True, inline="always")
def _dec_bit(code, rng, pos, data, p0):
    """Returns ``(bit, code, range, pos)``."""
    bound = (rng >> 16) * p0
    if code < bound:
        rng = bound
        bit = 0
    else:
        code -= bound
        rng -= bound
        bit = 1
    while rng < _TOP:
        rng <<= 8
        b = np.int64(data[pos]) if pos < data.size else 0
        code = ((code << 8) | b) & 0xFFFFFFFF
        pos += 1
    return bit, code, rng, pos


@njit(cache=True)
def _encode(codes, group, act, out):
    counts = _new_state()
    low = np.int64(0)
    rng = np.int64(0xFFFFFFFF)
    cache = np.int64(0)
    csize = np.int64(1)
    n_out = 0
    prev = 0
    for pos in range(codes.size):
        k = np.int64(codes[pos])
        a = np.int64(act[pos])
        pc = min(abs(prev), 2)
        c = (np.int64(group[pos]) * N_PREV + pc) * N_ACT + a
        nz = 1 if k != 0 else 0
        low, rng, cache, csize, n_out = _enc_bit(low, rng, cache, csize, out, n_out, _p0(counts, c), nz)
        _update(counts, c, nz)
        if nz:
            c = _N_ZERO + (0 if prev < 0 else (1 if prev == 0 else 2))
            sb = 1 if k < 0 else 0
            low, rng, cache, csize, n_out = _enc_bit(low, rng, cache, csize, out, n_out, _p0(counts, c), sb)
            _update(counts, c, sb)
            m = abs(k) - 1
            b = 0
            while b < UNARY:
                c = _N_ZERO + _N_SIGN + b * N_ACT + a
                more = 1 if m > b else 0
                low, rng, cache, csize, n_out = _enc_bit(low, rng, cache, csize, out, n_out, _p0(counts, c), more)
                _update(counts, c, more)
                if not more:
                    break
                b += 1
            if b == UNARY:  # Exp-Golomb of r = m - UNARY + 1: nb = bit length - 1, unary prefix, raw suffix
                r = m - UNARY + 1
                nb = 0
                while (r >> (nb + 1)) > 0:
                    nb += 1
                for e in range(nb + 1):
                    c = _N_ZERO + _N_SIGN + _N_MAG + e
                    more = 1 if e < nb else 0
                    low, rng, cache, csize, n_out = _enc_bit(low, rng, cache, csize, out, n_out, _p0(counts, c),
                                                             more)
                    _update(counts, c, more)
                for e in range(nb - 1, -1, -1):
                    low, rng, cache, csize, n_out = _enc_bit(low, rng, cache, csize, out, n_out, 32768,
                                                             (r >> e) & 1)
        prev = k
    for _ in range(5):
        low, cache, csize, n_out = _shift_low(low, cache, csize, out, n_out)
    return n_out


@njit(cache=True)
def _decode(data, group, act, codes):
    counts = _new_state()
    code = np.int64(0)
    rng = np.int64(0xFFFFFFFF)
    pos_in = 0
    for _ in range(5):
        b = np.int64(data[pos_in]) if pos_in < data.size else 0
        code = ((code << 8) | b) & 0xFFFFFFFF
        pos_in += 1
    prev = 0
    for pos in range(codes.size):
        a = np.int64(act[pos])
        pc = min(abs(prev), 2)
        c = (np.int64(group[pos]) * N_PREV + pc) * N_ACT + a
        nz, code, rng, pos_in = _dec_bit(code, rng, pos_in, data, _p0(counts, c))
        _update(counts, c, nz)
        k = 0
        if nz:
            c = _N_ZERO + (0 if prev < 0 else (1 if prev == 0 else 2))
            sb, code, rng, pos_in = _dec_bit(code, rng, pos_in, data, _p0(counts, c))
            _update(counts, c, sb)
            m = 0
            while m < UNARY:
                c = _N_ZERO + _N_SIGN + m * N_ACT + a
                more, code, rng, pos_in = _dec_bit(code, rng, pos_in, data, _p0(counts, c))
                _update(counts, c, more)
                if not more:
                    break
                m += 1
            if m == UNARY:
                nb = 0
                while nb < EG_BITS - 1:
                    c = _N_ZERO + _N_SIGN + _N_MAG + nb
                    more, code, rng, pos_in = _dec_bit(code, rng, pos_in, data, _p0(counts, c))
                    _update(counts, c, more)
                    if not more:
                        break
                    nb += 1
                r = 1
                for _ in range(nb):
                    bit, code, rng, pos_in = _dec_bit(code, rng, pos_in, data, 32768)
                    r = (r << 1) | bit
                m = UNARY + r - 1
            k = -(m + 1) if sb else m + 1
        codes[pos] = np.int32(k)
        prev = k
    return pos_in


def encode_codes_adaptive(codes, shape3, prev3, qlev):
    """Code ``codes`` (traversal order of a field of ``shape3``) with the adaptive binary coder.

    Parameters
    ----------
    codes : ndarray of int32
    shape3 : tuple of 3 int
    prev3 : ndarray or None
        The previous reconstructed frame (activity contexts), as the decoder will hold it.
    qlev : ndarray of float64
        The level steps (:func:`~.frame_header.level_steps`).

    Returns
    -------
    data : bytes
    """
    group, act = _contexts(shape3, prev3, qlev)
    out = np.empty(codes.size * 6 + 64, np.uint8)  # worst case: a 32-bit escape per code
    n = _encode(np.ascontiguousarray(codes, dtype=np.int32), group, act, out)
    return out[:n].tobytes()


def decode_codes_adaptive(data, shape3, prev3, qlev):
    """The inverse of :func:`encode_codes_adaptive`.

    Raises
    ------
    ValueError
        If the stream ends before every code is decoded (corrupt payload).
    """
    group, act = _contexts(shape3, prev3, qlev)
    buf = np.frombuffer(data, np.uint8)
    codes = np.empty(group.size, np.int32)
    used = _decode(buf, group, act, codes)
    if used > buf.size + 5:
        raise ValueError(f"adaptive code stream: {buf.size} bytes, {used} read (truncated)")
    return codes


def _contexts(shape3, prev3, qlev):
    n0, n1, n2 = (int(v) for v in shape3)
    has_prev = prev3 is not None
    prev = np.ascontiguousarray(prev3).ravel() if has_prev else np.zeros(1, np.float32)
    return contexts(prev, has_prev, n0, n1, n2, np.asarray(qlev, np.float64))
