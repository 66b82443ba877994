"""`longhaul resume RUN --from DIR`: a run whose own directory was lost (or holds no valid
checkpoint) brought back from its replica (trainer/run/replica.py), then resumed as usual.

The replica's checkpoints are verified again; the valid ones and the run's files are copied into
a temp directory next to the run directory, fsynced, and renamed into place in one step, so a
crash leaves either no run directory or a whole one. A run directory that is there with a valid
checkpoint is refused (`force` puts it aside instead); one without is kept aside, never deleted.
No torch.
"""
from __future__ import annotations

import os
import secrets
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from trainer.run import registry
from trainer.run.errors import RunError
from trainer.run.locate import check_run_name
from trainer.run.manifest import verify
from trainer.run.replica import (TMP_PREFIX, BadCheckpoint, copy_checkpoint, copy_file, is_replica, local_steps,
                                 owner_id)
from trainer.run.rundir import RunDir, atomic_write_bytes, fsync_dir, is_run_dir, make_run_dir
from trainer.run.state import FINAL_STATES, LIVE_STATES, StateFile, effective_state


@dataclass
class Restored:
    """What `restore` did: the run directory, the newest checkpoint step, what was skipped and
    where an old run directory was put aside (None when there was none)."""

    run_dir: Path
    step: int
    skipped: list[tuple[int, str]]
    aside: Optional[Path]


def replica_dir(source: Path, name: str) -> Path:
    """The replica of run `name`: `source` itself when it is a run's copy, else `source/name`."""
    source = Path(source).expanduser().absolute()
    for candidate in (source, source / name):
        if is_run_dir(candidate) and is_replica(candidate):
            return candidate
    for candidate in (source, source / name):
        if is_run_dir(candidate):  # a run, not a replica: handing it over would break that run
            raise RunError(f"{candidate} is a run directory, not a replica (no {RunDir(candidate).replica_origin.name}); "
                           "--from takes the checkpoint.replicate_to.dir the run was copied to")
    raise RunError(f"no replica of run {name!r} in {source}: neither it nor {source / name} holds a "
                   "run's config.yaml or state.json")


def restore(replica: Path, run_dir: Path, force: bool = False) -> Restored:
    """Copy the replica `replica` (a run directory's copy) to `run_dir` (see the module docstring).
    RunError saying why when it cannot or must not."""
    run_dir = Path(run_dir).absolute()
    valid, skipped = _valid_steps(RunDir(replica))
    if not valid:
        why = "; ".join(f"step {s}: {r}" for s, r in skipped) or "it holds no checkpoint"
        raise RunError(f"the replica {replica} has no valid checkpoint to resume from ({why})")
    aside = _clear_the_way(run_dir, force)
    tmp = run_dir.parent / f"{TMP_PREFIX}restore-{run_dir.name}-{secrets.token_hex(4)}"
    try:
        make_run_dir(tmp)
        _copy_run(RunDir(replica), RunDir(tmp), valid)
        _mark_restored(tmp, replica)
        os.rename(tmp, run_dir)
        fsync_dir(run_dir.parent)
    except OSError as exc:
        _undo(tmp, aside, run_dir)
        raise RunError(f"restoring {run_dir} from {replica} failed: {exc.strerror or exc}"
                       f"{f' ({exc.filename})' if exc.filename else ''}; {run_dir} is as it was") from None
    except BaseException:
        _undo(tmp, aside, run_dir)
        raise
    registry.register(run_dir)
    _hand_over(RunDir(replica), run_dir)
    return Restored(run_dir, valid[-1], skipped, aside)


def _undo(tmp: Path, aside: Optional[Path], run_dir: Path) -> None:
    """A restore that failed: its temp copy removed, the run directory it put aside put back."""
    shutil.rmtree(tmp, ignore_errors=True)
    if aside is not None and not os.path.lexists(run_dir):
        os.rename(aside, run_dir)


def _valid_steps(replica: RunDir) -> tuple[list[int], list[tuple[int, str]]]:
    """The replica's checkpoints that verify (every byte re-hashed), and (step, reason) of the others."""
    valid, skipped = [], []
    for step in local_steps(replica):
        try:
            _, problem = verify(replica.checkpoint(step), step)
        except OSError as exc:
            problem = f"unreadable: {exc.strerror or exc}"
        if problem is None:
            valid.append(step)
        else:
            skipped.append((step, problem))
    return valid, skipped


def _clear_the_way(run_dir: Path, force: bool) -> Optional[Path]:
    """Put an existing `run_dir` aside (`NAME.before-restore-<time>`) when it may be replaced:
    never a live run; one with a valid checkpoint only with `force`. Returns where it went."""
    if not os.path.lexists(run_dir):
        return None
    if is_run_dir(run_dir):
        state = effective_state(run_dir)
        if state not in FINAL_STATES and state != "interrupted":
            raise RunError(f"{run_dir} is {state}: a live run is never replaced; stop it first")
        valid, _ = _valid_steps(RunDir(run_dir))
        if valid and not force:
            raise RunError(f"{run_dir} exists and has a valid checkpoint (step {valid[-1]:,}): resume it "
                           "without --from, or add --force to put it aside and restore the replica")
    aside = run_dir.with_name(f"{run_dir.name}.before-restore-{int(time.time())}")
    os.rename(run_dir, aside)
    return aside


def _copy_run(replica: RunDir, target: RunDir, steps: list[int]) -> None:
    """Every file of the replica's top level, then the valid checkpoints (each verified again)."""
    for entry in os.scandir(replica.path):
        if entry.is_file(follow_symlinks=False) and not entry.name.startswith(TMP_PREFIX) \
                and entry.name != replica.replica_origin.name:
            copy_file(Path(entry.path), target.path / entry.name)
    os.mkdir(target.checkpoints, 0o700)
    for step in steps:
        try:
            copy_checkpoint(replica.checkpoint(step), target.checkpoint(step), step)
        except BadCheckpoint as exc:  # it verified in the replica a moment ago: this disk is bad
            raise RunError(f"the copy of checkpoint step {step:,} in {target.path} does not match its "
                           f"manifest: {exc}") from None
    fsync_dir(target.checkpoints)
    fsync_dir(target.path)


def _hand_over(replica: RunDir, run_dir: Path) -> None:
    """The replica now copies the restored run, wherever it was put (best effort: a read-only
    replica only means its next sync asks for another directory)."""
    try:
        atomic_write_bytes(replica.replica_origin, f"{owner_id(run_dir)}\n".encode())
    except OSError:
        pass


def _mark_restored(run_dir: Path, replica: Path) -> None:
    """The copied state.json belongs to a daemon that is gone (the replica copied it while that
    daemon ran): a live state becomes `interrupted`, with no pid or socket, so `resume` restarts
    it; a final state (stopped, finished, failed) stays. The replica it came from is recorded."""
    state = StateFile(run_dir)
    fields = {"restored_from": str(replica), "restored_at": time.time()}
    if (state.read_or_rebuild().get("state") or "stopped") in LIVE_STATES:
        fields.update(state="interrupted", pid=None, socket=None)
    state.update(**fields)


def restore_target(run: str, root: Path) -> Path:
    """Where `resume RUN --from` puts the run back: the path RUN names, else the run directory
    the registry remembers under that name (its own place, even though it is gone), else
    `root/RUN`."""
    if "/" in run:
        return Path(run).expanduser().absolute()
    check_run_name(run)
    under_root = Path(root) / run
    remembered = [p for p in registry.registered() if p.name == run]
    if os.path.lexists(under_root) or not remembered:
        return under_root.absolute()
    if len(remembered) > 1:
        raise RunError(f"several registered runs are named {run!r}: {', '.join(map(str, remembered))}; "
                       "give the directory to restore instead")
    return remembered[0]
