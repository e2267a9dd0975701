"""Reconstruction that is bit for bit the same on every machine: integer codes times a basis.

A decoder must reconstruct exactly what the producer reconstructed (its closed-loop reference:
temporal prediction builds on it, and the payload carries its checksum). A float32 matrix
product does not: BLAS kernels (OpenBLAS picks one per CPU, ``OPENBLAS_CORETYPE``), thread
counts and FMA use change the order and rounding of its sums.

Here the basis is rounded once to integers on a ``2**-shift`` grid, ``shift`` the largest for
which every sum below provably stays under ``2**53``. Codes are integers too, so in float64
every product ``code * basis_int`` and every partial sum is an integer below ``2**53``: exact,
whatever the order in which a BLAS kernel adds them, its blocking, its threads or FMA. The exact
sum is then scaled by ``quant_step * 2**-shift`` (one rounding) and rounded to float32 (a second
rounding), both elementwise and thus the same everywhere. Rounding the basis moves each entry by
at most ``2**-(shift + 1)``, far below float32 noise of the coefficients for the bases met here
(``shift`` is 23 to 26 for 64 to 512 features).

Encoding (choosing the codes) may use any kernel: only what both sides reconstruct must agree.
"""

from __future__ import annotations

import math

import numpy as np

#: Codes are clipped to ``[-MAX_CODE, MAX_CODE]`` by the encoder; exactness is guaranteed up to it.
MAX_CODE = 2**24
_EXACT = 2**53


class FixedPointBasis:
    """A basis rounded to integers so that integer codes times it are exact in float64.

    Parameters
    ----------
    components : ndarray of shape (n_components, n_features)
        Basis rows (any float dtype; float32 in the codecs). With non-finite entries every
        reconstruction is NaN (the encoder then sends its tiles raw).
    max_code : int, default=MAX_CODE
        Largest code magnitude the products must stay exact for.

    Attributes
    ----------
    shift : int
        The basis is ``ints * 2**-shift``.
    ints : ndarray of shape (n_components, n_features), float64
        Integer-valued; ``max_code * max_l sum_j |ints[j, l]| <= 2**53``.
    finite : bool
        Whether ``components`` was finite.

    Raises
    ------
    ValueError
        If ``components`` is not 2-D.
    """

    def __init__(self, components, max_code=MAX_CODE):
        c = np.asarray(components, dtype=np.float64)
        if c.ndim != 2:
            raise ValueError(f"a fixed-point basis needs a 2-D array, got shape {c.shape}")
        self.finite = bool(np.all(np.isfinite(c)))
        if not self.finite:  # a diverged model: every reconstruction is NaN, as a float product would be
            c = np.zeros_like(c)
        k = c.shape[0]
        # Column L1 norms at a fine grid s0, exact in int64 (s0 keeps every sum below 2**62); at a
        # coarser grid s each entry is at most |rint(c 2**s0)| 2**(s-s0) + 1, so a column sums to at
        # most ceil(col0 / 2**(s0-s)) + k. The largest s with max_code times that <= 2**53 is taken.
        top = float(np.max(np.abs(c))) if c.size else 0.0
        s0 = 62 - math.frexp(top)[1] - int(k).bit_length()
        col0 = int(np.abs(np.rint(np.ldexp(c, s0))).astype(np.int64).sum(axis=0).max()) if c.size else 0
        if int(max_code) * (k + 1) > _EXACT:
            raise ValueError(f"max_code {max_code} with {k} components cannot keep the sums below 2**53")
        shift = s0
        while int(max_code) * (-(-col0 >> (s0 - shift)) + k) > _EXACT:
            shift -= 1
        self.shift = shift
        self.ints = np.rint(np.ldexp(c, shift))
        self.max_code = int(max_code)

    def combine(self, codes, step):
        """``(codes * step) @ basis`` computed exactly, then rounded to float32 the same way everywhere.

        Parameters
        ----------
        codes : ndarray of shape (n, n_components), integer
            ``|codes| <= max_code`` (checked by the caller; larger ones lose exactness, not safety).
        step : float
            Quantization step.

        Returns
        -------
        values : ndarray of shape (n, n_features), float32
            Row ``i`` depends only on ``codes[i]`` (decoding a subset of rows gives the same rows).
        """
        codes = np.asarray(codes)
        used = np.flatnonzero(codes.any(axis=0)) if codes.ndim == 2 else None
        if used is not None and used.size < codes.shape[1]:  # energy compaction: most columns are all zero
            s = codes[:, used].astype(np.float64) @ self.ints[used]
        else:
            s = codes.astype(np.float64) @ self.ints
        # integers below 2**53: exact in any order; zero terms change nothing (signed zeros aside: + 0.0)
        s *= math.ldexp(float(step), -self.shift)
        s += 0.0
        if not self.finite:
            s[:] = np.nan
        return s.astype(np.float32)
