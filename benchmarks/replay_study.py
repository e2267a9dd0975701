"""Replay buffers for online autoencoder training on a non-i.i.d. tile stream.

    python benchmarks/replay_study.py              # full study: 2.5 min on 2 quiet cores, 8 min on 2 busy ones
    python benchmarks/replay_study.py --quick      # small frames, few steps (under a minute)
    python benchmarks/replay_study.py --jobs 1     # run the training runs one after the other

Question: how does online training of the tile autoencoder (``stagelearn.analytics``:
``AETrainer`` + ``TileAutoencoder``) on the stream a staging rank sees depend on the replay
buffer (``analytics/replay.py``)?

Setting, for each mock:

- Gray-Scott 3D (``GrayScott3D``, tutorial parameters), 48^3, field V, tiles 4x4x4 (1728 tiles per
  step); T = 50 output steps, the first after 100 time steps, then one every 25 (time steps
  100..1325: the growth of the pattern from the seed cube, its collapse around step 1000 and the
  regrowth);
- heat2d (``AdvectionDiffusion2D``, kappa 0.1, flow (0.3, 0.1), source on a circle with omega
  0.01, decay 0.002), 256^2, field T, tiles 8x8 (1024 tiles per step); T = 50 output steps, time
  steps 50..540 every 10 (the source travels about 3/4 of its circle, through three of the four
  quadrants, and the plumes build up).

Each frame is split into 4 subdomains (``MPI.Compute_dims(4, ndim)`` boxes, ``balanced_split``),
sources 0..3, as 4 producer ranks own them. Every 5th output step (t = 2, 7, ..., 47) is held
out; the other 40 are the training stream. The learner sees it as one staging rank does: step by
step in time order, the tiles of subdomain 0, then 1, 2, 3 concatenated, one
``partial_fit(step_tiles, sources=subdomain, step=t)`` per step with a fixed number of Adam
iterations (30) of batch 256. The AE is small (channels [8, 16], latent_dim 8, 8-bit latents,
lr 1e-3), normalised with the mean and std of the first training step's tiles (what staging has
when it starts), identical initial weights for every method with the same seed; torch on one
thread per process.

Methods (same iterations, batch and seeds):

- ``none``: no buffer, minibatches from the current step's tiles only (the raw stream);
- ``fifo`` / ``reservoir`` / ``stratified`` (time_bins=4, so 4 sources x 4 time bins): every
  minibatch sampled from the buffer after the step's tiles are offered to it; all three get the
  SAME memory cap, 15% of the float32 tiles of the 40 training steps (fifo then holds the last
  ~6 steps);
- ``iid``: the offline ideal, every minibatch drawn uniformly (without replacement inside a
  batch) from ALL tiles of the 40 training steps, as many iterations as the stream methods (the
  trainer gets the whole training set at every one of the 40 calls).

Measured: reconstruction PSNR of ``TileAutoencoder.reconstruct`` (quantized latents, no residual
coding) on the tiles of the held-out steps of all subdomains, ``20 log10(range / RMSE)`` with
the range of the field over the whole run (all steps, all subdomains), RMSE pooled over the
tiles: on all 10 held-out steps ("all"), on those in the first third of the run (t = 2, 7, 12:
"early", forgetting) and in the last third (t = 37, 42, 47: "late"). 3 seeds (weights,
minibatches and buffer retention), mean +- std. Curves: the same PSNRs after every second
training step.

Writes results/replay_study/{summary.csv, summary.md, runs.csv, curves.json} and
docs/replay_gray_scott.png, docs/replay_heat2d.png (``--quick``: everything under
results/replay_study_quick/).
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before numpy / torch (also inherited by the worker processes)
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import argparse
import csv
import json
import math
import multiprocessing as mp
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METHODS = ("none", "fifo", "reservoir", "stratified", "iid")
LABELS = {"none": "none (current step)", "fifo": "FIFO", "reservoir": "reservoir", "stratified": "stratified",
          "iid": "i.i.d. (offline ideal: all training steps)"}
COLORS = {"none": "tab:red", "fifo": "tab:orange", "reservoir": "tab:blue", "stratified": "tab:green", "iid": "k"}
AE = {"channels": (8, 16), "latent_dim": 8, "latent_bits": 8}
N_PARTS = 4
HOLDOUT_EVERY, HOLDOUT_OFFSET = 5, 2  # held-out output steps: t % 5 == 2
FULL = {
    "gray_scott": {"L": 48, "start": 100, "gap": 25},
    "heat2d": {"n": 256, "start": 50, "gap": 10},
    "T": 50, "iters": 30, "batch": 256, "buffer_fraction": 0.15, "seeds": (0, 1, 2), "eval_every": 2, "time_bins": 4,
}
QUICK = {
    "gray_scott": {"L": 24, "start": 100, "gap": 60},
    "heat2d": {"n": 64, "start": 20, "gap": 25},
    "T": 20, "iters": 8, "batch": 256, "buffer_fraction": 0.15, "seeds": (0, 1), "eval_every": 2, "time_bins": 4,
}
TITLES = {"gray_scott": "Gray-Scott 3D", "heat2d": "heat2d (advection-diffusion, moving source)"}


# ------------------------------------------------------------------------------------ data
def make_frames(mock, cfg):
    """Frames of one mock in time order.

    Returns
    -------
    frames : ndarray of shape (T, *grid), float32
    tile_shape : tuple of int
    time_steps : list of int
        Simulation time step of each frame.
    desc : str
        Short description of the setting (for titles).
    """
    from mpi4py import MPI
    from stagelearn.sim_mocks import AdvectionDiffusion2D, GrayScott3D

    c = cfg[mock]
    if mock == "gray_scott":
        L = c["L"]
        sim = GrayScott3D(L, F=0.01, k=0.05, Du=0.2, Dv=0.1, dt=2.0, noise=1e-7, comm=MPI.COMM_SELF)
        var, tile_shape, desc = "V", (4, 4, 4), f"{L}³ V, 4x4x4 tiles"
    else:
        n = c["n"]
        sim = AdvectionDiffusion2D(n, n, kappa=0.1, velocity=(0.3, 0.1), amplitude=1.0, sigma=6.0 * n / 256, omega=0.01,
                                   decay=0.002, dt=1.0, comm=MPI.COMM_SELF)
        var, tile_shape, desc = "T", (8, 8), f"{n}² T, 8x8 tiles"
    sim.advance(c["start"])
    frames, steps = [], []
    for _ in range(cfg["T"]):
        frames.append(sim.fields()[var].astype(np.float32))
        steps.append(sim.time_step)
        sim.advance(c["gap"])
    return np.stack(frames), tile_shape, steps, desc


def subdomain_tiles(frame, tile_shape):
    """Tiles of the 4 subdomains of one frame, concatenated in subdomain order, and their sources."""
    from mpi4py import MPI
    from stagelearn.analytics.tiling import to_tiles
    from stagelearn.sim_mocks.decomposition import balanced_split

    dims = MPI.Compute_dims(N_PARTS, frame.ndim)
    tiles, sources = [], []
    for src, idx in enumerate(np.ndindex(*dims)):
        sel = tuple(slice(s, s + cnt) for s, cnt in (balanced_split(n, d, i) for n, d, i in zip(frame.shape, dims, idx)))
        t = to_tiles(frame[sel], tile_shape)
        tiles.append(t)
        sources.append(np.full(len(t), src, dtype=np.int64))
    return np.concatenate(tiles).astype(np.float32), np.concatenate(sources)


def build_stream(mock, cfg):
    """Training stream and held-out set of one mock (a dict, shared with the worker processes)."""
    t0 = time.perf_counter()
    frames, tile_shape, time_steps, desc = make_frames(mock, cfg)
    T = len(frames)
    held = [t for t in range(T) if t % HOLDOUT_EVERY == HOLDOUT_OFFSET]
    train = [t for t in range(T) if t not in held]
    per_step = {t: subdomain_tiles(frames[t], tile_shape) for t in range(T)}
    held_tiles = np.concatenate([per_step[t][0] for t in held])
    held_step = np.concatenate([np.full(len(per_step[t][0]), t) for t in held])
    third = T / 3
    data = {
        "mock": mock, "desc": desc, "tile_shape": tile_shape, "T": T, "time_steps": time_steps,
        "train_steps": train, "held_steps": held,
        "early_steps": [t for t in held if t < third], "late_steps": [t for t in held if t >= 2 * third],
        "stream": [(t, *per_step[t]) for t in train],
        "all_train": np.concatenate([per_step[t][0] for t in train]),
        "held_tiles": held_tiles, "held_step": held_step,
        "range": float(frames.max() - frames.min()),
        "tiles_per_step": len(per_step[0][0]),
        "sim_s": time.perf_counter() - t0,
    }
    n_train = len(data["all_train"])
    n_feat = data["all_train"].shape[1]
    data["buffer_mib"] = cfg["buffer_fraction"] * n_train * 4 * n_feat / 2**20
    return data


# -------------------------------------------------------------------------------- training
def heldout_mse(model, data):
    """Per held-out step (sum of squared errors, number of values) of ``model.reconstruct``."""
    rec = model.reconstruct(data["held_tiles"])
    err = ((rec.astype(np.float64) - data["held_tiles"]) ** 2).sum(axis=1)
    return {t: (float(err[data["held_step"] == t].sum()), int(np.count_nonzero(data["held_step"] == t)) * rec.shape[1])
            for t in data["held_steps"]}


def psnr_of(per_step, steps, span):
    """PSNR (dB) against ``span`` of the errors pooled over ``steps``."""
    sse = sum(per_step[t][0] for t in steps)
    n = sum(per_step[t][1] for t in steps)
    mse = sse / n
    return math.inf if mse <= 0 else 10 * math.log10(span**2 / mse)


def scores(per_step, data):
    return {k: psnr_of(per_step, data[f"{k}_steps"] if k != "all" else data["held_steps"], data["range"])
            for k in ("all", "early", "late")}


_DATA = {}  # mock -> data, filled before the worker processes fork


def run_one(mock, method, seed, cfg):
    """Stream one mock's training steps into one learner; returns a result dict with its curve."""
    import torch
    from stagelearn.analytics.ae_training import AETrainer
    from stagelearn.analytics.autoencoder import spec_from_data
    from stagelearn.analytics.replay import make_buffer

    torch.set_num_threads(1)
    data = _DATA[mock]
    first_tiles = data["stream"][0][1]
    spec = spec_from_data(first_tiles, data["tile_shape"], **AE)
    kw = {"time_bins": cfg["time_bins"]} if method == "stratified" else {}
    buffer = None if method in ("none", "iid") else make_buffer(method, data["buffer_mib"], seed=seed, **kw)
    trainer = AETrainer(spec, batch_size=cfg["batch"], iterations_per_step=cfg["iters"], seed=seed, buffer=buffer)
    curve, t_train = [], 0.0
    for k, (t, tiles, sources) in enumerate(data["stream"], start=1):
        t0 = time.perf_counter()
        if method == "iid":
            trainer.partial_fit(data["all_train"])
        else:
            trainer.partial_fit(tiles, sources=sources, step=t)
        t_train += time.perf_counter() - t0
        if k % cfg["eval_every"] == 0 or k == len(data["stream"]):
            curve.append({"k": k, "t": t, **scores(heldout_mse(trainer.model, data), data)})
    final = curve[-1]
    if buffer is not None:
        held, mib = len(buffer), buffer.nbytes / 2**20
    elif method == "iid":
        held, mib = len(data["all_train"]), data["all_train"].nbytes / 2**20
    else:
        held, mib = data["tiles_per_step"], 0.0
    return {"mock": mock, "method": method, "seed": seed, "psnr_all": final["all"], "psnr_early": final["early"],
            "psnr_late": final["late"], "buffer_mib": mib, "tiles_held": held,
            "capacity": buffer.capacity if buffer is not None else "", "final_loss": trainer.loss_,
            "train_s": t_train, "curve": curve}


def _run_task(args):
    return run_one(*args)


# ------------------------------------------------------------------------------- reporting
def summarise(runs, datas, cfg, out):
    rows = []
    for mock in datas:
        for method in METHODS:
            mine = [r for r in runs if r["mock"] == mock and r["method"] == method]
            row = {"mock": mock, "method": method, "n_seeds": len(mine)}
            for key in ("psnr_all", "psnr_early", "psnr_late"):
                v = np.array([r[key] for r in mine])
                row[f"{key}_mean"], row[f"{key}_std"] = float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0
            row["buffer_mib"] = float(np.mean([r["buffer_mib"] for r in mine]))
            row["tiles_held"] = int(np.mean([r["tiles_held"] for r in mine]))
            row["train_s_mean"] = float(np.mean([r["train_s"] for r in mine]))
            rows.append(row)
    with open(os.path.join(out, "summary.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    with open(os.path.join(out, "runs.csv"), "w", newline="") as f:
        keys = [k for k in runs[0] if k != "curve"]
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows([{k: r[k] for k in keys} for r in runs])
    with open(os.path.join(out, "curves.json"), "w") as f:
        json.dump([{k: r[k] for k in ("mock", "method", "seed", "curve")} for r in runs], f)
    return rows


def markdown(rows, datas, cfg, wall_s, command):
    intro = (f"Wall time {wall_s:.0f} s. {len(cfg['seeds'])} seeds, mean ± std (sample std). "
             f"{len(datas[next(iter(datas))]['train_steps'])} training steps streamed in time order, "
             f"{cfg['iters']} iterations x batch {cfg['batch']} per step; PSNR of `reconstruct` "
             "(quantized latents, no residual coding) on held-out steps, against the field's range over the run. "
             f"Replay buffers capped at {100 * cfg['buffer_fraction']:.0f}% of the training tiles "
             "(buffer MiB / tiles held at the end; for `none` the current step, for `iid` all training tiles).")
    lines = [f"# Replay buffers for online AE training (`{command}`)", "", intro, ""]
    for mock, d in datas.items():
        lines.append(f"- {mock}: {d['desc']}, {d['T']} output steps (time steps {d['time_steps'][0]}..{d['time_steps'][-1]}), "
                     f"{d['tiles_per_step']} tiles per step in 4 subdomains; held-out steps {d['held_steps']} "
                     f"(early {d['early_steps']}, late {d['late_steps']}); field range {d['range']:.4g}.")
    lines += ["", "| mock | method | held-out PSNR all (dB) | early (dB) | late (dB) | Δ all vs none (dB) | buffer MiB | tiles held | train s/run |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        base = next(x for x in rows if x["mock"] == r["mock"] and x["method"] == "none")["psnr_all_mean"]
        cells = [f"{r[f'psnr_{k}_mean']:.2f} ± {r[f'psnr_{k}_std']:.2f}" for k in ("all", "early", "late")]
        lines.append(f"| {r['mock']} | {r['method']} | {' | '.join(cells)} | {r['psnr_all_mean'] - base:+.2f} | "
                     f"{r['buffer_mib']:.2f} | {r['tiles_held']} | {r['train_s_mean']:.1f} |")
    return lines


def plot(mock, runs, rows, data, cfg, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8), layout="constrained")
    ax = axes[0]
    width = 0.8 / len(METHODS)
    groups = ("all", "early", "late")
    for i, method in enumerate(METHODS):
        r = next(x for x in rows if x["mock"] == mock and x["method"] == method)
        means = [r[f"psnr_{g}_mean"] for g in groups]
        stds = [r[f"psnr_{g}_std"] for g in groups]
        ax.bar(np.arange(3) + (i - (len(METHODS) - 1) / 2) * width, means, width, yerr=stds, capsize=3,
               color=COLORS[method], label=LABELS[method], alpha=0.85)
    ax.set_xticks(np.arange(3), ["all held-out steps", "early (first third)", "late (last third)"])
    ax.set_ylabel("held-out PSNR after training (dB)")
    lo = min(x[f"psnr_{g}_mean"] - x[f"psnr_{g}_std"] for x in rows if x["mock"] == mock for g in groups)
    hi = max(x[f"psnr_{g}_mean"] + x[f"psnr_{g}_std"] for x in rows if x["mock"] == mock for g in groups)
    ax.set_ylim(lo - 2, hi + 1)
    ax.set_title("final model, mean ± std over seeds")
    for ax, key, what in ((axes[1], "all", "all held-out steps"), (axes[2], "early", "early held-out steps")):
        for method in METHODS:
            curves = [r["curve"] for r in runs if r["mock"] == mock and r["method"] == method]
            t = np.array([c["t"] for c in curves[0]])
            v = np.array([[c[key] for c in curve] for curve in curves])
            m, s = v.mean(axis=0), v.std(axis=0)
            ax.plot(t, m, ".-", color=COLORS[method], label=LABELS[method], ms=3)
            ax.fill_between(t, m - s, m + s, color=COLORS[method], alpha=0.15)
        for th in data[f"{key}_steps"] if key != "all" else data["held_steps"]:
            ax.axvline(th, color="0.85", lw=0.8, zorder=0)
        ax.set_xlabel("output step of the newest training frame (time order)")
        ax.set_ylabel(f"PSNR on {what} (dB)")
        ax.set_title(f"{what} during the stream" + (" (forgetting)" if key == "early" else " (band: ± std)"))
    axes[1].legend(fontsize=8, loc="lower right")
    fig.suptitle(f"Online AE training with replay: {TITLES[mock]}, {data['desc']}, 4 subdomains streamed in arrival order, "
                 f"{len(data['train_steps'])} training steps ({len(data['held_steps'])} held out, grey lines)\n"
                 f"{cfg['iters']} iterations x batch {cfg['batch']} per step, {len(cfg['seeds'])} seeds; FIFO / reservoir / "
                 f"stratified capped at {data['buffer_mib']:.2f} MiB (~{100 * cfg['buffer_fraction']:.0f}% of the training tiles); "
                 "PSNR of reconstruct() against the field's range over the run", fontsize=10)
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ------------------------------------------------------------------------------------ main
def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small frames, few steps and iterations, 2 seeds")
    ap.add_argument("--jobs", type=int, default=2, help="worker processes for the training runs (default 2)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    cfg = QUICK if args.quick else FULL
    out = args.out or os.path.join(REPO, "results", "replay_study_quick" if args.quick else "replay_study")
    docs = out if args.quick else os.path.join(REPO, "docs")
    os.makedirs(out, exist_ok=True)
    command = "python benchmarks/replay_study.py" + (" --quick" if args.quick else "")
    t_start = time.perf_counter()
    for mock in ("gray_scott", "heat2d"):
        _DATA[mock] = build_stream(mock, cfg)
        d = _DATA[mock]
        print(f"{mock}: {d['desc']}, {d['T']} steps, {d['tiles_per_step']} tiles/step, buffer cap {d['buffer_mib']:.3f} MiB, "
              f"range {d['range']:.4g}, frames in {d['sim_s']:.1f} s", flush=True)
    tasks = [(mock, method, seed, cfg) for mock in _DATA for seed in cfg["seeds"] for method in METHODS]
    runs = []
    if args.jobs > 1:
        with ProcessPoolExecutor(args.jobs, mp_context=mp.get_context("fork")) as ex:
            for r in ex.map(_run_task, tasks):
                runs.append(r)
                print(f"  {r['mock']:10s} {r['method']:10s} seed {r['seed']}: PSNR all {r['psnr_all']:.2f} early "
                      f"{r['psnr_early']:.2f} late {r['psnr_late']:.2f} dB ({r['train_s']:.0f} s)", flush=True)
    else:
        for task in tasks:
            r = _run_task(task)
            runs.append(r)
            print(f"  {r['mock']:10s} {r['method']:10s} seed {r['seed']}: PSNR all {r['psnr_all']:.2f} early "
                  f"{r['psnr_early']:.2f} late {r['psnr_late']:.2f} dB ({r['train_s']:.0f} s)", flush=True)
    rows = summarise(runs, _DATA, cfg, out)
    wall = time.perf_counter() - t_start
    lines = markdown(rows, _DATA, cfg, wall, command)
    with open(os.path.join(out, "summary.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    for mock, data in _DATA.items():
        name = "replay_gray_scott.png" if mock == "gray_scott" else "replay_heat2d.png"
        plot(mock, runs, rows, data, cfg, os.path.join(docs, name))
    print("\n".join(lines))
    print(f"wall time: {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
