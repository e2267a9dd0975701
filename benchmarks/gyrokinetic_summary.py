"""The summary table of ``benchmarks/gyrokinetic_moments.py`` (``results/gyrokinetic/summary.md``)."""

from __future__ import annotations


def summary_md(meta, all_mocks):
    """The markdown table of a run: its command line, then one row per mock, tolerance and method.

    Parameters
    ----------
    meta : dict
        What ``gyrokinetic_moments.py`` writes to ``summary.json``.
    all_mocks : tuple of str
        Every mock the benchmark knows (``--mock`` flags are written when the run had fewer).

    Returns
    -------
    str
    """
    flags = ((" --quick" if meta["quick"] else "") + (" --ae" if meta.get("ae") else "")
             + (f" --side-format {meta['side_format']}" if meta.get("side_format", 2) != 2 else "")
             + "".join(f" --mock {m}" for m in meta.get("mocks", all_mocks) if len(meta.get("mocks", all_mocks)) < len(all_mocks))
             + "".join(f" --tolerance {t:g}" for t in meta.get("tolerances") or ()))
    lines = [f"`python benchmarks/gyrokinetic_moments.py{flags} --metric {meta['metric']}` "
             f"(grid {' x '.join(map(str, meta['grid']))}, 6 coded frames, correction metric {meta['metric']}, "
             f"wall {meta['wall_s']:.0f} s)", "",
             "| mock | tol | method | ratio | vs SZ3 | vs SZ3 + correction | PSNR of f (dB) | setting | side info B/frame "
             "| correction ms/frame | values made < 0 /frame | min f / max f | worst moment error / tol "
             "| particle flux n v_r, rel. L2 | energy flux <E v_r>(r), max err / max |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]

    def ref(r, method):
        return next((x["ratio"] for x in meta["rows"] if x["mock"] == r["mock"] and x["tolerance"] == r["tolerance"]
                     and x["method"] == method), float("nan"))

    for r in meta["rows"]:
        lines.append(f"| {r['mock']} | {r['tolerance']:g} | {r['method']} | {r['ratio']:.1f} | "
                     f"{r['ratio'] / ref(r, 'SZ3'):.2f}x | {r['ratio'] / ref(r, 'SZ3 + correction'):.2f}x | "
                     f"{r['psnr_db']:.1f} | {r['setting']} | {r.get('side_bytes_per_frame', 0):.0f} | "
                     f"{1e3 * r.get('correction_s_per_frame', 0):.0f} | {r.get('negative_values_per_frame', 0):.0f} | "
                     f"{r.get('min_over_max', 0):.1e} | {r.get('worst_fraction', float('nan')):.2f} | "
                     f"{r.get('flux_local_l2', float('nan')):.1e} | {r.get('energy_flux_profile', float('nan')):.1e} |")
    return "\n".join(lines) + "\n"
