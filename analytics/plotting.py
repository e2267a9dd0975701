"""Figures of a run (matplotlib, Agg backend; files only, never ``plt.show()``)."""

from __future__ import annotations

import numpy as np


def plot_run(step_table, path, *, original=None, reconstruction=None, title=""):
    """Compression ratio and PSNR versus step, and one slice of original, reconstruction, error.

    Parameters
    ----------
    step_table : list of dict
        Rows with ``step``, ``compression_ratio``, ``psnr_db``, ``encoder_version``.
    path : str
        PNG file to write.
    original, reconstruction : ndarray, optional
        Same-shape fields (2D or 3D); the middle slice along the last axis is shown.
    title : str
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    show_slice = original is not None and reconstruction is not None
    fig = plt.figure(figsize=(13, 7.5 if show_slice else 4), layout="constrained")
    grid = fig.add_gridspec(2 if show_slice else 1, 6)
    steps = [r["step"] for r in step_table]
    coded = [r for r in step_table if r["encoder_version"] > 0]
    ax = fig.add_subplot(grid[0, :3])
    ax.plot(steps, [r["compression_ratio"] for r in step_table], ".-", ms=3)
    ax.set_xlabel("output step")
    ax.set_ylabel("compression ratio (raw / sent)")
    ax.set_yscale("log")
    for r0, r1 in zip(step_table, step_table[1:]):
        if r1["encoder_version"] != r0["encoder_version"]:
            ax.axvline(r1["step"], color="0.8", lw=0.8)
    ax.set_title("bytes on the wire (grey: new encoder in use)")
    ax = fig.add_subplot(grid[0, 3:])
    ax.plot([r["step"] for r in coded], [r["psnr_db"] for r in coded], ".-", ms=3, color="C1")
    ax.set_xlabel("output step")
    ax.set_ylabel("PSNR (dB), mean over variables")
    ax.set_title("error of what producers sent")
    if show_slice:
        def mid(a):
            """A 2-D slice: the middle of the last axis in 3-D; in 5-D phase space the velocity-space
            slice (v_par, mu) at the middle spatial point."""
            a = np.asarray(a)
            if a.ndim == 5:
                return a[a.shape[0] // 2, a.shape[1] // 2, a.shape[2] // 2]
            return a[..., a.shape[-1] // 2] if a.ndim == 3 else a
        o, r = mid(original), mid(reconstruction)
        vmin, vmax = float(o.min()), float(o.max())
        emax = float(np.abs(r - o).max()) or 1.0
        for i, (img, name, kw) in enumerate([
            (o, "original", dict(vmin=vmin, vmax=vmax)),
            (r, "reconstruction", dict(vmin=vmin, vmax=vmax)),
            (r - o, "error", dict(cmap="RdBu_r", vmin=-emax, vmax=emax)),
        ]):
            ax = fig.add_subplot(grid[1, 2 * i:2 * i + 2])
            im = ax.imshow(img.T, origin="lower", **kw)
            ax.set_title(name)
            fig.colorbar(im, ax=ax, shrink=0.8)
    if title:
        fig.suptitle(title)
    fig.savefig(path, dpi=110)
    plt.close(fig)
