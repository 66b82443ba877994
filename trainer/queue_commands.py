"""The CLI of the run queue (trainer/run/queue.py): `start --queue [--after RUN]` and
`longhaul queue [show|move|remove|pause|resume|slots]`. Torch-free; the daemons are started by
trainer.daemon.launch.start_queued.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Optional

from trainer.fmt import duration
from trainer.run import queue
from trainer.run.locate import resolve_run
from trainer.run.queue_eta import queue_etas
from trainer.run.status import status as run_status


def start_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--queue", action="store_true", help="add the run to the queue instead of starting it now "
                   "(it starts when a slot is free: `longhaul queue`)")
    p.add_argument("--after", action="append", default=[], metavar="RUN",
                   help="queue the run after RUN has finished (repeatable; implies --queue)")


def queue_new_run(run_dir: Path, root: Path, after: list[str]) -> int:
    """`start --queue`: `run_dir` (its config written) joins the queue; the queue then advances."""
    from trainer.daemon.launch import start_queued

    waits_for = [resolve_run(name, root) for name in after]  # an unknown RUN is an error, before anything
    position = queue.enqueue(root, run_dir, [str(p) for p in waits_for])
    started = dict(start_queued(root))
    if run_dir.absolute() in started:
        error = started[run_dir.absolute()]
        if error:
            print(f"queued {run_dir.name}, which could not start: {error}", file=sys.stderr)
            return 1
        print(f"queued {run_dir.name}: a slot was free, it started")
        return 0
    info = run_status(run_dir)["queue"] or {}
    why = info.get("held") or info.get("waiting") or "waits for a free slot"
    print(f"queued {run_dir.name} at position {position}: {why}\n  queue:  longhaul queue")
    return 0


def start_pipelines(args, cfg, root: Path) -> int:
    """`start CONFIG` of a config with `pipelines:`: one queued run per pipeline, then a
    comparison (trainer/pipelines.py). Every pipeline's config is checked before anything is made."""
    from trainer import pipelines
    from trainer.daemon.launch import start_queued

    if getattr(args, "run_dir", None):
        raise pipelines.ConfigError(str(args.config), [("pipelines", "makes one run per pipeline: give --name, "
                                                                     "not --run-dir")])
    name = args.name or cfg.name
    waits_for = [str(resolve_run(run, root)) for run in args.after]
    members = pipelines.expand(Path(args.config), args.set or [], name)
    group, run_dirs = pipelines.create_group(root, name, members, str(Path(args.config).absolute()))
    for run_dir in run_dirs:
        pipelines.mark_member(run_dir, group)
        queue.enqueue(root, run_dir, waits_for)
    started = [run_dir.name for run_dir, error in start_queued(root) if not error]
    print(f"queued {len(run_dirs)} pipelines of {name}: {', '.join(p.name for p in run_dirs)}"
          + (f" ({', '.join(started)} started)" if started else "")
          + f"\n  queue:   longhaul queue\n  compare: {group / pipelines.COMPARE_HTML} once all have ended "
            f"(`longhaul status {name}`)")
    return 0


def register(sub) -> None:
    p = sub.add_parser("queue", help="the run queue: order, state and ETA of queued runs; move, remove, pause")
    p.add_argument("--json", action="store_true", help="one JSON object")
    actions = p.add_subparsers(dest="queue_action", metavar="ACTION")
    actions.add_parser("show", help="the queue (the default)")
    move = actions.add_parser("move", help="put a queued run at a position (1: next)")
    move.add_argument("run")
    move.add_argument("position", type=int)
    actions.add_parser("remove", help="take a queued run out of the queue (its directory goes)").add_argument("run")
    for name, text in (("pause", "pass over a queued run (no RUN: start nothing from the queue)"),
                       ("resume", "let a paused queued run (no RUN: the queue) go on")):
        actions.add_parser(name, help=text).add_argument("run", nargs="?")
    actions.add_parser("slots", help="runs training at once on this box (default 1)").add_argument("count", type=int)
    p.set_defaults(func=cmd_queue)


def cmd_queue(args) -> int:
    from trainer.cli import runs_root_arg
    from trainer.daemon.launch import start_queued

    root = runs_root_arg(args).absolute()
    action = args.queue_action or "show"
    run_dir = resolve_run(args.run, root) if getattr(args, "run", None) else None
    if action == "move":
        print(f"{run_dir.name} is now at position {queue.move(root, run_dir, args.position)}")
    elif action == "remove":
        queue.remove(root, run_dir)
        print(f"removed {run_dir.name} from the queue (and its directory: it never trained)")
    elif action in ("pause", "resume"):
        queue.set_paused(root, action == "pause", run_dir)
        print(f"{'paused' if action == 'pause' else 'resumed'} {run_dir.name if run_dir else 'the queue'}")
    elif action == "slots":
        queue.set_slots(root, args.count)
        print(f"{args.count} slot(s): up to {args.count} run(s) train at once")
    if action != "show":
        for started, error in start_queued(root):
            print(f"started {started.name}" if not error else f"{started.name} did not start: {error}")
    code = show_queue(root, args.json)
    if action != "show":  # the user has seen the rebuild, and acted on the queue since
        queue.acknowledge_rebuild(root)
    return code


def show_queue(root: Path, as_json: bool) -> int:
    current = queue.settled(root)
    rows = queue_rows(current)
    if as_json:
        print(json.dumps({"root": str(root), "slots": current.slots, "paused": current.paused,
                          "rebuilt": current.rebuilt, "runs": rows}))
        return 0
    header = f"queue of {root}: {current.slots} slot(s)" + (", paused" if current.paused else "")
    print(header)
    if current.rebuilt:
        print(rebuild_note(current.rebuilt))
    if not rows:
        print("  (empty)")
        return 0
    print(f"  {'#':>3} {'RUN':24} {'STATE':8} {'STARTS':>9} {'TAKES':>9}  WHY")
    for row in rows:
        print(f"  {row['position']:>3} {row['name'][:24]:24} {row['status']:8} {_eta(row['starts_in']):>9} "
              f"{_eta(row['takes']):>9}  {row['why'] or ''}")
    return 0


def rebuild_note(rebuilt: dict) -> str:
    """What `longhaul queue` says of a queue rebuilt from the run directories, until the user's
    next queue command."""
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(rebuilt.get("time") or 0))
    kept = rebuilt.get("damaged_copy")
    return (f"  note: {rebuilt.get('problem')}: rebuilt at {when} from the queued runs' state.json (order, pauses, "
            f"slots kept)" + (f"; the damaged file is kept as {kept}" if kept else "")
            + "\n  (said until your next `longhaul queue` command that changes the queue)")


def queue_rows(current: queue.Queue) -> list[dict]:
    """One row per queued run: position, name, status (queued, held, paused), the reason and its ETA."""
    etas = queue_etas(current)
    rows = []
    for index, entry in enumerate(current.entries):
        verdict = queue.judge(entry)
        status = "held" if verdict.held else "paused" if entry.paused else "queued"
        eta = etas.get(entry.run) or {}
        rows.append({"position": index + 1, "name": Path(entry.run).name, "dir": entry.run, "status": status,
                     "after": [Path(a).name for a in entry.after], "why": verdict.held or verdict.waiting,
                     "starts_in": eta.get("starts_in"), "takes": eta.get("takes")})
    return rows


def _eta(seconds: Optional[float]) -> str:
    return duration(seconds) if seconds is not None else "-"
