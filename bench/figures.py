"""The report's figures, drawn from data frames (no file reading here).

Every function takes tidy data frames (one row per plotted value; columns listed in each
docstring), draws one :class:`matplotlib.figure.Figure` with :mod:`metabench.style` and returns
it. Call them inside ``style.styled()`` and save with ``style.save``. Settings (panels) and
learners keep the order of their first appearance in the data. Figure heights follow
``style.figure_size(rows)`` with the number of panel rows stated in each docstring.

Selection helpers (:func:`scaling_facets`, :func:`device_cells`, :func:`peer_settings`) decide
which timing rows a figure can show, so that the caller can skip a figure and say why.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import (
    FixedLocator,
    FuncFormatter,
    LogLocator,
    MaxNLocator,
    NullFormatter,
    NullLocator,
)

from metabench import style

#: Learners of ``metabench time`` whose step has an inner loop (their classes' ``INNER_LOOP``, as
#: ``metabench.timing.INNER_LOOP``; copied so that figures need no torch, and checked by a test).
INNER_LOOP = ("maml", "fomaml", "reptile")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def _order(values: pd.Series) -> list:
    return list(dict.fromkeys(values))


def _plain_log_axis(axis, values: Sequence[float] | np.ndarray) -> None:
    """Label a log axis with plain numbers (no 2 x 10^3): at 1, 2, 5 x powers of ten, or at about six
    evenly spaced round numbers when ``values`` span less than a factor of 10."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v) & (v > 0)]
    if v.size > 0 and v.max() / v.min() < 10:
        axis.set_major_locator(MaxNLocator(nbins=6, steps=[1, 2, 2.5, 5, 10]))
        axis.set_minor_locator(NullLocator())
    else:
        axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def _legend_columns(labels: Sequence[str], most: int = 3, width: int = 96) -> int:
    """Legend columns for a figure-wide legend: at most ``most``, and few enough that the
    longest label fits about ``width`` characters per row (so no column is clipped)."""
    longest = max((len(label) for label in labels), default=1) + 6  # marker and spacing
    return max(1, min(len(labels), most, width // longest))


def _learner_colours(frame: pd.DataFrame) -> dict:
    return style.palette(_order(frame["learner"]))


def accuracy_figure(ours: pd.DataFrame, published: pd.DataFrame) -> Figure:
    """Mean accuracy per learner with 95% CI error bars, one panel per setting, with the papers'
    published numbers as hollow markers (squares: transductive) on the same row.

    Args:
        ours: rows ``setting, learner, name, accuracy_pct, ci95_pct, episodes`` (percent; one row
            per setting x learner).
        published: rows ``setting, learner, accuracy_pct, ci95_pct`` (NaN: none published),
            ``transductive`` (``yes``/``no``/``unknown``); may be empty.

    Returns:
        The figure: one row of panels per setting.
    """
    settings = _order(ours["setting"])
    colours = _learner_colours(ours)
    fig, axes = style.new_figure(len(settings), 1)
    for ax, setting in zip(axes, settings):
        mine = ours[ours["setting"] == setting].reset_index(drop=True)
        ys = {name: i for i, name in enumerate(mine["learner"])}
        for r in mine.itertuples():
            ax.errorbar(r.accuracy_pct, ys[r.learner], xerr=0 if math.isnan(r.ci95_pct) else r.ci95_pct,
                        fmt="o", color=colours[r.learner], ecolor=colours[r.learner], capsize=3, markersize=5,
                        elinewidth=1.2, zorder=3)
        pub = published[(published["setting"] == setting) & published["learner"].isin(ys)] if len(published) else published
        for r in pub.itertuples():
            marker = "s" if r.transductive == "yes" else "D"
            ax.errorbar(r.accuracy_pct, ys[r.learner] + 0.28, xerr=None if math.isnan(r.ci95_pct) else r.ci95_pct,
                        fmt=marker, mfc="white", mec="0.2", ecolor="0.4", color="0.2", markersize=4.5,
                        capsize=2, elinewidth=0.8, zorder=2)
        ax.set_yticks(range(len(mine)), list(mine["name"]))
        ax.set_ylim(len(mine) - 0.4, -0.6)
        ax.set_xlabel("accuracy (%)")
        n = int(mine["episodes"].iloc[0])
        ax.set_title(f"{setting}: mean over n = {n} test episodes ± 95% CI")
    handles = [Line2D([], [], marker="o", color="0.3", linestyle="none", label="metabench (mean ± 95% CI)")]
    if len(published):
        handles.append(Line2D([], [], marker="D", mfc="white", mec="0.2", color="0.2", linestyle="none",
                              label="published"))
        if (published["transductive"] == "yes").any():
            handles.append(Line2D([], [], marker="s", mfc="white", mec="0.2", color="0.2", linestyle="none",
                                  label="published, transductive"))
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles))
    return fig


def episodes_figure(per_episode: pd.DataFrame) -> Figure:
    """Distribution of per-episode accuracy per learner (violins with quartiles, black dot: mean),
    one panel per setting.

    Args:
        per_episode: rows ``setting, learner, name, episode, accuracy`` (percent; with several
            seeds, the mean over seeds of each episode).

    Returns:
        The figure: one row of panels per setting.
    """
    settings = _order(per_episode["setting"])
    colours = {r.name: style.palette(_order(per_episode["learner"]))[r.learner]
               for r in per_episode[["learner", "name"]].drop_duplicates().itertuples()}
    fig, axes = style.new_figure(len(settings), 1)
    for ax, setting in zip(axes, settings):
        data = per_episode[per_episode["setting"] == setting]
        names = _order(data["name"])
        sns.violinplot(data=data, x="name", y="accuracy", hue="name", order=names, hue_order=names,
                       palette=colours, inner="quart", cut=0, density_norm="width", linewidth=0.8,
                       saturation=0.9, legend=False, ax=ax)
        means = data.groupby("name", sort=False)["accuracy"].mean()
        ax.scatter(range(len(names)), [means[n] for n in names], color="black", s=12, zorder=3)
        ax.set_xticks(range(len(names)), [textwrap.fill(n, 14) for n in names])
        n = data.groupby("name")["episode"].nunique().iloc[0]
        ax.set_title(f"{setting}: per-episode accuracy, n = {n} episodes")
        ax.set_xlabel("")
        ax.set_ylabel("accuracy (%)")
        ax.set_ylim(-2, 102)
    handles = [Line2D([], [], marker="o", color="black", linestyle="none", markersize=4, label="mean"),
               Line2D([], [], color="0.3", linestyle="--", label="median and quartiles")]
    fig.legend(handles=handles, loc="outside lower center", ncols=2)
    return fig


def _reference_accuracies(published: pd.DataFrame, learner: str) -> list[float]:
    """The published accuracies to draw for ``learner``: its transductive ones where it has
    both kinds (metabench's learners all use transductive batch norm), else all of them."""
    if not len(published):
        return []
    mine = published[published["learner"] == learner]
    if "transductive" in mine and mine["transductive"].eq("yes").any() and not mine["transductive"].eq("yes").all():
        mine = mine[mine["transductive"].eq("yes")]
    return list(mine["accuracy_pct"])


def curves_figure(curves: pd.DataFrame, band: str, published: pd.DataFrame | None = None) -> Figure:
    """Validation accuracy during meta-training, against meta-iterations (left) and meta-training
    CPU-hours (right; meta-training wall-clock seconds for runs that did not record CPU time),
    one row of panels per setting, with the published test accuracies as dashed lines.

    Args:
        curves: rows ``setting, learner, name, iteration, train_seconds, train_cpu_seconds``
            (NaN where not recorded), ``val_accuracy, low, high`` (percent; ``low``/``high`` the
            shaded band, NaN for none).
        band: what the band is, for the legend (e.g. ``95% CI over validation episodes``).
        published: rows ``setting, learner, accuracy_pct, transductive`` of published results
            (:func:`_reference_accuracies` of each learner drawn; none if ``None``).

    Returns:
        The figure: one row of two panels per setting.
    """
    settings = _order(curves["setting"])
    colours = _learner_colours(curves)
    fig, axes = style.new_figure(len(settings), 2)
    cpu = "train_cpu_seconds" in curves and curves["train_cpu_seconds"].notna().all()
    curves = curves.assign(train_cpu_hours=curves["train_cpu_seconds"] / 3600) if cpu else curves
    second = ("train_cpu_hours", "meta-training CPU time (hours)") if cpu else ("train_seconds", "meta-training time (s)")
    for row, setting in enumerate(settings):
        data = curves[curves["setting"] == setting]
        refs = published[published["setting"] == setting] if published is not None else pd.DataFrame()
        for col, (x, xlabel) in enumerate((("iteration", "meta-iteration"), second)):
            ax = axes[2 * row + col]
            for learner in _order(data["learner"]):
                d = data[data["learner"] == learner].sort_values(x)
                ax.plot(d[x], d["val_accuracy"], marker="o", markersize=3.5, color=colours[learner],
                        label=d["name"].iloc[0], linewidth=1.3)
                if d["low"].notna().any():
                    ax.fill_between(d[x], d["low"], d["high"], color=colours[learner], alpha=0.15, linewidth=0)
                for value in _reference_accuracies(refs, learner):
                    ax.axhline(value, color=colours[learner], linestyle="--", linewidth=0.9, alpha=0.8)
            ax.set_xlabel(xlabel)
            ax.set_ylabel("validation accuracy (%)")
            ax.set_title(setting if col == 0 else f"vs {xlabel.split(' (')[0]}")
    handles, labels = axes[0].get_legend_handles_labels()
    handles.append(Line2D([], [], color="0.5", linewidth=6, alpha=0.3))
    labels.append(band)
    if published is not None and len(published):
        handles.append(Line2D([], [], color="0.3", linestyle="--", linewidth=0.9))
        labels.append("published test accuracy")
    fig.legend(handles, labels, loc="outside lower center", ncols=_legend_columns(labels))
    return fig


def pareto_figure(points: pd.DataFrame) -> Figure:
    """Accuracy against meta-training time (log scale) per learner, the Pareto front (no other
    learner both faster and more accurate) drawn as a dashed staircase with ringed markers, one
    panel per setting.

    Args:
        points: rows ``setting, learner, name, meta_train_s`` (seconds), ``accuracy_pct,
            ci95_pct`` (percent), ``front`` (bool, on the Pareto front).

    Returns:
        The figure: one row of panels per setting.
    """
    settings = _order(points["setting"])
    colours = _learner_colours(points)
    fig, axes = style.new_figure(len(settings), 1)
    for ax, setting in zip(axes, settings):
        data = points[points["setting"] == setting]
        front = data[data["front"]].sort_values("meta_train_s")
        if len(front):
            xs = np.repeat(front["meta_train_s"].to_numpy(), 2)[1:]
            ys = np.repeat(front["accuracy_pct"].to_numpy(), 2)[:-1]
            ax.plot(xs, ys, linestyle="--", color="0.35", linewidth=1, zorder=1)
        for r in data.itertuples():
            ax.errorbar(r.meta_train_s, r.accuracy_pct, yerr=0 if math.isnan(r.ci95_pct) else r.ci95_pct, fmt="o",
                        color=colours[r.learner], markersize=7 if r.front else 5, capsize=2,
                        mec="black" if r.front else colours[r.learner], mew=1.4 if r.front else 0.5,
                        label=r.name, zorder=3)
        ax.set_xscale("log")
        _plain_log_axis(ax.xaxis, data["meta_train_s"])
        ax.set_xlabel("meta-training time (s, log scale)")
        ax.set_ylabel("accuracy (%)")
        ax.set_title(f"{setting}: accuracy vs compute")
    handles, labels = axes[0].get_legend_handles_labels()
    handles.append(Line2D([], [], linestyle="--", color="0.35", marker="o", mfc="white", mec="black", mew=1.4))
    labels.append("Pareto front")
    fig.legend(handles, labels, loc="outside lower center", ncols=_legend_columns(labels))
    return fig


def _facet_title(row: pd.Series, other: str) -> str:
    """Short panel title of a timing facet: ``cpu (AMD EPYC) · 5w1s · Q 15 · meta-batch 16``."""
    value = row[other]
    tail = f"meta-batch {value}" if other == "meta_batch" else f"{value} inner step{'s' if value != 1 else ''}"
    return f"{row['device_name']} · {row['ways']}w{row['shots']}s · Q {row['queries']} · {tail}"


def scaling_facets(table: pd.DataFrame, x: str) -> list[tuple]:
    """The panels a scaling figure over ``x`` can show.

    A panel fixes device, N-way K-shot, queries and the other of ``inner_steps`` /
    ``meta_batch``; it is shown when some implementation and learner there was timed at two or
    more values of ``x``. For ``x = "inner_steps"`` only learners with an inner loop count.

    Args:
        table: timing rows (``metabench time``'s ``timing.csv`` columns plus ``device_name``).
        x: ``inner_steps`` or ``meta_batch``.

    Returns:
        The panel keys ``(device_name, ways, shots, queries, other)`` in order of appearance.
    """
    other = "meta_batch" if x == "inner_steps" else "inner_steps"
    data = table[table["learner"].isin(INNER_LOOP)] if x == "inner_steps" else table
    keys = ["device_name", "ways", "shots", "queries", other]
    counts = data.groupby(keys + ["label", "learner"], sort=False)[x].nunique()
    good = counts[counts >= 2].reset_index()
    return list(dict.fromkeys(tuple(r) for r in good[keys].itertuples(index=False)))


def scaling_figure(table: pd.DataFrame, x: str, y: str, ylabel: str, facets: Sequence[tuple]) -> Figure:
    """Medians of ``y`` against ``x`` (log-scale y), one line per implementation (colour) and
    learner (marker), one panel per facet from :func:`scaling_facets`, two panels per row.

    Args:
        table: timing rows (``label, learner, ways, shots, queries, meta_batch, inner_steps,
            device_name`` and ``y``).
        x: ``inner_steps`` or ``meta_batch`` (``meta_batch`` is drawn on a log2 axis).
        y: ``median_ms`` or ``peak_memory_mib``.
        ylabel: the y-axis label.
        facets: the panels, as returned by :func:`scaling_facets` (not empty).

    Returns:
        The figure: ``ceil(len(facets) / 2)`` rows of panels (one panel: one row).
    """
    other = "meta_batch" if x == "inner_steps" else "inner_steps"
    keys = ["device_name", "ways", "shots", "queries", other]
    data = table[table["learner"].isin(INNER_LOOP)] if x == "inner_steps" else table
    colours = style.palette(_order(data["label"]), style.KNOWN_IMPLEMENTATIONS)
    markers = {name: MARKERS[i % len(MARKERS)] for i, name in enumerate(_order(data["learner"]))}
    cols = 1 if len(facets) == 1 else 2
    rows = math.ceil(len(facets) / cols)
    fig, axes = style.new_figure(rows, cols)
    for i, (ax, facet) in enumerate(zip(axes, facets)):
        mask = np.ones(len(data), dtype=bool)
        for key, value in zip(keys, facet):
            mask &= (data[key] == value).to_numpy()
        panel = data[mask]
        for (label, learner), d in panel.groupby(["label", "learner"], sort=False):
            d = d.sort_values(x)
            ax.plot(d[x], d[y], marker=markers[learner], color=colours[label], label=f"{label} · {learner}",
                    linewidth=1.3, markersize=4.5)
        ax.set_yscale("log")
        _plain_log_axis(ax.yaxis, panel[y])
        values = sorted(panel[x].unique())
        if x == "meta_batch":
            ax.set_xscale("log", base=2)
        ax.xaxis.set_major_locator(FixedLocator(values))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.set_xlabel("inner steps" if x == "inner_steps" else "meta-batch (tasks per step)")
        ax.set_ylabel(ylabel if i % cols == 0 else "")
        ax.set_title(_facet_title(panel.iloc[0], other), fontsize=8)
    for ax in axes[len(facets):]:
        ax.set_axis_off()
    handles, labels = [], []
    for ax in axes[:len(facets)]:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    fig.legend(handles, labels, loc="outside lower center", ncols=_legend_columns(labels))
    return fig


#: What identifies a timed cell apart from the device it ran on.
CELL_KEYS = ("label", "learner", "ways", "shots", "queries", "meta_batch", "inner_steps")


def reference_device(table: pd.DataFrame) -> str:
    """The device the others are compared with: the first CPU in the table, else the first device."""
    cpus = table.loc[table["device"] == "cpu", "device_name"]
    return str(cpus.iloc[0]) if len(cpus) else str(table["device_name"].iloc[0])


def device_cells(table: pd.DataFrame) -> pd.DataFrame:
    """Timing rows of the cells measured on more than one device (``device_name``: e.g. the CPU
    and a GPU), each paired with the same cell on the reference device (:func:`reference_device`).

    Returns:
        One row per cell and non-reference device: ``CELL_KEYS``, ``device_name`` (the other
        device), ``reference_ms`` and ``median_ms`` (its median step time); empty if none.
    """
    keys = list(CELL_KEYS)
    if table.empty or table["device_name"].nunique() < 2:
        return pd.DataFrame(columns=[*keys, "device_name", "reference_ms", "median_ms"])
    ref = reference_device(table)
    base = table[table["device_name"] == ref][[*keys, "median_ms"]].rename(columns={"median_ms": "reference_ms"})
    others = table[table["device_name"] != ref][[*keys, "device_name", "median_ms"]]
    return others.merge(base, on=keys, how="inner")


def devices_figure(pairs: pd.DataFrame, reference: str) -> Figure:
    """Median step time of the same cells on another device against the reference device
    (log-log); dotted diagonals mark equal time and 10x / 100x speed-ups. Colour: the other
    device; marker: the implementation.

    Args:
        pairs: from :func:`device_cells` (not empty).
        reference: the reference device's name (x axis).

    Returns:
        The figure: one row, one panel.
    """
    devices = _order(pairs["device_name"])
    colours = dict(zip(devices, sns.color_palette("colorblind", len(devices))))
    labels = _order(pairs["label"])
    markers = {name: MARKERS[i % len(MARKERS)] for i, name in enumerate(labels)}
    fig, axes = style.new_figure(1, 1)
    ax = axes[0]
    for (device, label), d in pairs.groupby(["device_name", "label"], sort=False):
        ax.scatter(d["reference_ms"], d["median_ms"], color=colours[device], marker=markers[label], s=28,
                   label=f"{device} · {label}", zorder=3)
    values = np.concatenate([pairs["reference_ms"].to_numpy(), pairs["median_ms"].to_numpy()])
    lo, hi = values.min() / 1.5, values.max() * 1.5
    for speedup, text in ((1, "same time"), (10, "10x faster"), (100, "100x faster")):
        ax.plot([lo, hi], [lo / speedup, hi / speedup], linestyle=":", color="0.5", linewidth=1, zorder=1)
        if lo <= hi / speedup:
            ax.annotate(text, (hi, hi / speedup), textcoords="offset points", xytext=(-4, 2), ha="right",
                        fontsize=7, color="0.4")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo / 100, hi)
    _plain_log_axis(ax.xaxis, [lo, hi])
    _plain_log_axis(ax.yaxis, [lo / 100, hi])
    ax.set_xlabel(f"median time per meta-step on {reference} (ms)")
    ax.set_ylabel("median time on the other device (ms)")
    ax.set_title(f"The same cells on each device, against {reference}")
    fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncols=min(len(devices) * len(labels), 3))
    return fig


#: What identifies a setting in which implementations are compared.
PEER_KEYS = ("learner", "ways", "shots", "queries", "meta_batch", "inner_steps", "device_name")


def peer_ratios(table: pd.DataFrame) -> pd.DataFrame:
    """Each non-default implementation's time and memory relative to metabench's default strategy
    in the same setting, for the settings where a peer (not ``metabench``) was timed.

    Returns:
        One row per implementation and setting other than the default ``metabench`` row:
        ``PEER_KEYS``, ``label``, ``time_ratio`` (median time / ours), ``memory_ratio`` (peak
        memory / ours, NaN where unknown); empty if no peer was timed.
    """
    keys = list(PEER_KEYS)
    columns = [*keys, "label", "time_ratio", "memory_ratio"]
    if table.empty:
        return pd.DataFrame(columns=columns)
    has_peer = (table["implementation"] != "metabench").groupby([table[k] for k in keys], sort=False).transform("any")
    data = table[has_peer.to_numpy()]
    ours = data[data["label"] == "metabench"][[*keys, "median_ms", "peak_memory_mib"]]
    others = data[data["label"] != "metabench"].merge(ours, on=keys, suffixes=("", "_ours"))
    others = others.assign(time_ratio=others["median_ms"] / others["median_ms_ours"],
                           memory_ratio=others["peak_memory_mib"] / others["peak_memory_mib_ours"])
    return others[columns].reset_index(drop=True)


def peers_figure(ratios: pd.DataFrame) -> Figure:
    """Ours against the peers: each implementation's median step time (x) and peak memory (y)
    divided by metabench's default strategy in the same setting (log-log). Points left of 1 are
    faster than ours, points below 1 use less memory. Colour: implementation; marker: setting.

    Args:
        ratios: from :func:`peer_ratios` (not empty).

    Returns:
        The figure: one row, one panel.
    """
    labels = _order(ratios["label"])
    colours = style.palette(["metabench", *labels], style.KNOWN_IMPLEMENTATIONS)
    several_devices = ratios["device_name"].nunique() > 1
    keys = [f"{r.learner}, {r.ways}w{r.shots}s, meta-batch {r.meta_batch}, {r.inner_steps} step"
            + ("s" if r.inner_steps != 1 else "") + (f", {r.device_name}" if several_devices else "")
            for r in ratios.itertuples()]
    settings = _order(pd.Series(keys))
    fig, axes = style.new_figure(1, 1)
    ax = axes[0]
    markers = {k: MARKERS[i % len(MARKERS)] for i, k in enumerate(settings)}
    memory = ratios["memory_ratio"].fillna(1.0)
    for r, key, mem in zip(ratios.itertuples(), keys, memory):
        ax.scatter(r.time_ratio, mem, color=colours[r.label], marker=markers[key], s=36, zorder=3,
                   edgecolors="black", linewidths=0.4)
    ax.axvline(1.0, color="0.4", linestyle=":", linewidth=1)
    ax.axhline(1.0, color="0.4", linestyle=":", linewidth=1)
    ax.scatter([1.0], [1.0], marker="*", s=110, color=colours.get("metabench", "black"), edgecolors="black",
               linewidths=0.4, zorder=4)
    ax.set_xscale("log")
    ax.set_yscale("log")
    xs = np.concatenate([ratios["time_ratio"].to_numpy(), [1.0]])
    ys = np.concatenate([memory.to_numpy(), [1.0]])  # unknown memory ratios drawn at 1
    ax.set_xlim(xs.min() / 1.25, xs.max() * 1.25)
    ax.set_ylim(ys.min() / 1.25, ys.max() * 1.25)
    _plain_log_axis(ax.xaxis, ax.get_xlim())
    _plain_log_axis(ax.yaxis, ax.get_ylim())
    ax.set_xlabel("median step time / ours")
    ax.set_ylabel("peak memory / ours")
    ax.set_title("Relative to metabench's default strategy (star) in the same setting")
    star = Line2D([], [], marker="*", markersize=9, color=colours.get("metabench", "black"), mec="black", mew=0.4,
                  linestyle="none", label="metabench (ours, default strategy)")
    handles = [star] + [Line2D([], [], marker="o", color=colours[lab], linestyle="none", label=lab) for lab in labels]
    handles += [Line2D([], [], marker=markers[k], color="0.3", mfc="white", linestyle="none", label=k) for k in settings]
    fig.legend(handles=handles, loc="outside lower center", ncols=2)
    return fig
