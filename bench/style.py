"""One figure style for every metabench figure, and byte-reproducible saving.

- Headless: the Agg backend; figures are :class:`matplotlib.figure.Figure` objects created without
  pyplot, so nothing global is opened or kept.
- Style: seaborn's ``whitegrid`` axes and ``paper`` context with the DejaVu Sans font shipped with
  matplotlib (the same glyphs on every machine), applied through ``matplotlib.rc_context`` only
  while a figure is drawn and saved.
- Colours: seaborn's ``colorblind`` palette (Waskom 2021, after Wong 2011, Nat. Methods 8:441),
  one fixed colour per learner and per implementation across all figures.
- Size: :data:`WIDTH` inches wide (a two-column paper's text width), :data:`ROW_HEIGHT` inches per
  row of panels plus :data:`EXTRA_HEIGHT` for titles and legends; saved at :data:`DPI`, so a figure
  with ``r`` rows is ``WIDTH * DPI`` x ``(r * ROW_HEIGHT + EXTRA_HEIGHT) * DPI`` pixels.
- Reproducible bytes: PNG without the ``Software`` text chunk; PDF without creation date,
  producer and creator, TrueType (Type 42) fonts (some venues reject Type 3 fonts). Two renders of
  the same data with the same library versions are byte-identical.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import seaborn as sns
from matplotlib.figure import Figure

DPI = 200
WIDTH = 7.0
ROW_HEIGHT = 2.4
EXTRA_HEIGHT = 0.9
FORMATS = ("png", "pdf")

#: Learners and implementations in the order their colours are assigned (others follow). The
#: learners are ``metabench.algorithms.META_LEARNERS``, copied so that reports need no torch
#: (tests/test_report.py checks the copy).
KNOWN_LEARNERS = ("maml", "fomaml", "reptile", "protonet", "matchingnet")
KNOWN_IMPLEMENTATIONS = ("metabench", "metabench[per_task]", "metabench[batched]", "metabench[vmap]",
                         "learn2learn", "higher")


def rc() -> dict:
    """The matplotlib rc parameters of the style (seaborn whitegrid + paper context, DejaVu Sans,
    Type 42 fonts in PDF, deterministic SVG ids)."""
    params = {**sns.axes_style("whitegrid"), **sns.plotting_context("paper")}
    params.update({
        "font.family": "sans-serif", "font.sans-serif": ["DejaVu Sans"], "mathtext.fontset": "dejavusans",
        "pdf.fonttype": 42, "ps.fonttype": 42, "svg.hashsalt": "metabench",
        "axes.prop_cycle": matplotlib.cycler(color=sns.color_palette("colorblind")),
        "figure.dpi": DPI, "savefig.dpi": DPI, "legend.frameon": False, "axes.titlesize": 9,
        "axes.titleweight": "bold", "image.cmap": "viridis",
    })
    return params


@contextlib.contextmanager
def styled() -> Iterator[None]:
    """Apply :func:`rc` for the duration of the block (drawing and saving)."""
    with matplotlib.rc_context(rc()):
        yield


def palette(names: Sequence[str], known: Sequence[str] = KNOWN_LEARNERS) -> dict[str, tuple[float, float, float]]:
    """A fixed colour per name: names in ``known`` get the ``colorblind`` colour of their position
    there (so MAML is the same blue in every figure), other names the following colours in order.

    Returns:
        ``{name: (r, g, b)}`` with components in [0, 1].
    """
    colours = sns.color_palette("colorblind", 10)
    extra = [n for n in dict.fromkeys(names) if n not in known]
    out = {}
    for name in dict.fromkeys(names):
        index = known.index(name) if name in known else len(known) + extra.index(name)
        out[name] = tuple(colours[index % len(colours)])
    return out


def figure_size(rows: int) -> tuple[float, float]:
    """``(width, height)`` in inches of a figure with ``rows`` rows of panels."""
    return WIDTH, rows * ROW_HEIGHT + EXTRA_HEIGHT


def pixel_size(rows: int) -> tuple[int, int]:
    """``(width, height)`` in pixels of the saved PNG of a figure with ``rows`` rows of panels."""
    w, h = figure_size(rows)
    return round(w * DPI), round(h * DPI)


def new_figure(rows: int, cols: int, sharex: bool | str = False, sharey: bool | str = False) -> tuple[Figure, list]:
    """A figure of ``rows`` x ``cols`` panels with constrained layout, sized by :func:`figure_size`.

    Must be called inside :func:`styled`.

    Returns:
        ``(figure, axes)`` with ``axes`` a flat list in row-major order.
    """
    fig = Figure(figsize=figure_size(rows), dpi=DPI, layout="constrained")
    axes = fig.subplots(rows, cols, sharex=sharex, sharey=sharey, squeeze=False)
    return fig, [ax for row in axes for ax in row]


def save(fig: Figure, folder: Path, name: str) -> list[Path]:
    """Save ``fig`` as ``folder/name.png`` (at :data:`DPI`) and ``folder/name.pdf`` (vector).

    Metadata that would change between renders (software version, dates) is left out, so that
    equal figures give equal bytes. The size is the figure's size (no tight bounding box).
    Must be called inside :func:`styled`.

    Returns:
        The paths written, PNG first.
    """
    folder.mkdir(parents=True, exist_ok=True)
    png, pdf = folder / f"{name}.png", folder / f"{name}.pdf"
    fig.savefig(png, format="png", dpi=DPI, metadata={"Software": None})
    fig.savefig(pdf, format="pdf", metadata={"Creator": None, "Producer": None, "CreationDate": None})
    return [png, pdf]
