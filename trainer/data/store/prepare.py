"""`longhaul prepare`: the feature store built once, in parallel, crash-safe; and store_status.

    result = prepare(cfg, workers=None, progress=None, wait=True)
    state, reason = store_status(cfg)          # "current" | "missing" | "stale"

One prepare at a time holds the store's lock for its whole run. It plans the store (plan.py: scan,
stat, shard keys), keeps every complete shard whose key is planned, computes the others in
spawned worker processes (pool.py, compute.py), records each file's outcome in the index, then
writes the splits' entries and, last, the manifest; only then are files the new manifest does not
use deleted. Killed at any instant, a re-run finds the finished shards complete and computes only
the rest; nothing half-written is ever read (layout's durable writes).
"""
from __future__ import annotations

import fcntl
import os
import shutil
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np

from ...threads import available_cores
from ..report import DataReport, Problem
from . import layout
from .layout import StoreDiskFull, StoreError, StorePaths
from .plan import Plan, bad_problems, make_plan, read_manifest_or_none, staleness, store_dir, variants_of
from .pool import ShardPool, ShardTask

Progress = Callable[[int, int], None]
"""progress(done, total): items of the store done so far, of all it is prepared from (the reused
shards' items count as done from the first call, then each one computed); progress(0, 0) every
LOCK_POLL_S while another prepare holds the store's lock. A callback that raises (PreparingReport
on a stop request) ends the prepare, or the wait, there."""
LOCK_POLL_S = 0.5


@dataclass
class PrepareResult:
    """What a prepare did. `report`: the data report (counts, bad files, warnings)."""

    store_dir: Path
    fingerprint: str
    up_to_date: bool
    computed_shards: int
    reused_shards: int
    items: int
    bad: list[tuple[str, str]] = field(default_factory=list)
    bytes: int = 0
    seconds: float = 0.0
    report: Optional[DataReport] = None
    old_files_kept: bool = False
    """A run was reading the store: the files of the older manifest were left for the next prepare."""

    def describe(self) -> str:
        size = f"{self.bytes / 2 ** 30:.2f} GiB" if self.bytes >= 2 ** 30 else f"{self.bytes / 2 ** 20:.1f} MiB"
        if self.up_to_date:
            return f"store up to date: {self.items:,} examples, {size}, {self.store_dir}"
        bad = f", {len(self.bad)} bad file(s) left out" if self.bad else ""
        if self.old_files_kept:
            bad += "; the previous version's files were kept (a run is reading it; the next prepare removes them)"
        return (f"store prepared in {self.seconds:.1f} s: {self.items:,} examples, {size}; "
                f"{self.computed_shards} shard(s) computed, {self.reused_shards} reused{bad}; {self.store_dir}")


def store_status(cfg) -> tuple[str, str]:
    """("current" | "missing" | "stale", why) from a scan, a stat of each file and the shard plan
    (nothing decoded, no shard read)."""
    paths = StorePaths(store_dir(cfg))
    if not paths.manifest.exists():
        return "missing", f"{paths.root}: no feature store yet (run `longhaul prepare`)"
    manifest = read_manifest_or_none(paths)
    if manifest is None:
        return "stale", f"{paths.manifest} is damaged: the store is prepared again"
    reason = staleness(make_plan(cfg), manifest)
    if reason:
        return "stale", reason
    return "current", f"{sum(s['items'] for s in manifest['splits'].values()):,} examples in {paths.root}"


def prepare(cfg, workers: Optional[int] = None, progress: Optional[Progress] = None,
            wait: bool = True) -> PrepareResult:
    """Bring the store of `cfg` (concrete sample_rate/duration) up to date; see the module doc."""
    started = time.monotonic()
    paths = StorePaths(store_dir(cfg))
    try:
        _make_store_dir(paths)
    except StoreError:
        # A store others prepared, on a read-only disk, is usable as long as it is current.
        plan = make_plan(cfg) if paths.manifest.exists() else None
        old = read_manifest_or_none(paths) if plan else None
        if old is None or staleness(plan, old) is not None:
            raise
        return _result(plan, old, started, up_to_date=True)
    with prepare_lock(paths, wait, progress):
        plan = make_plan(cfg)
        old = read_manifest_or_none(paths)
        if old is not None and staleness(plan, old) is None:
            return _result(plan, old, started, up_to_date=True)
        _check_noise(cfg)
        _remove_temp_files(paths)  # a killed prepare's leftovers: the lock says nobody writes them
        try:
            outcomes, computed = _shards(cfg, plan, workers, progress)
            manifest = _write_store(cfg, plan, outcomes)
        except StoreError as exc:
            raise _with_free_space(exc, paths) from None
        finally:
            _remove_temp_files(paths)
        removed = layout.remove_unreferenced(paths, manifest)
        result = _result(plan, manifest, started, up_to_date=False, computed=computed)
        result.old_files_kept = removed is None
        return result


# ----------------------------------------------------------------------------- the directory, the lock
def _make_store_dir(paths: StorePaths) -> None:
    """The store's folder (its parent must exist: a typo should not create a tree) and its dirs."""
    root = paths.root
    if not root.is_dir() and not root.parent.is_dir():
        raise StoreError(f"{root}: cannot create the feature store: folder {root.parent} does not exist")
    paths.make_dirs()
    if not os.access(root, os.W_OK | os.X_OK):
        raise StoreError(f"{root}: the feature store's folder is not writable")


@contextmanager
def prepare_lock(paths: StorePaths, wait: bool, progress: Optional[Progress] = None) -> Iterator[None]:
    """flock on the store's lock file for the whole prepare: never two writers of one store."""
    try:
        fd = os.open(paths.lock, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise StoreError(f"{paths.lock}: cannot open the store's lock file: {exc.strerror or exc}") from None
    try:
        _take_lock(fd, paths, wait, progress)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def _take_lock(fd: int, paths: StorePaths, wait: bool, progress: Optional[Progress]) -> None:
    """The lock, polled rather than waited for in flock: another prepare may hold it for hours,
    and a run waiting for it must still see a stop request (progress raises) and show it waits."""
    said = False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        if not said:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            if not wait:
                raise StoreError(f"{paths.root}: another prepare (pid {holder}) is writing this store; "
                                 "wait for it to finish, or run without --no-wait to wait")
            print(f"waiting for another prepare of {paths.root} (pid {holder}) ...", file=sys.stderr, flush=True)
            said = True
        if progress:
            progress(0, 0)
        time.sleep(LOCK_POLL_S)


def _remove_temp_files(paths: StorePaths) -> None:
    """Temp files of writes that never finished: shards, splits, and the manifest's in the root."""
    for folder in (paths.root, paths.shards, paths.splits):
        for path in folder.glob(".*") if folder.is_dir() else []:
            if StorePaths.is_temp(path):
                path.unlink(missing_ok=True)


def _with_free_space(exc: StoreError, paths: StorePaths) -> StoreError:
    """A full disk's error with the space left; any other error as it is."""
    if not isinstance(exc, StoreDiskFull):
        return exc
    try:
        free = shutil.disk_usage(paths.root).free
    except OSError:
        return exc
    kept = "" if "finished shards are kept" in str(exc) else "; the finished shards are kept"
    return type(exc)(f"{exc} ({free / 2 ** 20:.1f} MiB free on the store's disk{kept})")


def _check_noise(cfg) -> None:
    """A bad noise folder is refused before any work (each worker would fail on it)."""
    if not cfg.data.variants.count or not cfg.data.variants.noise_dir or cfg.features.kind == "image":
        return
    from ..variants import NoiseBank, NoiseError

    try:
        bank = NoiseBank.from_config(cfg)
        if bank is not None:
            bank.check()
    except NoiseError as exc:
        raise StoreError(str(exc)) from None


# ----------------------------------------------------------------------------- shards
def _shards(cfg, plan: Plan, workers: Optional[int], progress: Optional[Progress]) -> tuple[dict, int]:
    """Outcomes of every planned shard by key (complete ones read, the others computed)."""
    outcomes: dict[str, list[dict]] = {}
    todo: list[ShardTask] = []
    for tasks in plan.shards.values():
        for task in tasks:
            found = layout.read_shard_outcomes(plan.paths, task.key)
            if found is None:
                todo.append(task)
            else:
                outcomes[task.key] = found
    index = _open_index(plan.paths)
    try:
        _record(index, plan, [t for tasks in plan.shards.values() for t in tasks if t.key in outcomes], outcomes)
        if todo:
            _compute(cfg, plan, todo, outcomes, index, workers, _counting_reused(progress, plan, todo))
        _forget_gone(index, plan)
    finally:
        if index is not None:
            index.close()
    return outcomes, len(todo)


def _counting_reused(progress: Optional[Progress], plan: Plan, todo: list[ShardTask]) -> Optional[Progress]:
    """`progress` of the whole store: the items of reused shards count as done from the start, so
    that a prepare that goes on after 3 changed shards of 3,000 shows 749,232/750,000, not 0/768."""
    if progress is None:
        return None
    reused = plan.items - sum(len(task.items) for task in todo)
    return lambda done, total: progress(reused + done, reused + total)


def _compute(cfg, plan: Plan, todo: list[ShardTask], outcomes: dict, index, workers, progress) -> None:
    total = sum(len(task.items) for task in todo)
    done = 0

    def on_items(count: int) -> None:
        nonlocal done
        done += count
        if progress:
            progress(done, total)

    def on_done(task: ShardTask, found: list[dict]) -> None:
        outcomes[task.key] = found
        _record(index, plan, [task], outcomes)

    if progress:
        progress(0, total)
    with ShardPool(cfg, str(plan.paths.root), worker_count(cfg, workers, len(todo))) as pool:
        pool.run(todo, on_items, on_done)


def worker_count(cfg, workers: Optional[int], shards: int) -> int:
    """Processes to spawn: as asked (--workers, data.prepare_workers), else one per CPU this process
    may run on (cgroups, taskset), not per CPU of the host: each worker holds torch (~300 MB)."""
    return min(workers or cfg.data.prepare_workers or available_cores(), shards)


def _open_index(paths: StorePaths):
    """The dataset's index (trainer.data.index), or None when it cannot be used: it is a cache of
    outcomes, the shards' sidecars hold them too, so a damaged index does not stop a prepare."""
    from ..index import DataIndex, DataIndexError

    try:
        return DataIndex(paths.index)
    except DataIndexError as exc:
        print(f"warning: {exc}; file outcomes are not recorded in the index", file=sys.stderr, flush=True)
        return None


def _record(index, plan: Plan, tasks: list[ShardTask], outcomes: dict) -> None:
    """Each file's outcome in the index (synthetic examples have no file to describe)."""
    if index is None or not tasks or plan.recipe.get("data.source") == "synthetic":
        return
    from ..index import DataIndexError, FileRecord

    records = []
    for task in tasks:
        for item, key, out in zip(task.items, task.keys, outcomes[task.key]):
            if key.size < 0 and key.mtime_ns < 0:
                continue  # gone since the scan
            wh = out.get("wh") or (None, None)
            records.append(FileRecord(
                key.path, key.size, key.mtime_ns, task.split, plan.classes[item.label],
                "ok" if out.get("ok") else "bad", out.get("problem"), out.get("duration"), out.get("rate"),
                wh[0], wh[1]))
    try:
        index.record(records)
    except DataIndexError as exc:
        print(f"warning: {exc}; file outcomes are not recorded in the index", file=sys.stderr, flush=True)


def _forget_gone(index, plan: Plan) -> None:
    """Files no longer in the data leave the index (it describes the dataset as it is)."""
    if index is None:
        return
    from ..index import DataIndexError

    planned = {key.path for tasks in plan.shards.values() for task in tasks for key in task.keys}
    try:
        index.forget([record.path for record in index.records() if record.path not in planned])
    except DataIndexError as exc:
        print(f"warning: {exc}; files gone from the data stay in the index", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- entries, manifest
def _write_store(cfg, plan: Plan, outcomes: dict) -> dict:
    """Each split's entries and names, then the manifest; returns the manifest."""
    built = {split: _entries(tasks, outcomes) for split, tasks in plan.shards.items()}
    fp = layout.fingerprint(plan.recipe_id, plan.classes,
                            {split: (plan.keys(split), b[0]) for split, b in built.items()})
    splits, stats = {}, {}
    for split, (entries, names, bad, items) in built.items():
        variants = variants_of(cfg, split)
        files = layout.write_entries(plan.paths, fp, split, entries, names)
        counts = np.bincount(entries["label"][::variants + 1], minlength=len(plan.classes))
        splits[split] = {"shards": plan.keys(split), "items": len(names), "variants": variants, **files,
                         "counts": [int(c) for c in counts],
                         "bad": [[p.path, p.reason] for p in bad + plan.left_out.get(split, [])]}
        stats[split] = _stats(cfg, [outcomes[k] for k in plan.keys(split)])
    manifest = layout.make_manifest(fp=fp, recipe_dict=plan.recipe, kind=cfg.features.kind,
                                    row_shape=_row_shape(cfg), classes=plan.classes, splits=splits,
                                    stats=stats, total_bytes=layout.store_bytes(plan.paths))
    layout.write_manifest(plan.paths, manifest)
    return manifest


def _entries(tasks: list[ShardTask], outcomes: dict) -> tuple[np.ndarray, list[str], list[Problem], int]:
    """A split's entries (one per (kept item, variant)), kept names, bad items, all items."""
    rows: list[tuple[int, int, int, int]] = []
    names: list[str] = []
    bad: list[Problem] = []
    for shard, task in enumerate(tasks):
        found = outcomes[task.key]
        for item, out, spans in zip(task.items, found, layout.shard_rows(found)):
            if spans is None:
                bad.append(item.problem(out.get("problem") or "cannot be read"))
                continue
            names.append(item.name)
            rows += [(item.label, shard, first, count) for first, count in spans]
    entries = np.array(rows, dtype=layout.ENTRIES_DTYPE)
    return entries, names, bad, sum(len(t.items) for t in tasks)


def _row_shape(cfg) -> list[int]:
    kind = layout.row_kind(cfg.features.kind)
    if kind == "image":
        return [cfg.data.image_channels, cfg.data.image_size, cfg.data.image_size]
    return [1, cfg.features.n_mels] if kind == "mel" else [1]


def _stats(cfg, outcome_lists: list[list[dict]]) -> dict:
    """Durations before padding/cutting, how many were padded or cut, and the files' rates."""
    ok = [o for outs in outcome_lists for o in outs if o.get("ok")]
    durations = [o["duration"] for o in ok if o.get("duration") is not None]
    if not durations:
        return {"durations": None, "padded": 0, "trimmed": 0, "rates": {}}
    kept = cfg.data.windows.max_seconds if cfg.data.windows.enabled else cfg.data.duration
    rates: dict[str, int] = {}
    for o in ok:
        if o.get("rate"):
            rates[str(o["rate"])] = rates.get(str(o["rate"]), 0) + 1
    return {"durations": {"min": min(durations), "mean": sum(durations) / len(durations), "max": max(durations)},
            "padded": sum(d < cfg.data.duration for d in durations), "trimmed": sum(d > kept for d in durations),
            "rates": rates}


# ----------------------------------------------------------------------------- the result
def _result(plan: Plan, manifest: dict, started: float, up_to_date: bool, computed: int = 0) -> PrepareResult:
    bad = bad_problems(manifest)
    report = plan.report
    report.problems = report.problems + bad
    report.counts = {split: list(entry["counts"]) for split, entry in manifest["splits"].items()}
    for split, counts in report.counts.items():
        if sum(counts) == 0:
            report.problems.append(Problem(str(plan.paths.root), f"no usable {split} examples", skippable=False))
    shards = sum(len(tasks) for tasks in plan.shards.values())
    return PrepareResult(
        store_dir=plan.paths.root, fingerprint=manifest["fingerprint"], up_to_date=up_to_date,
        computed_shards=computed, reused_shards=shards - computed,
        items=sum(int(entry["items"]) for entry in manifest["splits"].values()),
        bad=[(p.path, p.reason) for p in report.problems if p.skippable],
        bytes=layout.store_bytes(plan.paths),
        seconds=time.monotonic() - started, report=report)
