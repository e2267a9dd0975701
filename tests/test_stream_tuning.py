"""Level factors alpha, beta of the stream codec chosen by trial encodes (analytics/stream_codec/tuning.py).

The choice is checked against a step sweep written here (bytes at MSE <= target, each candidate at
its best step of a fine grid); tuned factors travel in the payload and in the model entry, and
decode bit for bit; factors outside [1, 16] are refused with an error naming them.
"""

import math

import numpy as np
import pytest

from stagelearn.analytics.stream_codec import StreamDecoder, StreamEncoder, encode_frame, frame_info
from stagelearn.analytics.stream_codec.tuning import CANDIDATES, DEFAULT, choose_factors, trial_bytes
from stagelearn.analytics.stream_learner import StreamWeightsLearner
from stagelearn.analytics.stream_model import StreamModelError, StreamVariableModel


def plume(t, shape=(96, 96)):
    """A Gaussian plume drifting over zeros, plus a weak smooth background."""
    grids = np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij")
    r2 = sum((g - (0.3 + 0.01 * t) * n) ** 2 for g, n in zip(grids, shape))
    return (np.exp(-r2 / 80.0) + 0.01 * np.sin(grids[0] / 9.0 + 0.1 * t)).astype(np.float32)


def best_bytes_by_sweep(prev, cur, target_mse, alpha, beta):
    """Fewest bytes of ``cur`` (predicted from ``prev`` coded on its own at the same step) over a
    fine geometric grid of steps, among those with MSE <= target (independent of the tuner's bisection)."""
    best = math.inf
    for step in math.sqrt(12 * target_mse) * np.geomspace(0.25, 8.0, 48):
        rec0 = encode_frame(prev, step, alpha=alpha, beta=beta).reconstruction
        enc = StreamEncoder("step", float(step), alpha=alpha, beta=beta)
        enc.prev, enc.frames = rec0, 1
        fr = enc.encode(cur)
        if fr.sse / cur.size <= target_mse:
            best = min(best, len(fr.payload))
    return best


@pytest.mark.parametrize("psnr_db", [45.0, 55.0])
def test_tuned_factors_cost_no_more_than_the_default_at_the_same_mse(psnr_db):
    x0, x1 = plume(0), plume(1)
    target = float(x1.max() - x1.min()) ** 2 * 10 ** (-psnr_db / 10)
    costs = trial_bytes([(x0, x1)], target)
    assert costs.shape == (len(CANDIDATES),) and np.isfinite(costs).all()
    a, b = choose_factors(costs)
    assert (a, b) in CANDIDATES
    assert costs[CANDIDATES.index((a, b))] <= costs[CANDIDATES.index(DEFAULT)]
    tuned = best_bytes_by_sweep(x0, x1, target, a, b)
    default = best_bytes_by_sweep(x0, x1, target, *DEFAULT)
    # the tuner stops its bisection within 5 % of the target MSE; the sweep's grid is finer than that
    assert tuned <= default * 1.03, (a, b, tuned, default)


def test_tuned_factors_travel_in_the_payload_and_decode_bit_for_bit():
    enc, dec = StreamEncoder("psnr", 50.0, alpha=2.0, beta=16.0), StreamDecoder()
    for t in range(4):
        f = enc.encode(plume(t))
        steps = frame_info(f.payload)["steps"]
        assert steps[0] / steps[1] == pytest.approx(2.0, rel=1e-6)
        assert dec.decode(f.payload).tobytes() == f.reconstruction.tobytes()


def test_learner_publishes_tuned_factors_in_the_model_entry():
    learner = StreamWeightsLearner(None)
    a, b = learner.tune_factors([(plume(0), plume(1)), (plume(1), plume(2))], 1e-5)
    model = learner.model()
    assert (model.alpha, model.beta) == (a, b) and (a, b) in CANDIDATES
    entry = model.spec_entry()
    assert entry["stream"]["alpha"] == a and entry["stream"]["beta"] == b
    back = StreamVariableModel.from_spec("T", entry, model.arrays())
    assert (back.alpha, back.beta) == (a, b)
    assert learner.tune_factors([], 1e-5) == DEFAULT  # nothing to try: the default


@pytest.mark.parametrize("key,value", [("alpha", 0.5), ("beta", 20.0), ("alpha", float("nan")), ("beta", "4")])
def test_model_entry_with_out_of_range_factors_is_refused(key, value):
    entry = StreamVariableModel().spec_entry()
    entry["stream"][key] = value
    with pytest.raises(StreamModelError, match=key):
        StreamVariableModel.from_spec("T", entry, {})


def test_trial_bytes_rejects_bad_targets_and_candidates():
    pair = [(plume(0), plume(1))]
    with pytest.raises(ValueError, match="target_mse"):
        trial_bytes(pair, 0.0)
    with pytest.raises(ValueError, match="outside"):
        trial_bytes(pair, 1e-5, candidates=((0.5, 4.0),))
    with pytest.raises(ValueError, match="pair"):
        trial_bytes([(plume(0), plume(1, (32, 32)))], 1e-5)


def test_trial_bytes_at_a_step_cap_charge_each_candidate_its_bytes_at_the_cap():
    """A run's rate control never takes a step above its cap: a candidate whose MSE at the cap is
    still under the target is charged the bytes of the pair coded at the cap (as a run would code it)."""
    x0, x1 = plume(0), plume(1)
    target = float(x1.max() - x1.min()) ** 2 * 10 ** (-45 / 10)
    cap = 0.05 * math.sqrt(12 * target)  # far below the step that reaches the target
    costs = trial_bytes([(x0, x1)], target, max_step=cap)
    for (a, b), cost in zip(CANDIDATES, costs):
        rec0 = encode_frame(x0, cap, alpha=a, beta=b).reconstruction
        enc = StreamEncoder("step", cap, alpha=a, beta=b)
        enc.prev, enc.frames = rec0, 1
        fr = enc.encode(x1)
        assert fr.sse / x1.size < 0.5 * target
        assert cost == len(fr.payload), (a, b)
    uncapped = trial_bytes([(x0, x1)], target)
    assert np.all(uncapped < costs)  # at the target MSE every candidate costs less than at the small cap


def test_learner_tunes_under_the_rate_controls_cap_by_default(monkeypatch):
    from stagelearn.analytics import stream_learner, stream_rate

    seen = {}

    def spy(pairs, target_mse, candidates, adaptive=False, max_step=math.inf):
        seen["max_step"] = max_step
        return np.zeros(len(candidates))

    monkeypatch.setattr(stream_learner, "trial_bytes", spy)
    StreamWeightsLearner(None).tune_factors([(plume(0), plume(1))], 1e-4)
    assert seen["max_step"] == pytest.approx(math.sqrt(12 * 1e-4 / stream_rate.MIN_MSE_FACTOR))
