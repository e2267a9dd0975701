"""Tile autoencoder (AE) learner: compression against PCA, training and encode speed, DDP vs local
SGD, simulation slowdown in situ.

    python benchmarks/perf_autoencoder.py            # everything, about 3 minutes on an idle 2-core machine
    python benchmarks/perf_autoencoder.py --quick    # smaller frames, fewer steps (about a minute)

Default AE throughout: channels [8, 16], latent_dim 8, latent_bits 8, Adam lr 1e-3, batch 256,
reservoir replay buffer (64 MiB). torch runs on 1 thread (``OMP_NUM_THREADS=1`` for every child).

1. AE versus PCA on the same stream. Gray-Scott 3D (V, 64^3, tiles 4x4x4; 1920 warm-up time
   steps, then an output frame every 10 time steps) and heat2d (AdvectionDiffusion2D T, 256^2,
   tiles 8x8; 2560 warm-up steps, a frame every 10). Both models learn from the first 16 frames
   as a stream (PCA: ``IncrementalPCA.partial_fit`` per frame; AE: ``AETrainer.partial_fit`` per
   frame, 125 iterations each, about the 2000 iterations of examples/gray_scott_ae.yaml's run);
   then the next 20 frames (held out) are coded with ``encode_block(target_mse=span**2 *
   10**(-psnr/10), raw_fraction=0.01)`` at 40 and 60 dB. Ratio = raw float32 bytes / payload
   bytes over the 20 frames (payloads hold every piece of side information: latent codes and
   scales, Laplace tables, raw tiles, headers); the model itself (pushed back once per encoder
   version) is printed separately, not counted. PSNR is the achieved one, per frame against the
   frame's range (mean and minimum over frames).
2. Temporal prediction gain: the same held-out frames coded with ``prev=`` the previous frame's
   reconstruction (a self-contained keyframe every 10 frames) over coded without; ratio with /
   ratio without, per mock, model and target.
3. Training rate: samples (tiles) per second of ``AETrainer.partial_fit`` on one staging rank
   (single process, 1 torch thread, batch 256), both tile shapes.
4. Producer encode throughput, MB/s of raw float32 field per core (1 thread), best of 5, on a
   64^3 Gray-Scott frame at 40 dB: ``encode_block`` with the AE codec, the AE latent encoding
   alone (``model.encode_latents``), the AE prediction (latents encoded and decoded), and PCA
   ``encode_block`` for reference. Goal (issue): >= 200 MB/s per core for the default AE.
5. DDP vs local SGD: the script re-runs itself under ``mpiexec -n 2``; rank r trains on the tiles
   of half r of the Gray-Scott domain (axis 0 split, as staging receives subdomains: non-i.i.d.,
   though mildly: the pattern grows from a centred seed, so the halves are near mirror images)
   for the same 16 frames x 125 iterations, once with ``mode="ddp"`` and once with
   ``mode="local_sgd", sync_every=8``. Printed: payload bytes sent per rank (max over ranks) and
   communication rounds (``AETrainer.bytes_communicated`` / ``rounds``), training wall time, and the
   reconstruction PSNR of the trained AE alone (``model.reconstruct``, no residual coding) on the
   20 held-out frames, whole domain and each half.
6. Simulation slowdown, as in perf_slowdown.py: Gray-Scott 4 ranks, 64^3, 1000 time steps, output
   every 10; "alone" times the solver loop under mpiexec with no output (before and after the
   coupled runs; the faster of the two is the reference); then a coupled ``stagelearn run`` with 2
   staging ranks and ``learner: {type: autoencoder}`` (defaults above, 10 iterations per output
   step, ddp, first encoder after 5 steps, then every 40; 41 dB), and the
   same with the PCA learner for comparison. Slowdown = producer (compute_s + io_s) / alone. Goal
   (issue): <= 1.15x with AE encoding. On this 2-core machine the 4 simulation ranks and the 2
   staging ranks (6 MPI processes) share 2 cores, so the coupled runs also pay for staging's
   training CPU: the figure likely overstates what producers would see with staging on other nodes.

The timings (items 3, 4, 6 and the training and encode times) assume an otherwise idle machine:
the 1-minute load average is printed at the start, and the two "alone" timings of item 6 show
whether the load changed during the run.

Prints ``name: value`` lines and writes ``results/perf_autoencoder/summary.md`` and ``summary.csv``
(``results/perf_autoencoder_quick/`` with ``--quick``).
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before numpy / torch: per-core figures, and inherited by children
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import csv
import json
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.abspath(__file__)
REPO = os.path.dirname(os.path.dirname(HERE))

AE = {"channels": (8, 16), "latent_dim": 8, "latent_bits": 8}
FULL = {"gs_L": 64, "heat_n": 256, "n_train": 16, "n_test": 20, "iters": 125, "keyframe_every": 10,
        "psnr": (40, 60), "sim": {"type": "gray_scott", "ranks": 4, "L": 64, "steps": 1000, "plotgap": 10},
        "pca_coupled": True}
QUICK = {"gs_L": 32, "heat_n": 64, "n_train": 4, "n_test": 6, "iters": 20, "keyframe_every": 3,
         "psnr": (40, 60), "sim": {"type": "gray_scott", "ranks": 4, "L": 32, "steps": 200, "plotgap": 10},
         "pca_coupled": True}
PLOTGAP = 10  # time steps between frames of items 1, 2, 5 (the run configs' plotgap)
TARGET_ENCODE_MBPS = 200.0
TARGET_SLOWDOWN = 1.15


# ------------------------------------------------------------------------------------ data
def make_frames(mock, cfg):
    """Frames in time order of one mock: (frames ndarray (n_train + n_test, ...), tile_shape)."""
    from mpi4py import MPI
    from stagelearn.sim_mocks import AdvectionDiffusion2D, GrayScott3D

    if mock == "gray_scott":
        L = cfg["gs_L"]
        sim = GrayScott3D(L, F=0.01, k=0.05, Du=0.2, Dv=0.1, dt=2.0, noise=1e-7, comm=MPI.COMM_SELF)
        var, warm, tile_shape = "V", 30 * L, (4, 4, 4)
    else:
        n = cfg["heat_n"]
        sim = AdvectionDiffusion2D(n, n, kappa=0.1, velocity=(0.3, 0.1), amplitude=1.0, sigma=6.0 * n / 256, omega=0.01,
                                   decay=0.002, dt=1.0, comm=MPI.COMM_SELF)
        var, warm, tile_shape = "T", 10 * n, (8, 8)
    sim.advance(warm)
    frames = []
    for _ in range(cfg["n_train"] + cfg["n_test"]):
        frames.append(sim.fields()[var].astype(np.float32))
        sim.advance(PLOTGAP)
    return np.stack(frames), tile_shape


def frame_span(x):
    return float(x.max() - x.min())


def target_mse(x, psnr_db):
    return frame_span(x) ** 2 * 10 ** (-psnr_db / 10)


# -------------------------------------------------------------------------------- models
def ae_trainer(first_tiles, tile_shape, iters, comm=None, mode="ddp", seed=0):
    """A default-config AE trainer normalised on the first frame's tiles (collective over comm)."""
    from stagelearn.analytics.ae_training import AETrainer
    from stagelearn.analytics.autoencoder import spec_from_data
    from stagelearn.analytics.replay import make_buffer

    rank = comm.Get_rank() if comm is not None else 0
    spec = spec_from_data(first_tiles, tile_shape, comm=comm, **AE)
    return AETrainer(spec, comm=comm, mode=mode, sync_every=8, batch_size=256, iterations_per_step=iters, seed=seed,
                     buffer=make_buffer("reservoir", 64, seed=rank))


def train_models(train, tile_shape, iters):
    """Stream the training frames into PCA and the AE; returns (codecs by name, info dict)."""
    from stagelearn.analytics import IncrementalPCA, TransformCodec
    from stagelearn.analytics.autoencoder import named_arrays
    from stagelearn.analytics.encoder import VariableModel
    from stagelearn.analytics.tiling import to_tiles

    pca = IncrementalPCA()
    t0 = time.perf_counter()
    for x in train:
        pca.partial_fit(to_tiles(x, tile_shape))
    t_pca = time.perf_counter() - t0
    trainer = ae_trainer(to_tiles(train[0], tile_shape), tile_shape, iters)
    t0 = time.perf_counter()
    for x in train:
        trainer.partial_fit(to_tiles(x, tile_shape))
    t_ae = time.perf_counter() - t0
    arrays = named_arrays(trainer.model)
    ae = VariableModel(tuple(tile_shape), float(train.min()), float(train.max()), "ae", autoencoder=trainer.spec.to_dict(),
                       ae_arrays=arrays)
    codecs = {"pca": TransformCodec(pca.mean_, pca.components_, 1.0), "ae": ae.codec()}
    info = {"pca_fit_s": t_pca, "ae_fit_s": t_ae, "ae_loss": trainer.loss_,
            "pca_model_bytes": pca.mean_.size * 4 + pca.components_.size * 4,
            "ae_model_bytes": sum(a.nbytes for a in arrays.values())}
    return codecs, info


# ------------------------------------------------------------------ items 1, 2: coding a stream
def code_stream(frames, codec, tile_shape, psnr_db, keyframe_every=0):
    """Code frames in order; ``keyframe_every > 0`` predicts from the previous reconstruction.

    Returns
    -------
    dict : ratio (raw / payload bytes, all frames), psnr_mean, psnr_min (achieved, per frame), encode_MBps.
    """
    from stagelearn.analytics.codec import encode_block
    from stagelearn.analytics.metrics import psnr

    raw = sent = 0
    psnrs, t_enc, prev = [], 0.0, None
    for i, x in enumerate(frames):
        if not keyframe_every or i % keyframe_every == 0:
            prev = None
        t0 = time.perf_counter()
        eb = encode_block(x, codec, tile_shape, raw_fraction=0.01, target_mse=target_mse(x, psnr_db), prev=prev)
        t_enc += time.perf_counter() - t0
        raw, sent = raw + x.nbytes, sent + len(eb.payload)
        psnrs.append(psnr(x, eb.reconstruction))
        prev = eb.reconstruction if keyframe_every else None
    return {"ratio": raw / sent, "psnr_mean": float(np.mean(psnrs)), "psnr_min": float(np.min(psnrs)),
            "encode_MBps": raw / 1e6 / t_enc}


def check_decode(x, codec, tile_shape, psnr_db):
    """Largest |decode_block - encoder's reconstruction| of one frame (0: the reported PSNR is the decoder's)."""
    from stagelearn.analytics.codec import decode_block, encode_block

    eb = encode_block(x, codec, tile_shape, raw_fraction=0.01, target_mse=target_mse(x, psnr_db))
    return float(np.max(np.abs(decode_block(eb.payload, codec)[0] - eb.reconstruction)))


def compare_codecs(mock, frames, tile_shape, cfg):
    """Items 1 and 2 for one mock: one row per (model, target, temporal prediction)."""
    train, test = frames[:cfg["n_train"]], frames[cfg["n_train"]:]
    codecs, info = train_models(train, tile_shape, cfg["iters"])
    rows = []
    for name, codec in codecs.items():
        info[f"{name}_decode_mismatch"] = check_decode(test[0], codec, tile_shape, cfg["psnr"][0])
        for p in cfg["psnr"]:
            for kf in (0, cfg["keyframe_every"]):
                r = code_stream(test, codec, tile_shape, p, kf)
                rows.append(dict(mock=mock, model=name, psnr_target=p, temporal=bool(kf), **r))
    return rows, info, codecs


# --------------------------------------------------------------------- item 3: training rate
def training_rate(frames, tile_shape, iters=200):
    """Tiles per second of one rank's ``partial_fit`` (after a first call fills the buffer)."""
    from stagelearn.analytics.tiling import to_tiles

    trainer = ae_trainer(to_tiles(frames[0], tile_shape), tile_shape, iters)
    trainer.partial_fit(to_tiles(frames[0], tile_shape))
    t0 = time.perf_counter()
    trainer.partial_fit(to_tiles(frames[1], tile_shape))
    return iters * trainer.batch_size / (time.perf_counter() - t0)


# ------------------------------------------------------------------- item 4: encode throughput
def best_time(fn, repeat=5):
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def encode_throughput(x, codecs, tile_shape, psnr_db=40):
    """MB/s of raw float32 field, 1 thread: AE encode_block, AE latents alone, AE prediction, PCA encode_block."""
    from stagelearn.analytics.codec import encode_block
    from stagelearn.analytics.tiling import to_tiles

    mb, mse = x.nbytes / 1e6, target_mse(x, psnr_db)
    model = codecs["ae"].model
    tiles = to_tiles(x, tile_shape)
    return {
        "ae_encode_block_MBps": mb / best_time(lambda: encode_block(x, codecs["ae"], tile_shape, raw_fraction=0.01, target_mse=mse)),
        "ae_encode_latents_MBps": mb / best_time(lambda: model.encode_latents(tiles)),
        "ae_predict_MBps": mb / best_time(lambda: codecs["ae"].intra_reference(tiles)),
        "pca_encode_block_MBps": mb / best_time(lambda: encode_block(x, codecs["pca"], tile_shape, raw_fraction=0.01, target_mse=mse)),
    }


# -------------------------------------------------------------- item 5: DDP vs local SGD (child)
def distributed_child(path, iters):
    """Under mpiexec -n 2: each rank trains on its half of the domain; rank 0 prints RESULT lines."""
    import torch
    from mpi4py import MPI
    from stagelearn.analytics.ae_training import destroy
    from stagelearn.analytics.metrics import psnr
    from stagelearn.analytics.tiling import from_tiles, to_tiles

    torch.set_num_threads(1)
    comm = MPI.COMM_WORLD
    data = np.load(path)
    train, test, n_train = data["train"], data["test"], len(data["train"])
    tile_shape = (4, 4, 4)
    half = np.array_split(np.arange(train.shape[1]), comm.size)[comm.rank]
    sl = slice(half[0], half[-1] + 1)
    for mode in ("ddp", "local_sgd"):
        trainer = ae_trainer(to_tiles(train[0][sl], tile_shape), tile_shape, iters, comm=comm, mode=mode)
        comm.Barrier()
        t0 = time.perf_counter()
        for x in train:
            trainer.partial_fit(to_tiles(x[sl], tile_shape), step=None)
        wall = comm.allreduce(time.perf_counter() - t0, op=MPI.MAX)
        sent = comm.allreduce(trainer.bytes_communicated, op=MPI.MAX)
        if comm.rank == 0:
            model = trainer.model
            whole, parts = [], [[] for _ in range(comm.size)]
            for x in test:
                rec = from_tiles(model.reconstruct(to_tiles(x, tile_shape)), x.shape, tile_shape)
                whole.append(psnr(x, rec))
                for r, idx in enumerate(np.array_split(np.arange(x.shape[0]), comm.size)):
                    parts[r].append(psnr(x[idx], rec[idx], data_range=frame_span(x)))
            res = {"bytes_per_rank": sent, "rounds": trainer.rounds, "train_s": wall, "steps": n_train,
                   "iterations": trainer.n_iter_, "recon_psnr": float(np.mean(whole)),
                   **{f"recon_psnr_half{r}": float(np.mean(p)) for r, p in enumerate(parts)}}
            print("RESULT", mode, json.dumps(res), flush=True)
    destroy()


def distributed_compare(frames, cfg, tmp):
    """Item 5: launch the 2-rank child on the Gray-Scott frames; returns {mode: results}."""
    path = os.path.join(tmp, "gs_frames.npz")
    np.savez(path, train=frames[:cfg["n_train"]], test=frames[cfg["n_train"]:])
    out = run_mpi(2, ["distributed", path, str(cfg["iters"])])
    return {ln.split()[1]: json.loads(ln.split(None, 2)[2]) for ln in out.splitlines() if ln.startswith("RESULT")}


# ----------------------------------------------------------------- item 6: simulation slowdown
def alone(L, steps, plotgap):
    """Under mpiexec: the Gray-Scott loop with no output (as perf_slowdown.py); rank 0 prints RESULT."""
    from mpi4py import MPI
    from stagelearn.sim_mocks import GrayScott3D

    comm = MPI.COMM_WORLD
    gs = GrayScott3D(L, F=0.01, k=0.05, Du=0.2, Dv=0.1, dt=2.0, noise=1e-7, comm=comm)
    comm.Barrier()
    t0 = time.perf_counter()
    for _ in range(steps // plotgap):
        gs.advance(plotgap)
        _ = {k: v.copy() for k, v in gs.fields().items()}  # what an output step touches without I/O
    t = comm.allreduce(time.perf_counter() - t0, op=MPI.MAX)
    if comm.rank == 0:
        print("RESULT", t)


def coupled(tmp, name, sim, learner):
    """One ``stagelearn run``: its producer.json (``compute_s``, ``io_s``) and summary.json."""
    sys.path.insert(0, os.path.dirname(HERE))
    from benchmark_utils import read_json, run_stagelearn

    run_dir = run_stagelearn(tmp, name, {
        "simulation": sim, "staging": {"ranks": 2}, "adios2": {"config_file": os.path.join(REPO, "xml_configs", "stagelearn.xml")},
        "learner": learner, "codec": {"kind": "learned", "psnr_db": 41}, "metrics": {"sz3_every": 0}})
    return read_json(run_dir, "producer.json"), read_json(run_dir, "summary.json")


def time_alone(sim):
    out = run_mpi(sim["ranks"], ["alone", str(sim["L"]), str(sim["steps"]), str(sim["plotgap"])])
    return float([ln for ln in out.splitlines() if ln.startswith("RESULT")][-1].split()[1])


def slowdown(cfg, tmp):
    """Item 6: "alone" before and after the coupled runs (the faster one is the reference), coupled AE and PCA."""
    sim = cfg["sim"]
    res = {"alone_first_s": time_alone(sim)}
    ae = {"type": "autoencoder", "warmup_steps": 5, "publish_every": 40,
          "autoencoder": {"channels": list(AE["channels"]), "latent_dim": AE["latent_dim"], "latent_bits": AE["latent_bits"],
                          "mode": "ddp", "iterations_per_step": 10, "batch_size": 256, "device": "cpu"},
          "replay": {"kind": "reservoir", "max_mib": 64}}
    runs = {"ae": ae}
    if cfg["pca_coupled"]:
        runs["pca"] = {"warmup_steps": 5, "publish_every": 40}
    for name, learner in runs.items():
        producer, summary = coupled(tmp, f"{name}_coupled", sim, learner)
        res[f"{name}_coupled_s"] = producer["compute_s"] + producer["io_s"]
        res[f"{name}_compute_s"], res[f"{name}_io_s"] = producer["compute_s"], producer["io_s"]
        res[f"{name}_coupled_ratio"] = summary["compression_ratio"]
        res[f"{name}_coupled_psnr"] = summary["psnr_db"]
    res["alone_last_s"] = time_alone(sim)
    res["alone_s"] = min(res["alone_first_s"], res["alone_last_s"])
    for name in runs:
        res[f"{name}_slowdown"] = res[f"{name}_coupled_s"] / res["alone_s"]
    return res


def run_mpi(n, args):
    mpiexec = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    proc = subprocess.run([mpiexec, "-n", str(n), sys.executable, HERE, *args], capture_output=True, text=True, timeout=1200,
                          env=env, check=False)
    if proc.returncode:
        sys.exit(f"mpiexec {args[0]} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc.stdout


# -------------------------------------------------------------------------------- reporting
KEY_FIGURES = [  # (label, printed name, goal) for the short table of summary.md
    ("AE / PCA ratio, Gray-Scott 40 dB", "gray_scott_40dB_ae_over_pca_ratio", ""),
    ("AE / PCA ratio, Gray-Scott 60 dB", "gray_scott_60dB_ae_over_pca_ratio", ""),
    ("AE / PCA ratio, heat2d 40 dB", "heat2d_40dB_ae_over_pca_ratio", ""),
    ("AE / PCA ratio, heat2d 60 dB", "heat2d_60dB_ae_over_pca_ratio", ""),
    ("temporal gain PCA / AE, Gray-Scott 40 dB", ("gray_scott_pca_40dB_temporal_gain", "gray_scott_ae_40dB_temporal_gain"), ""),
    ("temporal gain PCA / AE, Gray-Scott 60 dB", ("gray_scott_pca_60dB_temporal_gain", "gray_scott_ae_60dB_temporal_gain"), ""),
    ("temporal gain PCA / AE, heat2d 40 dB", ("heat2d_pca_40dB_temporal_gain", "heat2d_ae_40dB_temporal_gain"), ""),
    ("temporal gain PCA / AE, heat2d 60 dB", ("heat2d_pca_60dB_temporal_gain", "heat2d_ae_60dB_temporal_gain"), ""),
    ("AE training, samples/s per staging rank (3D / 2D tiles)",
     ("ae_train_samples_per_s_gray_scott", "ae_train_samples_per_s_heat2d"), ""),
    ("AE encode_block, MB/s per core (Gray-Scott frame, 40 dB)", "ae_encode_block_MBps", ">= 200"),
    ("AE latents alone / AE prediction, MB/s per core", ("ae_encode_latents_MBps", "ae_predict_MBps"), ">= 200"),
    ("PCA encode_block, MB/s per core", "pca_encode_block_MBps", ""),
    ("bytes sent per rank, ddp / local SGD (sync 8)", ("ddp_bytes_per_rank", "local_sgd_bytes_per_rank"), ""),
    ("rounds, ddp / local SGD", ("ddp_rounds", "local_sgd_rounds"), ""),
    ("AE-only reconstruction PSNR, ddp / local SGD", ("ddp_recon_psnr", "local_sgd_recon_psnr"), ""),
    ("simulation slowdown, AE encoding / PCA encoding", ("slowdown_ae_encoding", "slowdown_pca_encoding"), "AE <= 1.15"),
]


def write_summary(out_dir, rows, printed, cmd):
    """``summary.csv`` (the codec rows) and ``summary.md`` (the codec table and the key figures)."""
    os.makedirs(out_dir, exist_ok=True)
    keys = ["mock", "model", "psnr_target", "temporal", "ratio", "psnr_mean", "psnr_min", "encode_MBps"]
    with open(os.path.join(out_dir, "summary.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows({k: r[k] for k in keys} for r in rows)
    lines = [f"# perf_autoencoder (`{cmd}`)", "",
             ("Held-out frames coded after streaming training; ratio = raw float32 / payload bytes (side information "
              "included); PSNR achieved, per frame."), "",
             "| mock | model | target dB | temporal | ratio | PSNR mean | PSNR min | encode MB/s |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['mock']} | {r['model']} | {r['psnr_target']} | {'yes' if r['temporal'] else 'no'} | {r['ratio']:.2f} | "
                     f"{r['psnr_mean']:.2f} | {r['psnr_min']:.2f} | {r['encode_MBps']:.1f} |")
    lines += ["", "| figure | measured | goal |", "|---|---|---|"]
    for label, names, goal in KEY_FIGURES:
        names = (names,) if isinstance(names, str) else names
        if all(n in printed for n in names):
            lines.append(f"| {label} | {' / '.join(printed[n] for n in names)} | {goal} |")
    with open(os.path.join(out_dir, "summary.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


def fmt(v):
    if isinstance(v, (float, np.floating)):
        return f"{v:.4g}" if abs(v) < 1e-2 else f"{v:.2f}"
    return str(v)


def main(quick):
    import torch

    torch.set_num_threads(1)
    cfg = QUICK if quick else FULL
    t_start = time.perf_counter()
    printed = {}  # name -> printed value

    def emit(name, value):
        printed[name] = fmt(value)
        print(f"{name}: {fmt(value)}", flush=True)

    emit("load_average_at_start", os.getloadavg()[0])  # timings are only meaningful on an otherwise idle machine
    rows, frames_by_mock, codecs_by_mock = [], {}, {}
    for mock in ("gray_scott", "heat2d"):
        frames, tile_shape = make_frames(mock, cfg)
        frames_by_mock[mock] = (frames, tile_shape)
        mrows, info, codecs = compare_codecs(mock, frames, tile_shape, cfg)
        codecs_by_mock[mock] = codecs
        rows += mrows
        emit(f"{mock}_frames", f"{cfg['n_train']} train + {cfg['n_test']} held out, {frames.shape[1:]} float32, tiles {tile_shape}")
        for k in ("ae_fit_s", "ae_loss", "pca_fit_s", "ae_model_bytes", "pca_model_bytes", "ae_decode_mismatch", "pca_decode_mismatch"):
            emit(f"{mock}_{k}", info[k])
        for r in mrows:
            tag = f"{mock}_{r['model']}_{r['psnr_target']}dB{'_temporal' if r['temporal'] else ''}"
            emit(f"{tag}_ratio", r["ratio"])
            emit(f"{tag}_psnr", f"{r['psnr_mean']:.2f} (min {r['psnr_min']:.2f})")
        for p in cfg["psnr"]:
            get = {(r["model"], r["temporal"]): r for r in mrows if r["psnr_target"] == p}
            emit(f"{mock}_{p}dB_ae_over_pca_ratio", get["ae", False]["ratio"] / get["pca", False]["ratio"])
            for m in ("pca", "ae"):
                emit(f"{mock}_{m}_{p}dB_temporal_gain", get[m, True]["ratio"] / get[m, False]["ratio"])

    for mock, (frames, tile_shape) in frames_by_mock.items():
        emit(f"ae_train_samples_per_s_{mock}", training_rate(frames, tile_shape))

    gs_frames, gs_tiles = frames_by_mock["gray_scott"]
    tp = encode_throughput(gs_frames[cfg["n_train"]], codecs_by_mock["gray_scott"], gs_tiles)
    for k, v in tp.items():
        emit(k, v)
    emit("ae_encode_block_target_200MBps", "met" if tp["ae_encode_block_MBps"] >= TARGET_ENCODE_MBPS else "not met")
    emit("ae_encode_latents_target_200MBps", "met" if tp["ae_encode_latents_MBps"] >= TARGET_ENCODE_MBPS else "not met")

    with tempfile.TemporaryDirectory() as tmp:
        dist_res = distributed_compare(gs_frames, cfg, tmp)
        for mode, res in dist_res.items():
            for k, v in res.items():
                emit(f"{mode}_{k}", v)
        emit("local_sgd_over_ddp_bytes", dist_res["local_sgd"]["bytes_per_rank"] / dist_res["ddp"]["bytes_per_rank"])
        sd = slowdown(cfg, tmp)
    emit("simulation_alone_first_s", sd["alone_first_s"])
    emit("simulation_alone_last_s", sd["alone_last_s"])
    emit("simulation_alone_s", sd["alone_s"])
    for name in ("ae", "pca"):
        if f"{name}_slowdown" in sd:
            emit(f"simulation_{name}_encoding_s", sd[f"{name}_coupled_s"])
            emit(f"simulation_{name}_compute_s", sd[f"{name}_compute_s"])
            emit(f"simulation_{name}_io_s", sd[f"{name}_io_s"])
            emit(f"slowdown_{name}_encoding", sd[f"{name}_slowdown"])
            emit(f"coupled_{name}_ratio", sd[f"{name}_coupled_ratio"])
            emit(f"coupled_{name}_psnr", sd[f"{name}_coupled_psnr"])
    emit("slowdown_ae_target_1.15", "met" if sd["ae_slowdown"] <= TARGET_SLOWDOWN else "not met")
    emit("wall_s", time.perf_counter() - t_start)
    cmd = "python benchmarks/perf_autoencoder.py" + (" --quick" if quick else "")
    write_summary(os.path.join(REPO, "results", "perf_autoencoder_quick" if quick else "perf_autoencoder"), rows, printed, cmd)


if __name__ == "__main__":
    argv = sys.argv[1:]
    if argv[:1] == ["alone"]:
        alone(*map(int, argv[1:4]))
    elif argv[:1] == ["distributed"]:
        distributed_child(argv[1], int(argv[2]))
    else:
        main("--quick" in argv)
