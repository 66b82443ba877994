"""Metric history: an append-only msgpack file of records, and bounded downsampled series of it.

One module per concern:

- :mod:`~trainer.history.records`: the file format (HistoryWriter, read_history, truncate_history,
  check_record); record shapes in docs/ARCHITECTURE.md, "History records".
- :mod:`~trainer.history.smoothing`: the EMA of the train loss (LossSmoother, vectorised ema).
- :mod:`~trainer.history.downsample`: Downsampler, at most ``max_points`` buckets per series,
  each keeping the mean, min and max of the raw points it stands for.
- :mod:`~trainer.history.series`: SeriesSet, every metric of a run plus the last and best eval.
- :mod:`~trainer.history.layout` and :mod:`~trainer.history.load`: load_series, which builds a
  SeriesSet from a big file quickly by reading runs of identically laid-out train records with
  numpy instead of decoding each map in Python.
- :mod:`~trainer.history.cache`: load_summary through ``series-cache.msgpack``.
- :mod:`~trainer.history.export`: export_rows / write_export (``longhaul export``).
- :mod:`~trainer.history.tail`: the newest records read from the end of the file (``ls``'s samples/s).

Imported by the TUI: stdlib and msgpack at import time; numpy only inside the bulk paths.
"""

import importlib

#: Where each public name lives. Submodules load on first use (PEP 562): `longhaul ls` reads the
#: tail of each history through `tail` alone, without paying ~20 ms for the bulk loader.
_EXPORTS = {
    "cache": ("SeriesSummary", "load_summary"),
    "downsample": ("DEFAULT_MAX_POINTS", "Downsampler"),
    "export": ("EXPORT_LEADING", "ExportReport", "export_rows", "write_export"),
    "load": ("load_series",),
    "records": ("EVAL", "META_KEYS", "TRAIN", "HistoryError", "HistoryReader", "HistoryWriter", "check_record",
                "eval_series_name", "read_history", "truncate_history"),
    "series": ("SMOOTH_KEY", "SeriesSet"),
    "smoothing": ("DEFAULT_SMOOTHING", "LossSmoother", "ema"),
}
_HOME = {name: module for module, names in _EXPORTS.items() for name in names}


def __getattr__(name: str):
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


__all__ = [
    "DEFAULT_MAX_POINTS", "DEFAULT_SMOOTHING", "EVAL", "EXPORT_LEADING", "META_KEYS",
    "SMOOTH_KEY", "TRAIN", "Downsampler", "ExportReport", "HistoryError", "HistoryReader",
    "HistoryWriter", "LossSmoother", "SeriesSet", "SeriesSummary", "check_record", "ema",
    "eval_series_name", "export_rows", "load_series", "load_summary", "read_history",
    "truncate_history", "write_export",
]
