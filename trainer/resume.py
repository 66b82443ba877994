"""Resuming a run from its newest valid checkpoint: the config must be the one it was written
with, history.msgpack is cut back to the checkpoint's offset (no gaps, no duplicates), and a run
with nothing to resume from starts over loudly, keeping its old history aside."""
from __future__ import annotations

import hashlib
import math
import os
import time
from typing import Optional

from trainer import setup_stages
from trainer.checkpoint.errors import CheckpointError
from trainer.fmt import duration
from trainer.history import read_history, truncate_history
from trainer.run.errors import RunError
from trainer.run.rundir import fsync_dir
from trainer.run.state import StateFile


def resume(trainer) -> bool:
    """Load the newest valid checkpoint into `trainer` (a Trainer being set up); False when there
    is none and training starts at step 0."""
    store = trainer.checkpoints.store
    newest = trainer.files.newest_checkpoint()
    if newest is not None:  # verifying it re-hashes every byte: minutes for a large model
        setup_stages.announce(trainer.event, "checkpoint", f"loading checkpoint step {newest['step']:,}",
                              step=newest["step"])
    loaded = store.load_latest()
    for path, reason in store.rejected:
        trainer.event("alert", "warning", f"rejected checkpoint {path}: {reason}", what="bad_checkpoint", path=str(path))
    if loaded is None:
        _start_over(trainer)
        return False
    ckpt, meta = loaded
    _check_config_hash(trainer, meta)
    trainer.restore(ckpt)
    threads = trainer.cfg.threads
    if ckpt.get("threads") != threads:
        trainer.event("alert", "warning", f"checkpoint was written with {ckpt.get('threads')} threads, running with "
                      f"{threads}: results will not be bit-identical", what="threads")
    written_by, size = ckpt.get("world_size", 1), trainer.world.size
    if written_by != size:
        trainer.event("alert", "warning", f"checkpoint was written by a group of {written_by} rank(s), resuming with "
                      f"{size}: the global batch and the plan are the same, but results are bit-identical to an "
                      "uninterrupted run only at a fixed world size", what="world_size", written=written_by, now=size)
    offset = _cut_history(trainer, ckpt["history_offset"])
    trainer.history.reopen()
    trainer.checkpoints.saved_at = (trainer.state.step, offset)
    trainer.checkpoints.saved_path = meta.get("path")
    lost = _count_lost_time(trainer)
    trainer.event("resume", "info", resumed_message(trainer.state.step, meta, lost), step=trainer.state.step,
                  epoch=trainer.state.epoch, path=meta.get("path"), lost_seconds=lost)
    return True


def resume_group(trainer) -> bool:
    """`resume` for every rank of a data-parallel run: rank 0 resumes from its newest checkpoint
    and sends the state to the others (trainer/distributed.py); a single process just resumes."""
    world = trainer.world
    if world.enabled:
        _check_rank_zero_is_newest(trainer)
    resumed = resume(trainer) if world.main else None
    if not world.enabled:
        return resumed
    state = world.from_main(trainer.checkpoint_state() if resumed else None)
    if state is not None and not world.main:
        trainer.restore(state)
    return state is not None


def _check_rank_zero_is_newest(trainer) -> None:
    """Rank 0 resumes the group from its own run directory. Should another box hold a newer
    checkpoint (rank 0 moved: its box was lost, and the run directories are not shared), going on
    from rank 0's would silently throw that work away: refuse, naming both."""
    newest = trainer.files.newest_checkpoint()
    steps = trainer.world.gather((newest or {}).get("step", -1))
    best = max(steps)
    if trainer.world.main and newest is None:
        _check_box_held_the_run(trainer)
    if steps[0] < best:
        owner = steps.index(best)
        raise CheckpointError(
            f"rank 0 ({trainer.world.hosts[0]}) would resume from {'step ' + str(steps[0]) if steps[0] >= 0 else 'nothing'}"
            f" but rank {owner} ({trainer.world.hosts[owner]}) holds a checkpoint at step {best}: rank 0's run directory "
            "must hold the newest checkpoint. Bring that box back into the group (rank 0 is the box whose address "
            "sorts first), or put the run directory on a file system every box shares")


def _check_box_held_the_run(trainer) -> None:
    """Rank 0 with no checkpoint and no history, on a box whose daemon saw the run get to step N:
    rank 0 was on another box, now gone from the group. Starting over here would silently throw
    the run away; it is refused."""
    try:
        seen = StateFile(trainer.run_dir).read().get("step")
    except (OSError, RunError):
        return
    if isinstance(seen, int) and seen > 0 and not trainer.files.history.exists():
        raise CheckpointError(
            f"this box ({trainer.world.hosts[0]}) is now rank 0 but holds no checkpoint: the run had reached step "
            f"{seen} with rank 0 on another box, whose run directory has the checkpoints and the history. Bring "
            "that box back into the group (rank 0 is the box whose address sorts first), or put the run "
            "directory on a file system every box shares")


def resumed_message(step: int, meta: dict, lost: float) -> str:
    """`resumed from step 1,200: checkpoint PATH (written 5m10s ago); 2m03s of training after it is
    done again`: where the run goes on from, and what the crash cost."""
    parts = [f"resumed from step {step:,}"]
    if meta.get("path"):
        written = meta.get("time")
        age = f" (written {duration(time.time() - written)} ago)" if isinstance(written, (int, float)) else ""
        parts.append(f": checkpoint {meta['path']}{age}")
    if lost >= 1.0:
        parts.append(f"; {duration(lost)} of training after it is done again")
    return "".join(parts)


def _count_lost_time(trainer) -> float:
    """Keep `elapsed` from going backwards: a checkpoint holds the training time up to itself,
    but the run had trained on after it (work a crash lost, done again now), and the user saw
    that time in the header. The newest elapsed the run's owner wrote to state.json (the daemon
    when its worker exits and every few seconds, the foreground console every 2 s) stays the
    floor: `elapsed` is the wall time spent training, lost work included, pauses not. Returns
    the seconds added."""
    try:
        seen = StateFile(trainer.run_dir).read().get("elapsed")
    except (OSError, RunError):
        return 0.0
    if not isinstance(seen, (int, float)) or isinstance(seen, bool) or not math.isfinite(seen) \
            or seen <= trainer.state.elapsed:
        return 0.0
    lost = float(seen) - trainer.state.elapsed
    trainer.state.elapsed = float(seen)
    return lost


def _check_config_hash(trainer, meta: dict) -> None:
    """Refuse to train on top of a checkpoint written under another config (an emptied or
    edited config.yaml would silently train another plan). Older checkpoints have no hash."""
    written_with, ours = meta.get("config_sha256"), trainer.config_hash
    config = trainer.files.config
    if written_with is not None and written_with != ours and written_with != _file_sha256(config):
        raise CheckpointError(
            f"{config.name} does not match the checkpoint: {config} (sha256 "
            f"{ours[:12]}) is not the config that checkpoint {meta.get('path', '')} step "
            f"{meta.get('step')} was written with (sha256 {written_with[:12]}); restore the run's "
            f"{config.name}, or start a new run for the new config")


def _file_sha256(path) -> Optional[str]:
    """The hash of config.yaml's bytes: the hash a checkpoint holds when the file is exactly the
    one the run was started with (write_config writes the dump that was hashed). A newer longhaul
    whose config has more keys (with defaults that keep the old behaviour) hashes its own dump
    differently, and must still resume a run whose file nobody changed."""
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def _start_over(trainer) -> None:
    """No valid checkpoint: training starts at step 0. If the run had progress (a history,
    rejected checkpoints) say so loudly and keep the old history aside, never truncate it."""
    run_dir, history = trainer.run_dir, trainer.history
    path = trainer.files.history
    size = path.stat().st_size if path.exists() else 0
    rejected = trainer.checkpoints.store.rejected
    if size == 0 and not rejected:
        return  # a new run
    why = (f"all {len(rejected)} checkpoint(s) were rejected: "
           + "; ".join(f"{p.name}: {r}" for p, r in rejected)) if rejected else "no checkpoint was found"
    kept = ""
    if size:
        aside = trainer.files.history_aside(time.time())
        history.close()
        os.replace(path, aside)
        fsync_dir(run_dir)
        history.reopen()
        kept = f"; the old history ({size} bytes) was kept as {aside.name}"
    trainer.event("alert", "error", f"starting over from step 0: {why}{kept}", what="starting_over",
                  reason="all_rejected" if rejected else "no_checkpoint", history_bytes=size,
                  rejected=[[str(p), r] for p, r in rejected])


def _cut_history(trainer, offset: int) -> int:
    """Cut history.msgpack back to the checkpoint's `offset`; return where it ends now.

    If the file is shorter than `offset` or a record before it is torn or undecodable (damage
    on disk, a power cut), it is cut after its last whole record instead and an alert names what
    was lost: training goes on, the rows between are gone. (history.truncate_history alone
    handles a short file, not a damaged record before the offset, and names no lost steps.)"""
    path = trainer.files.history
    reader = read_history(path)
    last_step = None
    try:
        for record in reader:
            if reader.valid_length > offset:
                break
            last_step = record["step"]
    except Exception as exc:  # e.g. the file is missing although the checkpoint recorded bytes
        reader.valid_length, reader.problem = 0, str(exc)
    good = min(reader.valid_length, offset)
    if good == offset:
        return truncate_history(path, offset)
    size = path.stat().st_size if path.exists() else 0
    if path.exists():
        truncate_history(path, good)
    first_lost = (last_step or 0) + 1
    step = trainer.state.step
    problem = f"it has {size} bytes" if size < offset else f"{reader.problem or 'a damaged record'}"
    trainer.event("alert", "warning",
                  f"history gap: {path.name} should hold {offset} bytes up to the checkpoint at step "
                  f"{step}, but {problem}; whole records end at byte {good}. The rows of "
                  f"steps {first_lost}-{step} are lost (the file is cut there); training goes on",
                  what="history_gap", path=str(path), expected_bytes=offset, file_bytes=size,
                  valid_bytes=good, lost_steps=[first_lost, step])
    return good
