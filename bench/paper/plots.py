"""Line charts for docs/RESULTS.md, drawn with matplotlib (Debian's python3-matplotlib).

The SVG files are committed and tests/paper/report_test.sh checks that regenerating them changes
nothing, so they must be byte-for-byte reproducible: a fixed hash salt for the element ids, no
date in the metadata, text kept as text (no glyph outlines that depend on the installed fonts'
versions), and the Agg backend (no display).
"""
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

plt.rcParams.update({
    "svg.hashsalt": "raptr-paper-report",
    "svg.fonttype": "none",
    "font.family": "DejaVu Sans",
    "font.size": 10,
    "axes.grid": True,
    "grid.color": "#e5e5e5",
    "axes.axisbelow": True,
    "figure.dpi": 100,
})

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2",
          "#7f7f7f", "#bcbd22", "#17becf", "#000000", "#aec7e8", "#98df8a"]


def line_chart(path, title, xlabel, ylabel, series, ylim=None, vlines=(), bands=(), logx=False):
    """series: [(label, xs, ys, color, dashed)]; bands: [(xs, lo, hi, color)] shaded between
    lo and hi (a seed range); vlines: x positions drawn dotted (stage transitions). Writes an SVG
    at `path` and returns True, or False (and writes nothing) when there is nothing to draw."""
    if not any(s[1] for s in series):
        return False
    fig, ax = plt.subplots(figsize=(8.6, 4.6))
    for xs, lo, hi, color in bands:
        ax.fill_between(xs, lo, hi, color=color, alpha=0.15, linewidth=0)
    for label, xs, ys, color, dashed in series:
        if xs:
            ax.plot(xs, ys, color=color, linestyle="--" if dashed else "-", linewidth=1.5,
                    label=label)
    for v in vlines:
        ax.axvline(v, color="#999999", linestyle=":", linewidth=1)
    if ylim:
        ax.set_ylim(*ylim)
    if logx:
        ax.set_xscale("log")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, fontsize=9)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if path.endswith(".svg"):
        fig.savefig(path, format="svg", metadata={"Date": None})
    else:  # a PNG to look at while writing the report; never committed
        fig.savefig(path)
    plt.close(fig)
    return True
