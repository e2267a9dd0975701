"""The ledger merge on crafted parts: every (step, rank) gets exactly one status, with its reason."""

import json

from stagelearn.staging.ledger import LedgerPart, merge_ledger


def _parts(run_dir, producers, staging):
    for rank, records in producers.items():
        part = LedgerPart(str(run_dir / "ledger" / f"producer.p{rank}.jsonl"))
        for r in records:
            part.add(**r)
        part.close()
    part = LedgerPart(str(run_dir / "ledger" / "staging.jsonl"))
    for r in staging:
        part.add(**r)
    part.close()


def _entries(run_dir):
    return {(e["step"], e["rank"]): e for e in map(json.loads, open(run_dir / "ledger.jsonl"))}


def test_statuses_and_counts(tmp_path):
    sent = [{"step": s, "rank": 0, "to": "stream", "encoder_version": 1 if s >= 2 else 0, "bytes": 10} for s in range(4)]
    fb = [{"step": s, "rank": 0, "to": "fallback", "file": "fallback/producer.p0.bp", "encoder_version": 0,
           "replayed": s == 3} for s in (3, 4)]
    _parts(tmp_path, {0: sent + fb, 1: [dict(r, rank=1) for r in sent[:2]]},
           [{"step": s, "rank": r, "encoder_version": 1 if s >= 2 else 0, "bytes": 10} for s in range(3) for r in (0,)]
           + [{"step": 0, "rank": 1, "encoder_version": 0, "bytes": 10}])
    counts = merge_ledger(str(tmp_path), expected_steps=5, n_ranks=2)
    e = _entries(tmp_path)
    assert len(e) == 10
    assert e[(0, 0)]["status"] == "sent_raw" and e[(2, 0)]["status"] == "sent_encoded" and e[(2, 0)]["encoder_version"] == 1
    assert e[(3, 0)]["status"] == "fallback" and e[(3, 0)]["replayed"] and e[(4, 0)]["status"] == "fallback"
    assert e[(1, 1)]["status"] == "lost" and "staging stopped" in e[(1, 1)]["reason"]  # sent, never stored
    assert e[(2, 1)]["status"] == "lost" and "stopped without closing after step 1" in e[(2, 1)]["reason"]
    assert counts["steps_lost"] == 4 and counts["steps_fallback"] == 2 and counts["steps_dropped"] == 0
    assert counts["entries"] == {"sent_raw": 3, "sent_encoded": 1, "fallback": 2, "lost": 4}


def test_discard_drops_interrupts_and_stale_parts(tmp_path):
    sent = [{"step": s, "rank": 0, "to": "stream", "encoder_version": 0, "bytes": 10} for s in range(3)]
    end = {"event": "end", "rank": 0, "status": "interrupted", "last_step": 2}
    stale = [{"step": s, "rank": 5, "to": "stream", "encoder_version": 0} for s in range(9)]  # an earlier, wider run
    _parts(tmp_path, {0: sent + [end], 5: stale + [{"event": "end", "rank": 5, "status": "clean", "last_step": 8}]},
           [{"step": s, "rank": 0, "encoder_version": 0, "bytes": 10} for s in (0, 2)]
           + [{"event": "end", "status": "clean"}])
    counts = merge_ledger(str(tmp_path), expected_steps=5, n_ranks=1, queue_full_policy="Discard")
    e = _entries(tmp_path)
    assert len(e) == 5  # rank 5's part is ignored
    assert e[(1, 0)]["status"] == "dropped" and "Discard" in e[(1, 0)]["reason"]
    assert [e[(s, 0)]["status"] for s in (3, 4)] == ["not_produced"] * 2
    assert counts["steps_lost"] == 1 == counts["steps_dropped"]


def test_clean_end_sets_the_expected_steps_and_missing_parts_are_not_produced(tmp_path):
    sent = [{"step": s, "rank": 0, "to": "stream", "encoder_version": 0} for s in range(2)]
    _parts(tmp_path, {0: sent + [{"event": "end", "rank": 0, "status": "clean", "last_step": 1}]},
           [{"step": s, "rank": 0, "encoder_version": 0} for s in range(2)])
    assert merge_ledger(str(tmp_path), expected_steps=10, n_ranks=1)["steps_expected"] == 2  # the simulation said so
    counts = merge_ledger(str(tmp_path), expected_steps=3, n_ranks=2)  # rank 1 never opened its stream
    e = _entries(tmp_path)
    assert e[(0, 1)]["status"] == "not_produced" and "never opened" in e[(0, 1)]["reason"]
    assert counts["steps_lost"] == 0 and e[(2, 0)]["status"] == "not_produced"  # rank 0 ended after step 1
