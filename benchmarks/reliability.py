"""Reliability measured side by side: what each fault costs the simulation and what is kept.

Runs heat2d 64x64 (2 producers -> 2 staging ranks over SST, 151 output steps) through
``stagelearn run`` and injects, one scenario at a time: nothing; staging SIGKILLed after 20 stored
steps; a producer SIGKILLed; SIGINT to ``stagelearn run``. Then 1001 steps of 32x32 with the
staging side SIGSTOPped twice for 3 s, with ``QueueFullPolicy`` Block and Discard. Prints, per
scenario: exit code, wall time, what the ledger says (stored / fallback / dropped / lost / not
produced), the producers' stalls, the time from the fault to the first fallback step, and the
producers' RSS growth from step 200 to the end.

    python benchmarks/reliability.py            # about 2 minutes on 2 cores
"""

from __future__ import annotations

import collections
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from faultkit import finish, rank_pids, start_run, wait_progress  # noqa: E402

XML = str(Path(__file__).resolve().parents[1] / "xml_configs" / "stagelearn.xml")


def config(tmp, name, *, nx=64, steps=300, plotgap=2, policy="Block"):
    cfg = {"run_name": name, "output_dir": str(tmp / "results"),
           "simulation": {"type": "heat2d", "ranks": 2, "nx": nx, "ny": nx, "steps": steps, "plotgap": plotgap},
           "staging": {"ranks": 2 if steps <= 300 else 1}, "adios2": {"config_file": XML, "queue_full_policy": policy},
           "learner": {"warmup_steps": 3, "publish_every": 10 if steps <= 300 else 200}, "metrics": {"sz3_every": 0},
           "timeouts": {"open_s": 30, "step_s": 60, "run_s": 400}}
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path, tmp / "results" / name


def scenario(tmp, name, inject, **kw):
    path, run_dir = config(tmp, name, **kw)
    t0 = time.time()
    proc = start_run(tmp, path)
    t_fault = inject(path, run_dir, proc)
    code, _, _ = finish(proc, timeout=600)
    wall = time.time() - t0
    status = collections.Counter(json.loads(line)["status"] for line in open(run_dir / "ledger.jsonl"))
    parts = {r: [json.loads(line) for line in open(run_dir / "ledger" / f"producer.p{r}.jsonl")] for r in (0, 1)}
    lines = [x for r in parts.values() for x in r if "step" in x]
    ends = [x for r in parts.values() for x in r if x.get("event") == "end"]
    fallback_t = [x["t"] for x in lines if x.get("to") == "fallback"]
    rss = {}
    for r, rows in parts.items():
        by_step = {x["step"]: x["rss_mib"] for x in rows if x.get("rss_mib") is not None}
        if len(by_step) > 400:
            rss[r] = max(by_step[s] for s in by_step if s >= max(by_step) - 100) - by_step[200]
    return {"scenario": name, "exit": code, "wall_s": wall,
            "stored": status["sent_raw"] + status["sent_encoded"], "fallback": status["fallback"],
            "dropped": status["dropped"], "lost": status["lost"], "not_produced": status["not_produced"],
            "stalls": sum(e.get("stalls", 0) for e in ends), "stall_s": sum(e.get("stall_s", 0.0) for e in ends),
            "notice_s": (min(fallback_t) - t_fault) if fallback_t and t_fault else None,
            "rss_growth_mib": max(rss.values()) if rss else None}


def after(n, action):
    def inject(path, run_dir, proc):
        wait_progress(run_dir, n, proc, timeout=200)
        t = time.time()
        action(path, proc)
        return t
    return inject


def pause_twice(path, run_dir, proc):
    for n in (150, 450):
        try:
            wait_progress(run_dir, n, proc, timeout=200)
        except AssertionError:
            return None  # Discard: staging may never store that many
        pids = rank_pids("stage", path)
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        time.sleep(3.0)
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
    return None


def main():
    rows = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        rows.append(scenario(tmp, "none", lambda p, r, proc: None))
        rows.append(scenario(tmp, "kill_staging", after(20, lambda p, proc: os.kill(rank_pids("stage", p)[1], signal.SIGKILL))))
        rows.append(scenario(tmp, "kill_producer", after(20, lambda p, proc: os.kill(rank_pids("sim", p)[1], signal.SIGKILL))))
        rows.append(scenario(tmp, "sigint_run", after(20, lambda p, proc: proc.send_signal(signal.SIGINT))))
        for policy in ("Block", "Discard"):
            rows.append(scenario(tmp, f"slow_{policy.lower()}_1001", pause_twice, nx=32, steps=1000, plotgap=1,
                                 policy=policy))
    cols = ["scenario", "exit", "wall_s", "stored", "fallback", "dropped", "lost", "not_produced", "stalls", "stall_s",
            "notice_s", "rss_growth_mib"]
    print(" ".join(f"{c:>14}" for c in cols))
    for r in rows:
        print(" ".join(f"{r[c]:>14.2f}" if isinstance(r[c], float) else f"{str(r[c]):>14}" for c in cols))
    print("(stored/fallback/dropped/lost/not_produced: ledger entries, one per step and producer rank; notice_s: from the "
          "fault to the first step written to a fallback file; rss_growth_mib: producer RSS, last 100 steps vs step 200)")


if __name__ == "__main__":
    main()
