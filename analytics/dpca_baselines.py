"""Same-precision baselines for ``delta_ritz`` (issue 17): block Krylov in float32, DeEPCA gossip with int8.

``krylov_f32``
    Block Lanczos (block Krylov subspace ``[V, C V, C^2 V, ...]``) with full re-orthogonalization
    and restarts, warm-started from the previous basis. Each round is one all-reduce of
    ``A_r Q_j`` (``d x k``, float32, the message of ``subspace_f32``); after every round a
    Rayleigh-Ritz step on the blocks so far, followed by the free power step ``C Z s`` (``C Q_j`` is
    what the round returned), gives the current basis; the first round is thus one step of
    subspace iteration. After ``blocks`` rounds it restarts from the top-k Ritz vectors. Stops when the
    basis moves less than ``tol / 10`` (as ``subspace``). Reference: Musco & Musco, NeurIPS 2015
    (block Krylov PCA); Golub & Underwood 1977 (block Lanczos).
``gossip_int8``
    DeEPCA (``gossip``, Chebyshev-accelerated mixing of the tracked product with neighbours) whose
    every neighbour message is the int8 delta code of :mod:`.dpca_delta` (per-column float32
    scales, closed loop: each rank keeps the decoded reference of its own message and of each
    neighbour's) and mixed in the CHOCO-gossip form ``x_r + sum_j w_rj (ref_j - ref_r)`` (Koloskova,
    Stich & Jaggi, ICML 2019), which keeps the average exact under quantization. Per exchange:
    ``d k + 4 k`` bytes to each neighbour.
"""

from __future__ import annotations


import numpy as np

from .quantized_allreduce import encode_f32


def krylov_f32(A_r, V, k, comm, counter, run, *, tol, max_rounds, blocks=3, **_):
    """Restarted block Krylov (block Lanczos) with float32 messages; returns the basis (d x k)."""
    from .dpca import _converged, orthonormal

    V = orthonormal(V)
    rounds = 0
    while rounds < max_rounds:
        Qs, Ws = [V], []
        V_prev = V
        done = False
        for _ in range(blocks):
            if rounds >= max_rounds:
                break
            Ws.append(counter.allreduce(A_r @ Qs[-1], dtype=np.float32))  # C Q_j
            rounds += 1
            Z, CZ = np.hstack(Qs), np.hstack(Ws)
            M = Z.T @ CZ
            w, S = np.linalg.eigh((M + M.T) / 2)
            V_new = orthonormal(CZ @ S[:, ::-1][:, :k])  # top-k Ritz vectors, power-stepped (C Z is known)
            run.record(V_new)
            done = _converged(comm, V_new, V_prev, tol)
            V_prev = V_new
            if done:
                break
            nxt = Ws[-1] - Z @ (Z.T @ Ws[-1])  # next block, orthogonal to all earlier ones (full re-orthogonalization)
            nxt = nxt - Z @ (Z.T @ nxt)
            q, r = np.linalg.qr(nxt)
            if np.min(np.abs(np.diag(r))) < 1e-12 * max(np.abs(np.diag(r)).max(), 1e-300):
                break  # the space is invariant: restart from the Ritz vectors
            Qs.append(q)
        V = V_prev
        if done:
            break
    return V


def gossip_int8(A_r, V, k, comm, counter, run, *, tol, max_rounds, gossip_steps, graph, **_):
    """DeEPCA with int8 delta-coded neighbour messages (same decentralised algorithm as ``gossip``)."""
    from .dpca import _converged, orthonormal
    from .dpca_graphs import gossip_setup

    p, r = comm.Get_size(), comm.Get_rank()
    graph, nbrs, weights, eta = gossip_setup(graph, p, r)
    d = A_r.shape[0]
    refs = {j: np.zeros((d, k)) for j in [r, *nbrs]}  # decoded references: own message and each neighbour's

    def exchange(cur):
        codes, scale = encode_f32(cur - refs[r])
        msg = np.concatenate([codes.ravel().view(np.uint8), scale.view(np.uint8)])
        got = counter.neighbours_bytes(msg, nbrs) if nbrs else {}
        refs[r] += codes * scale.astype(np.float64)
        for j in nbrs:
            refs[j] += got[j][:d * k].view(np.int8).reshape(d, k) * got[j][d * k:].view(np.float32).astype(np.float64)

    def mix(S):
        prev, cur = S, S
        for _ in range(gossip_steps):
            exchange(cur)
            wcur = cur + sum(weights[j] * (refs[j] - refs[r]) for j in nbrs)  # CHOCO form: keeps the average exact
            prev, cur = cur, (1 + eta) * wcur - eta * prev
        return cur

    W_old = A_r @ V
    S = mix(W_old)
    for _ in range(max_rounds):
        V_new = orthonormal(S)
        V_new *= np.sign(np.sum(V_new * V, axis=0))
        run.record(V_new)
        done = _converged(comm, V_new, V, tol)
        V = V_new
        if done:
            break
        W = A_r @ V
        S = mix(S + W - W_old)
        W_old = W
    return V
