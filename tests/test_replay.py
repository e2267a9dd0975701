"""Replay buffers: FIFO order, Algorithm R's distribution, stratification, memory cap, NaN rejection."""

import math

import numpy as np
import pytest
from scipy import stats

from stagelearn.analytics.replay import (
    BUFFER_KINDS,
    FIFOBuffer,
    ReservoirBuffer,
    StratifiedBuffer,
    make_buffer,
)

MIB = 2**20
P_MIN = 1e-3


def mib_for(capacity, n_features):
    """Cap that holds exactly ``capacity`` float32 tiles of ``n_features``."""
    return capacity * 4 * n_features / MIB


def stream_indices(buf, n, batch_sizes, rng):
    """Feed tiles 0..n-1 (one feature, value = index) in batches of sizes drawn from ``batch_sizes``."""
    i = 0
    while i < n:
        m = min(int(rng.choice(batch_sizes)), n - i)
        buf.add(np.arange(i, i + m, dtype=np.float32)[:, None])
        i += m


def held_indices(buf):
    return np.sort(buf.tiles()[:, 0].astype(np.int64))


# ---------------------------------------------------------------------------- FIFO
def test_fifo_keeps_newest_in_order():
    buf = FIFOBuffer(mib_for(10, 3))
    assert buf.capacity is None and len(buf) == 0
    seen = 0
    for size in [1, 5, 3, 12, 7, 9, 25, 2]:
        vals = np.arange(seen, seen + size, dtype=np.float32)
        buf.add(np.repeat(vals[:, None], 3, axis=1), sources=seen % 4)
        seen += size
        newest = np.arange(max(0, seen - 10), seen)
        assert buf.capacity == 10 and len(buf) == len(newest) == min(seen, 10)
        np.testing.assert_array_equal(buf.tiles()[:, 0], newest)
        np.testing.assert_array_equal(buf.tiles()[:, 2], newest)
    assert buf.n_seen_ == seen
    # default steps count the add calls; labels follow the tiles
    np.testing.assert_array_equal(buf.steps(), [6] * 8 + [7] * 2)
    np.testing.assert_array_equal(buf.sources(), [(seen - 2 - 25) % 4] * 8 + [(seen - 2) % 4] * 2)


# ---------------------------------------------------------------------------- reservoir
def test_reservoir_inclusion_is_uniform():
    n, cap, repeats = 10_000, 100, 200
    counts = np.zeros(n)
    for r in range(repeats):
        buf = ReservoirBuffer(mib_for(cap, 1), seed=r)
        stream_indices(buf, n, [1, 3, 17, 64, 250, 999, 2500], np.random.default_rng(10_000 + r))
        held = held_indices(buf)
        assert len(held) == cap == buf.capacity and len(np.unique(held)) == cap
        assert buf.n_seen_ == n
        counts[held] += 1
    freq = counts / repeats
    assert abs(freq.mean() - cap / n) < 1e-12  # the buffer is always full
    deciles = counts.reshape(10, -1).sum(axis=1)
    assert stats.chisquare(deciles).pvalue > P_MIN, deciles
    centiles = counts.reshape(100, -1).sum(axis=1)
    assert stats.chisquare(centiles).pvalue > P_MIN
    # the first `cap` items (the fill phase) and the last batch are not favoured either
    for part in (freq[:cap], freq[-cap:]):
        assert abs(part.mean() - cap / n) < 5 * math.sqrt(cap / n / (repeats * cap))


def test_reservoir_pairs_are_uniform():
    # Algorithm R's joint distribution: 2 of 5 items, every pair with probability 1/10
    counts = {}
    repeats = 2000
    for r in range(repeats):
        buf = ReservoirBuffer(mib_for(2, 1), seed=r)
        stream_indices(buf, 5, [1, 2, 3, 5], np.random.default_rng(r))
        pair = tuple(held_indices(buf))
        counts[pair] = counts.get(pair, 0) + 1
    assert len(counts) == 10
    assert stats.chisquare(list(counts.values())).pvalue > P_MIN, counts


def test_reservoir_batched_matches_one_at_a_time():
    n, cap, repeats = 60, 6, 300
    single, batched = np.zeros(n), np.zeros(n)
    for r in range(repeats):
        buf = ReservoirBuffer(mib_for(cap, 1), seed=r)
        stream_indices(buf, n, [1], np.random.default_rng(r))
        single[held_indices(buf)] += 1
        buf = ReservoirBuffer(mib_for(cap, 1), seed=10_000 + r)
        stream_indices(buf, n, [4, 9, 30, 100], np.random.default_rng(r))
        batched[held_indices(buf)] += 1
    table = np.stack([single.reshape(10, -1).sum(axis=1), batched.reshape(10, -1).sum(axis=1)])
    assert stats.chisquare(table[0]).pvalue > P_MIN
    assert stats.chisquare(table[1]).pvalue > P_MIN
    assert stats.chi2_contingency(table).pvalue > P_MIN, table


def test_reservoir_is_reproducible():
    data = np.random.default_rng(0).normal(size=(500, 4))
    a = ReservoirBuffer(mib_for(20, 4), seed=3).add(data)
    b = ReservoirBuffer(mib_for(20, 4), seed=3).add(data)
    np.testing.assert_array_equal(a.tiles(), b.tiles())
    np.testing.assert_array_equal(a.sample(7, rng=np.random.default_rng(1)), b.sample(7, rng=np.random.default_rng(1)))


# ---------------------------------------------------------------------------- stratified
def feed_unequal_sources(buf, n_steps, rng, volumes=(100, 10, 10, 10), n_features=8):
    """Each step, source s sends volumes[s] tiles; feature 0 = source, feature 1 = step, rest noise."""
    for step in range(n_steps):
        for src, m in enumerate(volumes):
            tiles = rng.normal(size=(m, n_features)).astype(np.float32)
            tiles[:, 0], tiles[:, 1] = src, step
            buf.add(tiles, sources=np.full(m, src), step=step)
            if isinstance(buf, StratifiedBuffer):  # never more than time_bins strata per source
                assert max(np.unique([s for s, _ in buf.stratum_sizes()], return_counts=True)[1]) <= buf.time_bins


def test_stratified_balances_sources_and_keeps_old_steps():
    cap, n_steps = 400, 30
    buf = StratifiedBuffer(mib_for(cap, 8), time_bins=4, seed=1)
    feed_unequal_sources(buf, n_steps, np.random.default_rng(0))
    assert len(buf) == cap and buf.n_seen_ == n_steps * 130
    # labels travel with their tiles
    np.testing.assert_array_equal(buf.tiles()[:, 0], buf.sources())
    np.testing.assert_array_equal(buf.tiles()[:, 1], buf.steps())
    per_source = np.bincount(buf.sources(), minlength=4)
    assert per_source.min() >= 0.9 * cap / 4 and per_source.max() <= 1.1 * cap / 4, per_source
    sizes = buf.stratum_sizes()
    held = np.array([h for h, _ in sizes.values()])
    assert held.max() - held.min() <= 2, sizes
    # old and recent steps are both kept, for every source
    for src in range(4):
        steps = buf.steps()[buf.sources() == src]
        assert steps.min() < n_steps // 4 and steps.max() >= n_steps - 2, (src, np.unique(steps))
    # a reservoir on the same stream is dominated by source 0
    res = ReservoirBuffer(mib_for(cap, 8), seed=1)
    feed_unequal_sources(res, n_steps, np.random.default_rng(0))
    assert np.bincount(res.sources())[0] > 0.6 * cap
    # sampling: uniform over strata, so balanced over sources; without replacement
    draw = buf.sample(200, rng=np.random.default_rng(5))
    assert draw.shape == (200, 8) and draw.dtype == np.float32
    assert len(np.unique(draw, axis=0)) == 200
    assert stats.chisquare(np.bincount(draw[:, 0].astype(int), minlength=4)).pvalue > P_MIN
    everything = buf.sample(10 * cap)
    assert everything.shape == (cap, 8) and len(np.unique(everything, axis=0)) == cap


def test_stratified_new_source_trims_others_to_equal_share():
    cap = 60
    buf = StratifiedBuffer(mib_for(cap, 2), time_bins=1, seed=0)
    buf.add(np.ones((500, 2)), sources=0, step=0)
    assert len(buf) == cap and set(buf.sources()) == {0}
    buf.add(np.ones((7, 2)), sources=1, step=0)  # small stratum keeps all its tiles
    assert np.bincount(buf.sources()).tolist() == [cap - 7, 7]
    buf.add(np.ones((200, 2)), sources=np.repeat([1, 2], 100), step=1)
    assert np.bincount(buf.sources()).tolist() == [20, 20, 20]


def test_stratified_sample_is_uniform_over_strata_first():
    buf = StratifiedBuffer(mib_for(60, 1), time_bins=1, seed=0)
    buf.add(np.zeros((3, 1)), sources=0)
    buf.add(np.ones((500, 1)), sources=1)
    assert np.bincount(buf.sources()).tolist() == [3, 57]
    rng = np.random.default_rng(0)
    first = np.array([buf.sample(1, rng=rng)[0, 0] for _ in range(2000)])
    assert stats.binomtest(int(first.sum()), len(first), 0.5).pvalue > P_MIN
    # without replacement: the small stratum runs out and later draws come from the large one
    draw = buf.sample(20, rng=rng)[:, 0]
    assert (draw == 0).sum() == 3


def test_stratified_single_stratum_is_a_reservoir():
    n, cap, repeats = 2000, 50, 100
    counts = np.zeros(n)
    for r in range(repeats):
        buf = StratifiedBuffer(mib_for(cap, 1), time_bins=1, seed=r)
        stream_indices(buf, n, [3, 10, 100, 500], np.random.default_rng(r))
        held = held_indices(buf)
        assert len(held) == cap
        counts[held] += 1
    assert stats.chisquare(counts.reshape(10, -1).sum(axis=1)).pvalue > P_MIN


def test_stratified_bins_widen():
    buf = StratifiedBuffer(mib_for(100, 1), time_bins=3, seed=0)
    for step in [0, 1, 2, 3, 10, 50, 51, 1000]:
        buf.add(np.ones((5, 1)), sources=[0, 0, 1, 1, 2], step=step)
        bins_per_source = {}
        for s, b in buf.stratum_sizes():
            bins_per_source.setdefault(s, []).append(b)
        assert max(map(len, bins_per_source.values())) <= 3
        assert 0 in buf.steps() and step in buf.steps()
    assert buf.bin_width_ & (buf.bin_width_ - 1) == 0 and buf.bin_width_ > 1  # doubled
    assert sum(seen for _, seen in buf.stratum_sizes().values()) == buf.n_seen_ == 40


def test_stratified_more_strata_than_capacity():
    buf = StratifiedBuffer(mib_for(3, 4), time_bins=2, seed=0)
    for step in range(6):
        buf.add(np.ones((8, 4)), sources=np.arange(8), step=step)
        assert len(buf) == 3 and buf.nbytes <= buf.max_mib * MIB
    assert buf.sample(5).shape == (3, 4)


# ---------------------------------------------------------------------------- common interface
@pytest.mark.parametrize("kind", ["fifo", "reservoir", "stratified"])
@pytest.mark.parametrize("n_features,max_mib", [(1, 0.001), (64, 0.01), (4096, 0.25), (100, 1e-3)])
def test_memory_cap(kind, n_features, max_mib):
    buf = make_buffer(kind, max_mib, seed=0)
    rng = np.random.default_rng(0)
    expected = math.floor(max_mib * MIB / (4 * n_features))
    for step in range(12):
        m = int(rng.integers(0, 3 * expected + 2))
        buf.add(rng.normal(size=(m, n_features)), sources=rng.integers(0, 3, size=m), step=step)
        assert buf.capacity == expected
        assert len(buf) <= buf.capacity
        assert buf.nbytes == len(buf) * 4 * n_features <= max_mib * MIB
        assert buf.tiles().shape == (len(buf), n_features) and buf.tiles().dtype == np.float32
        assert buf.sources().shape == buf.steps().shape == (len(buf),)


@pytest.mark.parametrize("kind", ["fifo", "reservoir", "stratified"])
def test_too_small_cap_raises(kind):
    buf = make_buffer(kind, 100 / MIB)  # 100 bytes: 25 float32 values
    with pytest.raises(ValueError, match="holds no tile of 64 float32 features"):
        buf.add(np.zeros((3, 64)))
    ok = make_buffer(kind, 100 / MIB).add(np.zeros((3, 25)))
    assert ok.capacity == 1 and len(ok) == 1
    with pytest.raises(ValueError, match="features"):
        ok.add(np.zeros((1, 24)))
    for bad in (0, -1.0, float("nan"), float("inf"), "1"):
        with pytest.raises(ValueError, match="max_mib"):
            make_buffer(kind, bad)


@pytest.mark.parametrize("kind", ["fifo", "reservoir", "stratified"])
def test_non_finite_tiles_rejected(kind):
    buf = make_buffer(kind, mib_for(50, 4), seed=0)
    tiles = np.arange(40, dtype=np.float64).reshape(10, 4)
    tiles[1, 2] = np.nan
    tiles[4, 0] = np.inf
    tiles[7, 3] = -np.inf
    tiles[8, 1] = 1e300  # finite in float64, Inf in float32
    buf.add(tiles, sources=np.arange(10), step=3)
    assert buf.n_rejected_ == 4 and buf.n_seen_ == 6 and len(buf) == 6
    assert np.isfinite(buf.tiles()).all()
    assert sorted(buf.sources().tolist()) == [0, 2, 3, 5, 6, 9]
    buf.add(np.full((5, 4), np.nan))
    assert buf.n_rejected_ == 9 and buf.n_seen_ == 6 and len(buf) == 6


@pytest.mark.parametrize("kind", ["fifo", "reservoir", "stratified"])
def test_sample_and_labels(kind):
    buf = make_buffer(kind, mib_for(30, 2), seed=0)
    assert buf.sample(4).shape == (0, 0) and len(buf.tiles()) == 0 and len(buf.steps()) == 0
    buf.add(np.zeros((0, 2)))
    assert buf.sample(4).shape == (0, 2)
    buf.add(np.arange(40, dtype=np.float32).reshape(20, 2))
    assert set(buf.sources().tolist()) == {0} and set(buf.steps().tolist()) == {1}  # defaults
    buf.add(np.arange(40, 60, dtype=np.float32).reshape(10, 2), step=7)
    buf.add(np.arange(60, 62, dtype=np.float32).reshape(1, 2))
    assert buf.steps().max() == 8
    s = buf.sample(12, rng=np.random.default_rng(0))
    assert s.shape == (12, 2) and s.dtype == np.float32 and len(np.unique(s[:, 0])) == 12
    np.testing.assert_array_equal(s, buf.sample(12, rng=np.random.default_rng(0)))
    assert set(s[:, 0]) <= set(buf.tiles()[:, 0])
    assert buf.sample(1000).shape == (len(buf), 2)
    assert buf.sample(0).shape == (0, 2)
    with pytest.raises(ValueError, match="sources"):
        buf.add(np.zeros((3, 2)), sources=[1, 2])
    with pytest.raises(ValueError, match="2-D"):
        buf.add(np.zeros(2))
    with pytest.raises(ValueError, match="non-negative"):
        buf.add(np.zeros((1, 2)), step=-1)
    with pytest.raises(ValueError, match="integers"):
        buf.add(np.zeros((1, 2)), sources=0.5)


def test_make_buffer():
    assert make_buffer("none", 1.0) is None
    assert isinstance(make_buffer("fifo", 1.0), FIFOBuffer)
    assert isinstance(make_buffer("reservoir", 1.0, seed=3), ReservoirBuffer)
    strat = make_buffer("stratified", 1.0, time_bins=2)
    assert isinstance(strat, StratifiedBuffer) and strat.time_bins == 2
    assert BUFFER_KINDS == ("none", "fifo", "reservoir", "stratified")
    for bad in ("lifo", "FIFO", None, 3):
        with pytest.raises(ValueError, match="none, fifo, reservoir, stratified"):
            make_buffer(bad, 1.0)
