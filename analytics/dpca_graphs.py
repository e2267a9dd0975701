"""Communication graphs of the gossip algorithms (``gossip``, ``gossip_int8``): topologies and mixing weights.

The decentralised methods of :mod:`.dpca` exchange only with neighbours: a ring, or the
simulation's Cartesian decomposition (staging ranks holding adjacent subdomains), mixed with
Metropolis-Hastings weights and Chebyshev acceleration (DeEPCA, Ye & Zhang 2021; Scaman et al.,
JMLR 2019). Everything here is computed locally, without communication.
"""

from __future__ import annotations

import math

import numpy as np


def metropolis_weights(neighbours, rank, degrees):
    """Row ``rank`` of the Metropolis-Hastings mixing matrix of a graph (symmetric, doubly stochastic)."""
    w = {j: 1.0 / (1 + max(degrees[rank], degrees[j])) for j in neighbours}
    w[rank] = 1.0 - sum(w.values())
    return w


def ring_graph(size):
    """Neighbours of each rank on a ring."""
    if size == 1:
        return [[]]
    if size == 2:
        return [[1], [0]]
    return [sorted({(r - 1) % size, (r + 1) % size}) for r in range(size)]


def grid_graph(dims):
    """Neighbours on a non-periodic Cartesian process grid (the simulation's decomposition adjacency)."""
    size = int(np.prod(dims))
    coords = list(np.ndindex(*dims))
    index = {c: i for i, c in enumerate(coords)}
    nbrs = []
    for c in coords:
        out = []
        for ax in range(len(dims)):
            for step in (-1, 1):
                n = list(c)
                n[ax] += step
                if 0 <= n[ax] < dims[ax]:
                    out.append(index[tuple(n)])
        nbrs.append(sorted(out))
    assert len(nbrs) == size
    return nbrs


def mixing_second_eigenvalue(graph):
    """Second largest eigenvalue magnitude of the Metropolis mixing matrix (computed locally, no communication)."""
    size = len(graph)
    deg = [len(g) for g in graph]
    W = np.zeros((size, size))
    for r in range(size):
        for j, v in metropolis_weights(graph[r], r, deg).items():
            W[r, j] = v
    ev = np.sort(np.abs(np.linalg.eigvalsh(W)))[::-1]
    return float(ev[1]) if size > 1 else 0.0


def gossip_setup(graph, p, r):
    """``(graph, neighbours of r, Metropolis weights, Chebyshev momentum)`` of DeEPCA's gossip on ``graph``
    (default: a ring of ``p`` ranks); shared by ``gossip`` and the int8 baseline."""
    graph = graph or ring_graph(p)
    nbrs = graph[r]
    weights = metropolis_weights(nbrs, r, [len(g) for g in graph])
    lam2 = mixing_second_eigenvalue(graph)
    eta = (1 - math.sqrt(max(1 - lam2**2, 0.0))) / (1 + math.sqrt(max(1 - lam2**2, 0.0)))
    return graph, nbrs, weights, eta
