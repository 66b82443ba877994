"""Export of a history file as rows (``longhaul export``): jsonl or csv."""

from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass
from typing import IO, Iterator, Optional

from trainer.history.records import EVAL, META_KEYS, TRAIN, eval_series_name, read_history


@dataclass
class ExportReport:
    """What an export read: the rows written and, for a torn or corrupt tail, where it stopped."""

    rows: int = 0
    torn: bool = False
    valid_length: int = 0
    problem: Optional[str] = None


EXPORT_LEADING = ("step", "epoch", "phase", "time", "kind")
"""First columns of every export, in this order (``kind`` last of them, so the columns that came
before it keep their places); then the train metrics, then the ``val_*`` eval metrics, each
group in the order the history first shows them."""


def export_rows(path: str | os.PathLike, report: Optional[ExportReport] = None) -> Iterator[dict]:
    """One row per train or eval record of the history, in file order, for ``longhaul export``.

    Each row starts with step, epoch, phase, time and ``kind`` ("train" or "eval"), then the
    record's scalar fields: train metrics as named (train_loss, lr, ...), eval metrics in the
    ``val_`` namespace (see :func:`eval_series_name`). An evaluation is its own row, never merged
    into the train row of the same step. Lists and maps (per_class, confusion) are left out.
    """
    reader = read_history(path)
    for record in reader:
        kind = record["kind"]
        if kind not in (TRAIN, EVAL):
            continue
        row = {key: record[key] for key in EXPORT_LEADING if key in record}
        for key, value in record.items():
            if key in META_KEYS or isinstance(value, (list, dict, bytes)):
                continue
            row[key if kind == TRAIN else eval_series_name(key)] = value
        yield row
    if report is not None:  # a torn tail ends the rows early: the caller must say so
        report.torn, report.valid_length, report.problem = reader.torn, reader.valid_length, reader.problem


def write_export(path: str | os.PathLike, out: IO[str], fmt: str, report: Optional[ExportReport] = None) -> int:
    """Write :func:`export_rows` to ``out`` as ``jsonl`` or ``csv``; return the number of rows.

    jsonl writes NaN/inf as null (strict JSON). csv needs every column name before the first
    row, so it reads the history twice; its header is ``EXPORT_LEADING``, then the train
    columns, then the ``val_*`` columns; cells a row lacks are empty (an eval row has no
    train_loss, a train row no val_loss). ``report`` (if given) gets
    the row count and whether the file ended in a torn record.
    """
    count = _write_export(path, out, fmt, report)
    if report is not None:
        report.rows = count
    return count


def _write_export(path: str | os.PathLike, out: IO[str], fmt: str, report: Optional[ExportReport]) -> int:
    if fmt == "jsonl":
        count = 0
        for row in export_rows(path, report):
            clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}
            out.write(json.dumps(clean) + "\n")
            count += 1
        return count
    if fmt == "csv":
        train: dict[str, None] = {}
        evals: dict[str, None] = {}
        for row in export_rows(path):
            (train if row["kind"] == TRAIN else evals).update(dict.fromkeys(row))
        columns = dict.fromkeys(EXPORT_LEADING) | train | evals
        writer = csv.DictWriter(out, fieldnames=list(columns), restval="")
        writer.writeheader()
        count = 0
        for row in export_rows(path, report):
            writer.writerow(row)
            count += 1
        return count
    raise ValueError(f"export format must be 'jsonl' or 'csv', got {fmt!r}")
