"""``metabench data``: list the datasets and where their files are, download them, verify them.

Built only on the registry :data:`metabench.datasets.DATASETS`: each entry's ``partitions`` and
``images_per_class`` give the sizes, and its ``locate`` / ``download`` / ``verify`` functions do
the work; entries without them (``load`` and ``locate`` None) are generated data, with nothing to
download. Every failure is a :class:`~metabench.errors.DataError` (or ConfigError for an unknown
name), which the command line prints as one line ``metabench: error: ...`` with exit status 2.
"""

from __future__ import annotations

import argparse
import os

from metabench.datasets import DATASETS, DatasetInfo, Located, dataset_info, resolve_data_root

__all__ = ["add_arguments", "download", "list_text", "main", "verify"]

_STATUS = {"found": "found", "missing": "not found", "bundled": "bundled", "generated": "generated"}
_GENERATED = "generated, nothing to download"


def _root_origin(data_root: str | os.PathLike[str] | None) -> str:
    """Which setting chose the data root (see :func:`resolve_data_root`)."""
    if data_root is not None and os.fspath(data_root) != "":
        return "--data-root"
    if os.environ.get("METABENCH_DATA"):
        return "METABENCH_DATA"
    return "default: the per-user cache; change it with --data-root or METABENCH_DATA"


def _located(info: DatasetInfo, data_root: str | os.PathLike[str] | None) -> Located:
    if info.locate is None:
        return Located("generated", _GENERATED)
    return info.locate(data_root)


def _rows(info: DatasetInfo, status: str) -> list[list[str]]:
    """Table rows of one dataset: one per split, the dataset's columns on the first only."""
    image = (f"{info.channels}x{info.image_size}x{info.image_size}" if info.image_size else "-")
    per_class = str(info.images_per_class) if info.images_per_class else "-"
    rows = []
    for i, split in enumerate(info.splits or ("-",)):
        counts = info.partitions.get(split)
        classes = "/".join(map(str, counts)) if counts else "-"
        head = [info.name, info.kind] if i == 0 else ["", ""]
        tail = [per_class, image, _STATUS[status]] if i == 0 else ["", "", ""]
        rows.append(head + [split + (" (default)" if i == 0 and len(info.splits) > 1 else ""),
                            classes] + tail)
    return rows


def list_text(data_root: str | os.PathLike[str] | None = None) -> str:
    """The text ``metabench data list`` prints: a table of every registered dataset (splits,
    classes per partition, images per class, default image size, status), then one line per
    dataset saying where its files are or how to get them.

    Args:
        data_root: the ``--data-root`` option (see :func:`resolve_data_root`).

    Returns:
        Multi-line text without a trailing newline.
    """
    root = resolve_data_root(data_root)
    located = {name: _located(info, data_root) for name, info in DATASETS.items()}
    header = ["dataset", "kind", "split", "classes train/val/test", "images/class",
              "image CxHxW", "status"]
    rows = [row for name, info in DATASETS.items() for row in _rows(info, located[name].status)]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [f"data root: {root} ({_root_origin(data_root)})", ""]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *rows]]
    lines.append("")
    for name, where in located.items():
        prefix = "" if where.status == "generated" else f"{_STATUS[where.status]}: "
        lines.append(f"{name}: {prefix}{where.detail}")
    return "\n".join(lines)


def download(name: str, data_root: str | os.PathLike[str] | None = None) -> str:
    """``metabench data download NAME``: fetch the dataset's missing files (checksums checked).

    Returns:
        A one-line summary of what is where now.

    Raises:
        ConfigError: for an unknown dataset.
        DataError: if the download fails (nothing partial is left behind) or the dataset has no
            download (miniImageNet: the message says where to get it).
    """
    info = dataset_info(name)
    if info.download is None:
        return f"{name}: {_GENERATED}"
    return info.download(data_root)


def verify(name: str, data_root: str | os.PathLike[str] | None = None) -> str:
    """``metabench data verify NAME``: check the dataset's checksums and structure.

    Returns:
        A one-line summary of what was checked.

    Raises:
        ConfigError: for an unknown dataset.
        DataError: naming the first problem (missing, unreadable, corrupt, not the official
            files, wrong structure); never downloads.
    """
    info = dataset_info(name)
    if info.verify is None:
        return f"{name}: generated, nothing to verify"
    return info.verify(data_root)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``list`` / ``download`` / ``verify`` subcommands to the ``data`` parser."""
    sub = parser.add_subparsers(dest="data_command", required=True)
    names = ", ".join(DATASETS)
    root_help = "folder holding the datasets (default $METABENCH_DATA, then the user cache)"
    lister = sub.add_parser("list", help="every dataset, its splits and sizes, and where it is")
    lister.add_argument("--data-root", help=root_help)
    for command, text in (("download", "download a dataset's files (checksums verified)"),
                          ("verify", "check a dataset's checksums and structure")):
        p = sub.add_parser(command, help=text, description=text)
        p.add_argument("name", metavar="NAME", help=f"dataset: {names}")
        p.add_argument("--data-root", help=root_help)


def main(args: argparse.Namespace) -> None:
    """Run the subcommand chosen in ``args`` (from :func:`add_arguments`) and print its result.

    Raises:
        ConfigError, DataError: as :func:`download` and :func:`verify`.
    """
    if args.data_command == "list":
        print(list_text(args.data_root))
    elif args.data_command == "download":
        print(download(args.name, args.data_root))
    else:
        print(verify(args.name, args.data_root))
