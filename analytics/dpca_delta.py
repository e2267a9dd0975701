"""``delta_ritz``: warm-started subspace tracking with delta-coded int8 messages and a certificate.

Algorithm (one round; ``X`` is ``d x (k + 1)`` orthonormal: the basis plus one guard column)
-------------------------------------------------------------------------------------------
Every rank keeps, for every rank ``r``, a *reference* ``Y_r`` (what rank ``r`` has transmitted so
far, as decoded), so all ranks hold the same ``G = sum_r Y_r``.

1. Rank ``r`` computes the change of its product, ``D_r = A_r X - Y_r``, quantizes every column
   to int8 with a float32 scale ``s_c = max|D_r[:, c]| / 127`` and computes ``b_r``, an upper
   bound on ``lambda_max`` of ``A_r`` compressed to the orthogonal complement of ``X`` (local
   ``eigvalsh``; no communication).
2. One all-gather of ``d (k + 1)`` int8 codes, ``k + 1`` float32 scales and ``b_r`` (float64):
   ``d (k + 1) + 4 (k + 1) + 8`` bytes per rank (``collective="two_phase"``, ``delta_ritz_rs``:
   a two-phase quantized all-reduce instead, :class:`~.quantized_allreduce.TwoPhaseDeltaSum`;
   steps 3-4 are the same, with the references kept as described there).
3. Every rank decodes ``Y_r += s * codes`` for every ``r`` (closed loop: the next change is taken
   against the decoded reference, so quantization errors never accumulate: error feedback) and
   forms ``G = sum_r Y_r = C X + E`` with ``||E||_F <= eps``, ``eps`` known from the scales.
4. Rayleigh-Ritz on ``sym(X^T G)``; the references are rotated with the Ritz vectors
   (``A_r X Q = (A_r X) Q``); the certificate below is evaluated; ``X <- orth(G)`` (a free power
   step); the returned basis is the leading ``k`` columns, whose span is ``span(C V + E_V)``.

Certificate (an upper bound on sin theta of the returned basis, no extra round)
------------------------------------------------------------------------------
With ``V`` the top-``k`` Ritz vectors, ``w`` the Ritz values and ``x`` the ``(k+1)``-th Ritz vector:

- ``lambda_k(C) >= w_k - eps`` (Cauchy interlacing plus Weyl for the error ``E``);
- ``beta >= lambda_max(V_perp^T C V_perp) >= lambda_(k+1)(C)`` from the 2 x 2 bound on the
  compression to ``[x, X_perp]``: diagonal ``w_(k+1) + eps`` and ``sum_r b_r`` (Weyl:
  ``lambda_max`` is subadditive), coupling ``||(I - X X^T) G q_(k+1)|| + eps``;
- Davis-Kahan sin theta theorem (residual form, applied to the complement):
  ``s = (||(I - V V^T) G_V||_2 + eps) / (w_k - eps - beta)``;
- the power step: ``tan theta(C V, U) <= (beta / (w_k - eps)) tan theta(V, U)``;
- the quantization of the power step (Wedin): ``+ eps / (sigma_min(G_V) - eps)``;
- the QR of the power step: ``+ 10 d u`` (``u`` the unit round-off).

``sum_r b_r`` may be replaced by any upper bound on ``lambda_max`` of ``C`` on the complement of
``X``: ``delta_ritz`` also uses the complement sketch of :mod:`.dpca_certificate` when it is sent.
The theorem, its sources and the tests against a serial eigendecomposition: docs/distributed_pca.md.

The bound is ``1`` (no certificate) when ``w_k - eps <= beta``: with a tiny gap it never claims
convergence it cannot prove.
"""

from __future__ import annotations

import math

import numpy as np

from .dpca import orthonormal, sin_theta
from .dpca_certificate import sketch_bound, wants_sketch
from .dpca_control import Decision, agree
from .dpca_rate import next_first_bits
from .quantized_allreduce import GatherDeltaSum, TwoPhaseDeltaSum, encode_f32, packed_size


def message_bytes(d, k, guard_columns=1, bits=8):
    """Payload bytes one rank sends per ``delta_ritz`` round (``delta_power``: ``guard_columns=0``)."""
    m = k + guard_columns
    return packed_size(d * m, bits) + 4 * m + 8


def _encode(D):
    """int8 codes and float32 per-column scales of ``D`` (d x m); error per entry <= scale / 2."""
    return encode_f32(D)


def _pack(codes, scale, b):
    return np.concatenate([codes.ravel().view(np.uint8), scale.view(np.uint8), np.array([b]).view(np.uint8)])


def complement_lambda_max(A_r, X):
    """Upper bound on ``lambda_max`` of ``A_r`` compressed to the orthogonal complement of ``X``.

    For a :class:`~.dpca.FactorShare` (``A_r = F F^T``, ``F`` d x n_r) the eigenvalue of the
    ``n_r x n_r`` Gram matrix ``(P F)^T (P F)`` (the same non-zero spectrum, ``O(d n_r^2)``).
    """
    F = getattr(A_r, "factor", None)
    if F is not None:
        PF = F - X @ (X.T @ F)
        lam = float(np.linalg.eigvalsh(PF.T @ PF)[-1]) if F.shape[1] else 0.0
        return max(lam, 0.0) + 1e-12 * max(float(np.sum(F * F)), 1e-300)  # round-off slack
    P = np.eye(A_r.shape[0]) - X @ X.T
    M = P @ A_r @ P
    lam = float(np.linalg.eigvalsh((M + M.T) / 2)[-1])
    return max(lam, 0.0) + 1e-12 * max(float(np.abs(A_r).sum(axis=0).max()), 1e-300)  # round-off slack


def certificate(X, G, Q, w, eps, B, k):
    """Upper bound on sin theta between ``span(G Q[:, :k])`` (returned basis) and the top-k eigenspace.

    Parameters
    ----------
    X : ndarray (d, k + 1) or (d, k)
        Orthonormal basis that was multiplied (with or without the guard column).
    G : ndarray, same shape as ``X``
        Decoded ``C X + E``, ``||E||_2 <= eps``.
    Q, w : ndarray
        Eigenvectors (columns) and eigenvalues of ``sym(X^T G)``, descending.
    eps : float
    B : float
        Upper bound on ``lambda_max`` of ``C`` on the complement of ``span(X)`` (sum of ``b_r``).
    k : int

    Returns
    -------
    dict
        ``bound`` (sin theta of the returned basis; 1.0 when nothing can be certified),
        ``ritz_bound`` (of the Ritz basis ``X Q[:, :k]``), ``beta``, ``lower_k``, ``residual``
        (``||(I - V V^T) G V||_2``, computed; the bound adds ``eps``).
    """
    V, GV = X @ Q[:, :k], G @ Q[:, :k]
    lower_k = w[k - 1] - eps
    if X.shape[1] == k:  # no guard: the complement of V is the complement of X
        beta = B
    else:
        x_res = np.linalg.norm(G @ Q[:, k] - X @ (X.T @ (G @ Q[:, k]))) + eps
        alpha = w[k] + eps
        beta = (alpha + B) / 2 + math.sqrt(((alpha - B) / 2) ** 2 + x_res ** 2)
    raw = float(np.linalg.norm(GV - V @ (V.T @ GV), 2))
    res = raw + eps
    out = {"bound": 1.0, "ritz_bound": 1.0, "beta": beta, "lower_k": lower_k, "residual": raw}
    if lower_k <= beta:
        return out
    s = min(res / (lower_k - beta), 1.0)
    out["ritz_bound"] = s
    if s >= 1.0:
        return out
    t = (beta / lower_k) * s / math.sqrt(1 - s * s)
    sv = np.linalg.svd(GV, compute_uv=False)
    sig = sv[-1] - eps
    wedin = eps / sig if sig > 0 else 1.0
    # the power step's QR: Householder backward error ~ d u ||GV||, so the subspace moves by ~ d u kappa(GV)
    qr_round_off = 10 * X.shape[0] * np.finfo(float).eps * (sv[0] / sv[-1] if sv[-1] > 0 else math.inf)
    out["bound"] = min(t / math.sqrt(1 + t * t) + wedin + qr_round_off, 1.0)
    return out


def _next_width(first_bits, ok, certs, X1, V, bits, rate, target, info):
    """The next call's first-round width (:func:`.dpca_rate.next_first_bits`), measured at the end of a call.

    Only with ``first_bits="auto"`` after a warm-started call that ran past its first round, and only
    when the final certificate is below a quarter of the first round's distance to the final basis
    ``V`` (the difference then measures the first round's error within 25 %); else ``bits``.
    """
    if first_bits == "auto" and ok and len(certs) > 1:
        first_error = sin_theta(X1, V)
        if certs[-1] <= first_error / 4:
            info["first_round_error"] = first_error
            return next_first_bits(rate, bits, first_error, target)
    return bits


def delta_ritz(A_r, V, k, comm, counter, run, *, tol, max_rounds, info, state=None, guard_columns=1,
               collective="allgather", patience=None, sketch="auto", first_bits="auto", rate_target=None, **_):
    """Run ``delta_ritz`` rounds from the warm start ``V`` until the certificate is below ``tol``.

    ``guard_columns=0`` is ``delta_power``: the same delta coding and certificate on ``k`` columns
    (``d k + 4 k + 8`` bytes per round), without the guard's Rayleigh-Ritz help near a tiny gap.
    ``collective="two_phase"`` (``delta_ritz_rs``) sends the changes through the two-phase
    quantized all-reduce of :class:`~.quantized_allreduce.TwoPhaseDeltaSum` instead of an
    all-gather: the same algorithm and certificate, fewer wire bytes for ``p > 2``.

    ``patience`` (optional): also stop when the certificate has not fallen below half its best
    value of ``patience`` rounds before (nothing more is being certified, e.g. with ``k`` close
    to ``d`` where ``lambda_k`` and ``lambda_(k+1)`` are too close to separate); the returned
    ``info["certificate"]`` then says what was certified (``info["stalled"]`` is True).

    ``sketch`` (``"auto"``, ``"always"``, ``"never"``): also send the complement sketch of
    :mod:`.dpca_certificate` (about ``d`` more bytes per rank in that round) and certify with
    ``B = min(sum_r b_r, sketch bound)``. ``"auto"`` sends it in a round (never the first of a
    call, never on one rank, where ``b_r`` is exact) when ``sum_r b_r`` blocked the previous
    round's certificate, and goes on while the sketch
    helps (:func:`.dpca_certificate.wants_sketch`);
    ``info["sketched"]`` says which rounds did, ``info["certificates_free"]`` what ``sum_r b_r``
    alone certified.

    ``first_bits`` (``"auto"`` or 8..16): bits per code in the first round of a call (later rounds
    8). ``"auto"`` (:func:`.dpca_rate.next_first_bits`) starts at 8 and adapts from call to call:
    after a warm-started call that ran past its first round, the first round's output is compared
    with the final basis (no communication; only when the final certificate is below a quarter of
    the difference), and the next call's first round gets the width whose predicted error is
    ``<= rate_target / 2`` (default ``tol``).

    Every round's control decisions (stop, stalled, sketch in the next round, the next call's
    first-round width) are rank 0's, broadcast in one byte (:mod:`.dpca_control`): ranks whose
    floating point differs still agree on the shape of every message and on when to stop (an
    identical basis and a sound certificate still need identical arithmetic on every rank: each
    rank rotates its own references).

    ``state`` (from ``info["state"]`` of the previous call) carries the guard column, the
    references and the first-round bits across calls; ``info["bits"]`` lists each round's.
    Returns the basis (d x k); ``info["certificate"]`` is the certified
    upper bound on its sin theta, ``info["certificates"]`` one per round.
    """
    if sketch not in ("auto", "always", "never"):
        raise ValueError(f"dpca_delta.delta_ritz: sketch must be 'auto', 'always' or 'never', got {sketch!r}")
    if first_bits != "auto" and first_bits not in range(8, 17):
        raise ValueError(f"dpca_delta.delta_ritz: first_bits must be 'auto' or an integer 8..16, got {first_bits!r}")
    d, p = A_r.shape[0], comm.Get_size()
    m = k + guard_columns
    ok = state is not None and state["X"].shape == (d, m)
    guard = state["X"][:, k:] if ok else np.random.default_rng(4321).normal(size=(d, guard_columns))
    X = orthonormal(np.hstack([V, guard]))
    backend = {"allgather": GatherDeltaSum, "two_phase": TwoPhaseDeltaSum}[collective](p, d, m, state if ok else None)
    bits0 = (state.get("first_bits", 8) if ok else 8) if first_bits == "auto" else int(first_bits)
    target = tol if rate_target is None else rate_target
    rate = dict(state.get("rate", {})) if ok else {}
    certs, free, sketched, bits = [], [], [], []
    use = sketch == "always"  # "auto": never in a call's first round (new data; nothing known yet)
    X1 = None
    for _ in range(max_rounds):
        P = A_r @ X
        B_sketch = sketch_bound(counter, A_r, X, mode=collective) if use else math.inf
        bits.append(bits0 if not certs else 8)
        G, eps, B = backend.exchange(counter, P, complement_lambda_max(A_r, X), bits=bits[-1])
        eps = eps * (1 + 1e-6) + 1e-13 * np.linalg.norm(G) * p  # floating-point slack of the local products and sums
        M = X.T @ G
        w, Q = np.linalg.eigh((M + M.T) / 2)
        Q, w = Q[:, ::-1], w[::-1]
        cheap = certificate(X, G, Q, w, eps, B, k)
        cert = certificate(X, G, Q, w, eps, B_sketch, k) if B_sketch < B else cheap
        certs.append(cert["bound"])
        free.append(cheap["bound"])
        sketched.append(use)
        want = sketch == "always" or (sketch == "auto" and p > 1 and wants_sketch(cheap, cert, use))
        backend.rotate(Q)  # references follow the Ritz rotation: A_r (X Q) = (A_r X) Q
        X = orthonormal(G @ Q)  # power step; leading k columns span G V
        run.record(X[:, :k])
        if len(certs) == 1:
            X1 = X[:, :k]  # the first round's output (rate control)
        stop = cert["bound"] <= tol
        stalled = bool(not stop and patience and len(certs) > patience
                       and min(certs[-patience:]) > 0.5 * min(certs[:-patience]))
        last = len(certs) == max_rounds
        trial = dict(rate)
        own = Decision(stop, stalled, want, _next_width(first_bits, ok, certs, X1, X[:, :k], bits0, trial, target, info)
                       if stop or stalled or last else bits0)
        agreed = agree(counter, own)  # rank 0's decision, followed by every rank (analytics/dpca_control.py)
        use = agreed.sketch
        if agreed.ends or last:
            if own.ends or last:
                rate = trial
            bits0 = agreed.next_bits
            if agreed.stalled and not agreed.stop:
                info["stalled"] = True
            break
    info.update(state={"X": X, "first_bits": bits0, "rate": rate, **backend.state()},
                certificate=certs[-1] if certs else 1.0,
                certificates=certs, certificates_free=free, sketched=sketched, bits=bits)
    return X[:, :k]
