"""Tables rendered as Markdown and as LaTeX (booktabs).

A :class:`Table` holds cells as plain text (Unicode ``±``, ``†``, ``—``, ``·``, ``√``, ``α``,
``×``, ``≤``, ``−``, ``ε`` allowed) with a bold flag; :func:`to_markdown` and :func:`to_latex` render it.
LaTeX output needs only ``\\usepackage{booktabs}`` in the preamble (symbols are written in math
mode, which base LaTeX provides). CSV versions are written from the data frames the tables are
built from, with full precision, not from the rounded cells.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Unicode symbols used in cells and captions, and their LaTeX forms (math mode or text commands).
LATEX_SYMBOLS = {
    "±": r"$\pm$", "†": r"$^{\dagger}$", "—": "---", "–": "--", "·": r"$\cdot$", "√": r"$\surd$",
    "α": r"$\alpha$", "ε": r"$\varepsilon$", "Δ": r"$\Delta$", "×": r"$\times$", "≤": r"$\le$", "≥": r"$\ge$", "−": "$-$", "≈": r"$\approx$",
    "…": r"\ldots{}", "\u00a0": "~",
}
_LATEX_SPECIALS = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
    "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "<": r"\textless{}",
    ">": r"\textgreater{}",
}


def latex_escape(text: str) -> str:
    """Plain text -> LaTeX: escape ``& % $ # _ { } ~ ^ \\ < >`` and write the symbols of
    :data:`LATEX_SYMBOLS` in their LaTeX form.

    Raises:
        ValueError: for any other non-ASCII character (it might not compile with pdflatex's
            default encoding); the caller should spell it out.
    """
    out = []
    for ch in text:
        if ch in LATEX_SYMBOLS:
            out.append(LATEX_SYMBOLS[ch])
        elif ch in _LATEX_SPECIALS:
            out.append(_LATEX_SPECIALS[ch])
        elif ord(ch) > 127:
            raise ValueError(f"latex_escape: no LaTeX form for {ch!r} in {text!r}")
        else:
            out.append(ch)
    return "".join(out)


@dataclass(frozen=True)
class Cell:
    """One table cell.

    Attributes:
        text: plain text (see :func:`latex_escape` for the symbols allowed).
        bold: set in bold (Markdown ``**``, LaTeX ``\\textbf``).
    """

    text: str
    bold: bool = False


@dataclass(frozen=True)
class Table:
    """A table with a caption, renderable as Markdown and LaTeX.

    Attributes:
        header: column titles (plain text), one per column.
        rows: rows of :class:`Cell`, each as long as ``header``.
        align: one of ``l``, ``r``, ``c`` per column.
        caption: plain-text caption (Markdown may use ``*emphasis*``; rendered escaped in LaTeX
            unless ``caption_tex`` is given).
        label: LaTeX label, e.g. ``tab:accuracy``.
        caption_tex: the caption written in LaTeX (for formulas); ``None`` -> escaped ``caption``.
        groups: ``(title, span)`` pairs over the columns after the first: a LaTeX header row above
            ``header`` with ``\\multicolumn`` titles and ``\\cmidrule`` rules (blank title: no
            rule). Markdown shows ``group title`` and ``header`` in one header cell.
        sections: ``(row index, title)``: a rule and an italic title row before that row (Markdown:
            an italic row).

    Raises:
        ValueError: on construction, if a row or ``align`` does not match ``header`` or the
            groups do not span the columns after the first.
    """

    header: tuple[str, ...]
    rows: tuple[tuple[Cell, ...], ...]
    align: str
    caption: str
    label: str
    caption_tex: str | None = None
    groups: tuple[tuple[str, int], ...] = ()
    sections: tuple[tuple[int, str], ...] = ()

    def __post_init__(self) -> None:
        n = len(self.header)
        if len(self.align) != n or any(a not in "lrc" for a in self.align):
            raise ValueError(f"align {self.align!r} does not fit {n} columns")
        for row in self.rows:
            if len(row) != n:
                raise ValueError(f"row of {len(row)} cells in a table of {n} columns")
        if self.groups and sum(span for _, span in self.groups) != n - 1:
            raise ValueError("groups must span the columns after the first")


def _md_cell(cell: Cell) -> str:
    text = cell.text.replace("|", "\\|")
    return f"**{text}**" if cell.bold and text else text


def to_markdown(table: Table, caption: bool = True) -> str:
    """The table in GitHub-flavoured Markdown, followed by its caption (unless ``caption=False``).

    Returns:
        Lines joined by ``\\n``, no trailing newline.
    """
    header = list(table.header)
    if table.groups:
        col = 1
        for title, span in table.groups:
            for j in range(col, col + span):
                header[j] = f"{title} {header[j]}".strip()
            col += span
    rule = {"l": "---", "r": "---:", "c": ":---:"}
    lines = ["| " + " | ".join(h.replace("|", "\\|") for h in header) + " |",
             "|" + "|".join(rule[a] for a in table.align) + "|"]
    sections = dict(table.sections)
    for i, row in enumerate(table.rows):
        if i in sections:
            lines.append("| " + " | ".join([f"*{sections[i]}*"] + [""] * (len(header) - 1)) + " |")
        lines.append("| " + " | ".join(_md_cell(c) for c in row) + " |")
    if caption:
        lines += ["", table.caption]
    return "\n".join(lines)


def to_latex(table: Table) -> str:
    """The table as a LaTeX ``table`` float with a booktabs ``tabular``.

    Returns:
        The LaTeX source, ending with a newline; needs ``\\usepackage{booktabs}``.
    """
    def cell(c: Cell) -> str:
        text = latex_escape(c.text)
        return rf"\textbf{{{text}}}" if c.bold and text else text

    n = len(table.header)
    caption = table.caption_tex if table.caption_tex is not None else latex_escape(table.caption.replace("*", ""))
    lines = [
        "% Generated by `metabench report`. Needs \\usepackage{booktabs} in the preamble.",
        r"\begin{table}[tbp]",
        r"  \centering",
        rf"  \caption{{{caption}}}",
        rf"  \label{{{table.label}}}",
        rf"  \begin{{tabular}}{{{table.align}}}",
        r"    \toprule",
    ]
    if table.groups:
        cells, rules, col = [""], [], 2
        for title, span in table.groups:
            cells.append(rf"\multicolumn{{{span}}}{{c}}{{{latex_escape(title)}}}" if span > 1 else latex_escape(title))
            if title:
                rules.append(rf"\cmidrule(lr){{{col}-{col + span - 1}}}")
            col += span
        lines.append("    " + " & ".join(cells) + r" \\")
        if rules:
            lines.append("    " + " ".join(rules))
    lines.append("    " + " & ".join(latex_escape(h) for h in table.header) + r" \\")
    lines.append(r"    \midrule")
    sections = dict(table.sections)
    for i, row in enumerate(table.rows):
        if i in sections:
            if i > 0:
                lines.append(r"    \midrule")
            lines.append(rf"    \multicolumn{{{n}}}{{l}}{{\emph{{{latex_escape(sections[i])}}}}} \\")
        lines.append("    " + " & ".join(cell(c) for c in row) + r" \\")
    lines += [r"    \bottomrule", r"  \end{tabular}", r"\end{table}", ""]
    return "\n".join(lines)
