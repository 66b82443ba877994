"""The `longhaul` command.

Heavy modules (torch, the engine, textual) are imported inside the command that needs them, so
`longhaul ls` and `longhaul status` answer at once on a loaded training box.
"""
from __future__ import annotations

import argparse
import errno
import json
import os
import shlex
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Optional

from trainer import ssh
from trainer.fmt import MISSING, best_text, duration, samples_rate
from trainer import queue_commands
from trainer.posthoc import commands as posthoc_commands
from trainer.run import registry
from trainer.run.errors import RunError, RunExists
from trainer.run.cv import find_cv
from trainer.run.cv_status import cv_status, format_cv_status
from trainer.run.locate import create_run_dir, resolve_run, runs_root
from trainer.run.rundir import RunDir, apply_umask, atomic_write_bytes, is_run_dir, make_run_dir
from trainer.run.state import LIVE_STATES, MAX_LAUNCH_FAILURES, effective_state
from trainer.run.status import SORTS, list_runs, ordered, state_label, status as run_status


def _load(args, check_model: bool = True):
    from trainer.config import load_config

    return load_config(args.config, overrides=[*(args.set or []), *distributed_overrides(args)],
                       check_model=check_model)


def distributed_overrides(args) -> list[str]:
    """`start --nodes/--procs-per-node/--rdzv/--max-restarts/--min-nodes` as `distributed.*`
    overrides: the run's config.yaml keeps them, so a resume runs the same group."""
    keys = {"nodes": "nodes", "procs_per_node": "procs_per_node", "rdzv": "rdzv", "max_restarts": "max_restarts",
            "min_nodes": "min_nodes", "local_addr": "local_addr", "interface": "interface"}
    return [f"distributed.{key}={getattr(args, name)}" for name, key in keys.items()
            if getattr(args, name, None) is not None]


def distributed_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data-parallel training (torch.distributed under torchrun; see docs/DISTRIBUTED.md)")
    g.add_argument("--nodes", type=int, help="boxes in the run; each runs this same start (distributed.nodes)")
    g.add_argument("--procs-per-node", type=int, help="training processes on this box (distributed.procs_per_node)")
    g.add_argument("--rdzv", metavar="HOST:PORT", help="the rendezvous every box names (distributed.rdzv)")
    g.add_argument("--max-restarts", type=int, help="group restarts by torchrun's agent (distributed.max_restarts)")
    g.add_argument("--min-nodes", type=int, help="elastic: go on with this many boxes (distributed.min_nodes)")
    g.add_argument("--local-addr", help="this box's address as the others reach it (distributed.local_addr)")
    g.add_argument("--interface", help="network interface for the gradients (distributed.interface)")


def _print_config_warnings(cfg, args) -> None:
    """Settings that are valid but likely not meant (config.config_warnings), once, on stderr."""
    from trainer.config import config_warnings

    for key, reason in config_warnings(cfg):
        print(f"longhaul {args.cmd}: warning: {args.config}: {key}: {reason}", file=sys.stderr, flush=True)


def _run_dir_for(args, cfg, command: str) -> tuple[Path, bool]:
    """The run directory `start`/`train` will use, and whether this command created it.

    `--run-dir` naming an existing run directory is refused by `start` (it would silently keep
    the old config and relaunch the old run) and by `train` unless the config is the same as
    the one stored there (that is how a foreground run is resumed)."""
    if not args.run_dir:
        return create_run_dir(runs_root_arg(args), args.name or cfg.name), True
    run_dir = Path(args.run_dir).expanduser().absolute()
    try:
        existing = is_run_dir(run_dir)
        created = not run_dir.exists()
        if not existing:
            make_run_dir(run_dir, exist_ok=True)  # an empty (or foreign) directory is fine
    except OSError as exc:
        raise RunError(f"cannot create the run directory {run_dir}: {exc.strerror or exc}") from None
    if existing and command == "start":
        state = effective_state(run_dir)
        raise RunExists(
            f"{run_dir} is already a run directory (state: {state}); its own config.yaml is what it runs, so "
            f"a new config is not applied there. To continue it: `{longhaul_command()} resume {shlex.quote(str(run_dir))}`; "
            f"to start this config: give a new --run-dir")
    if existing:
        _check_same_config(run_dir, cfg, args)
    return run_dir, created


def _check_same_config(run_dir: Path, cfg, args) -> None:
    """Refuse `train --run-dir` with another config than the run's own config.yaml."""
    import yaml

    from trainer.config import dump_config

    path = RunDir(run_dir).config
    if not path.exists():
        return  # a state.json only: the config is written now
    try:
        stored = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        stored = None
    if stored == yaml.safe_load(dump_config(cfg)):
        return
    what = "is empty or unreadable" if not isinstance(stored, dict) else \
        f"differs from {args.config}{' with --set' if args.set else ''}"
    raise RunExists(
        f"{run_dir} already holds a run whose config {path} {what}. To resume that run: "
        f"`{longhaul_command()} train {shlex.quote(str(path))} --run-dir {shlex.quote(str(run_dir))}`; to train this config: "
        f"give a new --run-dir")


def _remove_if_unused(run_dir: Path) -> None:
    """Undo a run directory this command created, when nothing ran in it (only its config)."""
    try:
        config = RunDir(run_dir).config
        if set(os.listdir(run_dir)) <= {config.name}:
            config.unlink(missing_ok=True)
            run_dir.rmdir()
            registry.unregister(run_dir)
    except OSError:
        pass


def runs_root_arg(args) -> Path:
    return Path(args.root) if getattr(args, "root", None) else runs_root()


def write_config(run_dir: Path, cfg) -> None:
    """The resolved config is the run's own copy: later edits of the source YAML change nothing.
    Written atomically and fsynced with its directory: a resume after a power cut reads it."""
    from trainer.config import dump_config

    path = RunDir(run_dir).config
    if not path.exists():
        atomic_write_bytes(path, dump_config(cfg).encode())


def longhaul_command() -> str:
    """How to run this longhaul again in a hint a person copies: `longhaul` when that name on
    PATH is this very entry point, else the entry point's full path (a venv not activated), else
    `PYTHON -m trainer.cli` (run from a source tree); shell-quoted."""
    entry = None
    argv0 = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    for candidate in (argv0, Path(sys.executable).parent / "longhaul"):
        if candidate is not None and candidate.name == "longhaul" and candidate.is_file():
            entry = candidate.absolute()
            break
    if entry is None:
        return f"{shlex.quote(sys.executable)} -m trainer.cli"
    on_path = shutil.which("longhaul")
    try:
        if on_path and os.path.samefile(on_path, entry):
            return "longhaul"
    except OSError:
        pass
    return shlex.quote(str(entry))


def address(run_dir: Path) -> str:
    """How to name `run_dir` on a command line: its name when that finds it, else its path;
    shell-quoted either way."""
    try:
        if resolve_run(run_dir.name) == run_dir.absolute():
            return shlex.quote(run_dir.name)
    except RunError:
        pass
    return shlex.quote(str(run_dir))


# ----------------------------------------------------------------------------- train
def cmd_train(args) -> int:
    """Train in the foreground; Ctrl-C checkpoints and stops (run `longhaul train` again with
    --run-dir to resume)."""
    import queue

    from trainer.config import ConfigError, load_config
    from trainer.console import ConsolePublisher
    from trainer.engine import Trainer

    cfg = _load(args)
    _print_config_warnings(cfg, args)
    if cfg.distributed.enabled:
        raise ConfigError(str(args.config), [("distributed", f"world size {cfg.distributed.world_size}: a data-parallel "
                                             "run is started by `longhaul start` (its daemon runs torchrun); "
                                             "`train` runs one process")])
    run_dir, created = _run_dir_for(args, cfg, "train")
    try:
        write_config(run_dir, cfg)
    except BaseException:
        if created:
            _remove_if_unused(run_dir)
        raise
    registry.register(run_dir)
    cfg = load_config(RunDir(run_dir).config)  # train exactly what the run directory says
    controls: queue.SimpleQueue = queue.SimpleQueue()

    def request_stop(signum, _frame):
        print(f"\n{signal.Signals(signum).name}: checkpointing and stopping at the next step...", flush=True)
        controls.put((-1, "stop"))

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    from trainer.console import DecodeProgressLine, install_log_handler
    from trainer.data import DECODING

    install_log_handler()
    publisher = ConsolePublisher(run_dir, cfg.name or run_dir.name, quiet=args.quiet)
    publisher.started()
    try:
        with DECODING.watch(DecodeProgressLine()):  # only the set-up decodes up front
            final = Trainer(cfg, run_dir, publisher, controls, accept_data_change=args.accept_data_change).run()
    except BaseException as exc:
        publisher.failed(exc)
        raise
    finally:  # a foreground run took a slot of the box's queue as a daemon's does: it moves on now
        from trainer.daemon.launch import advance_queues

        advance_queues(run_dir, extra_roots=(runs_root_arg(args),))
    print(f"{final}: {run_dir}")
    return 0 if final in ("finished", "stopped") else 1


def cmd_check_data(args) -> int:
    from trainer.data import check_data

    from trainer.console import DecodeProgressLine
    from trainer.data import DECODING

    cfg = _load(args, check_model=False)
    _print_config_warnings(cfg, args)
    with DECODING.watch(DecodeProgressLine()):
        report = check_data(cfg)
    print(report.to_text())
    return 0 if report.ok else 1


def cmd_prepare(args) -> int:
    """Build or bring up to date the config's feature store; its path is the last line of stdout."""
    from trainer.console import PrepareProgressLine
    from trainer.data.store.prepare import prepare
    from trainer.data.stored import resolve_auto  # the run's own: prepare and train plan one recipe

    cfg = _load(args, check_model=False)
    _print_config_warnings(cfg, args)
    try:
        result = prepare(resolve_auto(cfg, None)[0], workers=args.workers, progress=PrepareProgressLine(),
                         wait=not args.no_wait)
    except KeyboardInterrupt:
        print("\nlonghaul prepare: interrupted; the finished shards are kept: run it again to go on",
              file=sys.stderr)
        return 130
    report = result.report
    if report is not None and report.problems:
        print(report.to_text())
    print(result.describe())
    print(result.store_dir)
    return 0 if report is None or report.usable else 1


def cmd_status(args) -> int:
    target = ssh.parse_target(args.run)
    parent = None if target else find_cv(args.run, runs_root_arg(args))
    if parent is not None:  # a cross-validation: its folds and their aggregate
        info = cv_status(parent)
        print(json.dumps(info) if args.json else format_cv_status(info))
        return 0
    group = pipelines_group(args)
    if group is not None:
        return print_group(group, args.json)
    info = ssh.remote_status(target, args.remote_command) if target else run_status(
        resolve_run(args.run, runs_root_arg(args)))
    if args.json:
        print(json.dumps(info))
        return 0
    print(format_status(info))
    return 0


def pipelines_group(args) -> Optional[Path]:
    """The pipelines group (trainer/pipelines.py) `status NAME` names, if it is one."""
    from trainer.pipelines import is_group

    if ":" in args.run.split("/")[0]:
        return None
    path = runs_root_arg(args) / args.run if "/" not in args.run else Path(args.run)
    return path if is_group(path) else None


def print_group(group: Path, as_json: bool) -> int:
    from trainer.pipelines import group_status

    info = group_status(group)
    if as_json:
        print(json.dumps(info))
        return 0
    print(f"{info['name']}: pipelines, {info['ended']}/{len(info['runs'])} ended")
    for run in info["runs"]:
        print(f"  {run['name']:32} {run['state']}")
    print(f"  comparison: {info['compare'] or 'written when all have ended'}")
    return 0


def format_status(info: dict) -> str:
    if info["state"] == "missing":
        return f"{info['name']}: missing\n  {info.get('error')}"
    epoch = info.get("epoch")
    epochs = f"{epoch}/{info['total_epochs']}" if epoch is not None and info.get("total_epochs") else epoch
    lines = [f"{info['name']}: {state_label(info)}  step {info.get('step') or 0}/{info.get('total_steps') or '?'}"
             f"  epoch {epochs if epochs is not None else MISSING}"
             f"  phase {info.get('phase_name') or info.get('phase') or MISSING}"]
    if info.get("eta") is not None:
        lines.append(f"  ETA {duration(info['eta'])}")
    if info.get("best") or info.get("samples_per_s") is not None:
        lines.append(f"  best {best_text(info.get('best'))}  samples/s {samples_rate(info.get('samples_per_s'))}")
    for key in ("last_eval", "best_eval"):
        ev = info.get(key)
        if ev:
            lines.append(f"  {key.replace('_', ' ')}: acc {ev.get('val_accuracy', float('nan')):.4f}  "
                         f"f1 {ev.get('val_f1_macro', float('nan')):.4f}  loss {ev.get('val_loss', float('nan')):.4f}"
                         f"  (step {ev.get('step')})")
    owner = f"pid {info['pid']}" if info.get("pid") else "no daemon"
    lines.append(f"  dir {info.get('dir')}  {owner}")
    lines += run_notes(info)
    return "\n".join(lines)


def run_notes(info: dict) -> list[str]:
    """What a person must know about a run beyond its progress: a pause for disk space, a
    rebuilt state file, a daemon that keeps dying at start."""
    notes = []
    if info.get("pause_reason") == "disk_full":
        notes.append(f"  paused by itself: the disk is full (see `{longhaul_command()} logs` and the alerts); it resumes "
                     "by itself once space is freed")
    rebuilt = info.get("rebuilt")
    if isinstance(rebuilt, dict):
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(rebuilt.get("time") or 0))
        notes.append(f"  state rebuilt {when} from {', '.join(rebuilt.get('from') or []) or 'nothing'}: "
                     f"{rebuilt.get('problem')} (kept as {rebuilt.get('corrupt_copy')})")
    queued = info.get("queue") if info.get("state") == "queued" else None
    if queued and (queued.get("held") or queued.get("waiting")):
        notes.append(f"  {'held: ' if queued.get('held') else ''}{queued.get('held') or queued.get('waiting')}")
    failures = info.get("launch_failures") or 0
    if failures:
        skipped = "; resume --all skips it until a resume by hand works" if failures >= MAX_LAUNCH_FAILURES else ""
        notes.append(f"  daemon died at start {failures} time(s) in a row{skipped}")
    return notes


def cmd_export(args) -> int:
    """Export the metric history; a torn or corrupt tail is exported up to the tear, named on
    stderr, and makes the exit status 1 (the rows after it are lost)."""
    from trainer.history import ExportReport, write_export

    run_dir = resolve_run(args.run, runs_root_arg(args))
    path = RunDir(run_dir).history
    report = ExportReport()
    if args.output:
        with open(args.output, "w", newline="") as out:
            write_export(path, out, args.format, report)
        print(f"wrote {report.rows} rows to {args.output}", file=sys.stderr)
    else:
        write_export(path, sys.stdout, args.format, report)
    if report.torn:
        print(f"longhaul export: warning: {path} is torn at byte {report.valid_length} ({report.problem}); "
              f"exported the {report.rows} rows before it, anything after is lost", file=sys.stderr)
        return 1
    return 0


def cmd_compare(args) -> int:
    """`longhaul compare RUN RUN...`: the runs side by side (trainer/run/compare.py)."""
    from trainer.run.compare import compare_runs, format_table

    root = runs_root_arg(args)
    comparison = compare_runs([resolve_run(run, root) for run in args.runs])
    print(json.dumps(comparison, default=str) if args.json else format_table(comparison))
    return 0


def cmd_config_docs(args) -> int:
    from trainer.config import config_docs

    text = config_docs()
    if args.output:
        Path(args.output).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


# ----------------------------------------------------------------------------- cross-validation
def cmd_cv(args) -> int:
    """`longhaul cv CONFIG --folds K`: the parent and its K fold runs (trainer.run.cv), then the
    folds queued; the data is scanned first, so a class too small for K folds makes nothing."""
    from trainer.config import load_config
    from trainer.run.cv import create_cv

    cfg = load_config(args.config, overrides=[*(args.set or []), f"data.folds.k={args.folds}", "data.folds.index=0"])
    _print_config_warnings(cfg, args)
    check_folds_data(cfg, args.config)
    root = runs_root_arg(args)
    parent, folds = create_cv(root, args.name or cfg.name, cfg, args.folds, str(Path(args.config).absolute()))
    print(f"cross-validation {parent.name}: {args.folds} folds ({', '.join(d.name for d in folds)})\n"
          f"  dir:    {parent}\n  status: {longhaul_command()} status {address_cv(parent, root)}")
    return queue_folds(root, [parent, *folds], now=args.now, quiet=args.quiet)


def address_cv(parent: Path, root: Path) -> str:
    """The parent's name when `status NAME` finds it (the default root), else its path."""
    return shlex.quote(parent.name if find_cv(parent.name) == parent else str(parent))


def check_folds_data(cfg, source) -> None:
    """Scan the data (nothing is decoded) as fold 1 would: a problem no fold could train past (a
    class with fewer examples than folds, a missing folder) is refused before anything is made."""
    from trainer.data.sources import scan

    problems = [p for p in scan(cfg).problems if not p.skippable or not cfg.data.skip_bad_files]
    if problems:
        lines = "\n".join(f"  {p.path}: {p.reason}" for p in problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise RunError(f"{source}: the data cannot be cut into {cfg.data.folds.k} folds and trained:\n{lines}{more}")


def queue_folds(root: Path, made: list[Path], now: bool = False, quiet: bool = False) -> int:
    """Where the fold runs (`made`: the parent, then the folds) go to the run queue: each
    enqueued in order (trainer.run.queue.enqueue), then the queue advanced (start_queued); a queue
    that refuses one undoes the whole cross-validation. --now trains them here instead, one after
    another."""
    fold_dirs = made[1:]
    if now:
        return train_folds_here(root, fold_dirs, quiet)
    from trainer.daemon.launch import start_queued
    from trainer.run.queue import enqueue, remove

    positions: list[int] = []
    try:
        for run_dir in fold_dirs:
            positions.append(enqueue(root, run_dir))
    except BaseException:
        from trainer.run.cv import remove_cv

        for run_dir in fold_dirs[:len(positions)]:
            remove(root, run_dir)  # out of the queue again (its directory too)
        remove_cv(made)
        raise
    for run_dir, position in zip(fold_dirs, positions):
        print(f"  queued {run_dir.name} (position {position})")
    for run_dir, error in start_queued(root):
        print(f"  {run_dir.name} " + (f"could not start: {error}" if error else "started"))
    return 0


def train_folds_here(root: Path, fold_dirs: list[Path], quiet: bool) -> int:
    """Each fold by `longhaul train` in its own process, one after another: a fold that fails
    does not stop the next; Ctrl-C reaches the fold training (it checkpoints and stops) and ends
    the loop. 0 when every fold finished."""
    import subprocess

    states = {}
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # the fold in the foreground handles it
    try:
        for run_dir in fold_dirs:
            command = [sys.executable, "-m", "trainer.cli", "--root", str(root), "train",
                       str(RunDir(run_dir).config), "--run-dir", str(run_dir)] + (["--quiet"] if quiet else [])
            print(f"longhaul cv: training {run_dir.name}", flush=True)
            subprocess.run(command, check=False)
            states[run_dir.name] = effective_state(run_dir) if RunDir(run_dir).state.exists() else "failed"
            if states[run_dir.name] == "stopped":
                break
    finally:
        signal.signal(signal.SIGINT, previous)
    for run_dir in fold_dirs:
        print(f"  {run_dir.name}: {states.get(run_dir.name, 'not started')}")
    return 0 if all(states.get(d.name) == "finished" for d in fold_dirs) else 1


# ----------------------------------------------------------------------------- daemon side
def cmd_start(args) -> int:
    from trainer import daemon

    cfg = _load(args)
    _print_config_warnings(cfg, args)
    check_notify_file(args)
    if cfg.pipelines:
        return queue_commands.start_pipelines(args, cfg, runs_root_arg(args).absolute())
    run_dir, created = _run_dir_for(args, cfg, "start")
    registry.register(run_dir)
    _pass_accept_data_change(args)
    try:
        _check_replica_dir(args, cfg, run_dir)
        write_config(run_dir, cfg)
        if args.queue or args.after:
            return queue_commands.queue_new_run(run_dir, runs_root_arg(args).absolute(), args.after)
        pid = daemon.launch_daemon(run_dir)
    except BaseException:
        if created:  # a start that never ran leaves nothing behind (the name stays free)
            _remove_if_unused(run_dir)
        raise
    hint, command = address(run_dir), longhaul_command()
    print(f"started {run_dir.name} (daemon pid {pid})\n  dir:    {run_dir}\n  attach: {command} attach {hint}"
          f"\n  status: {command} status {hint}")
    if args.attach:
        from tui.app import run_attach

        return run_attach(str(run_dir), runs_root_arg(args))  # Esc's run list is of this --root
    return 0


def _check_replica_dir(args, cfg, run_dir: Path) -> None:
    """A replica inside the run directory (or holding it) is a config error, named by its key."""
    from trainer.config import ConfigError
    from trainer.run.replica import placement_problem

    folder = cfg.checkpoint.replicate_to.dir
    problem = folder and placement_problem(run_dir, cfg.resolve_path(folder))
    if problem:
        raise ConfigError(str(args.config), [("checkpoint.replicate_to.dir", problem)])


def cmd_ls(args) -> int:
    target = ssh.parse_target(args.host) if args.host else None
    if args.host and (target is None or target.run):
        raise RunError(f"ls takes HOST: (a host, then a colon) to list another machine's runs, not {args.host!r}")
    root = None if target else runs_root_arg(args)
    infos = ssh.remote_runs(target, args.sort, args.filter or "", args.remote_command) if target else \
        ordered(list_runs(root), args.sort, args.filter or "")
    if args.json:
        print(json.dumps(infos))
        return 0
    where = f"on {target.host}" if target else f"under {root}"
    if not infos:
        print(f"no run matches {args.filter!r} {where}" if args.filter else f"no runs {where}")
        return 0
    print(f"{'NAME':24} {'STATE':12} {'PHASE':16} {'STEP':>15} {'ETA':>8} {'LAST CKPT':>10} {'BEST':>12} "
          f"{'SAMPLES/S':>9}")
    notes = []
    for info in infos:
        step = f"{info.get('step') or 0}/{info.get('total_steps') or '?'}"
        eta = duration(info["eta"]) if info.get("eta") is not None else "-"
        age = info.get("last_checkpoint_age")
        age_text = duration(age) + " ago" if age is not None else "-"
        elsewhere = "" if root is None or Path(info["dir"]).parent == root.absolute() else f"  {info['dir']}"
        print(f"{info['name'][:24]:24} {state_label(info):12} {str(info.get('phase_name') or '-')[:16]:16} "
              f"{step:>15} {eta:>8} {age_text:>10} {best_text(info.get('best')):>12} "
              f"{samples_rate(info.get('samples_per_s')):>9}{elsewhere}")
        extra = [f"  {info['error']}"] if info["state"] == "missing" else run_notes(info)
        notes += [f"{info['name']}:"] + extra if extra else []
    if notes:
        print("\n" + "\n".join(notes))
    return 0


def cmd_control(args) -> int:
    from trainer import remote

    run_dir = resolve_run(args.run, runs_root_arg(args))
    try:
        ack, done = remote.request(run_dir, args.command, timeout=args.timeout)
    except remote.NoDaemon:
        state = effective_state(run_dir)
        if args.command != "stop" or state in LIVE_STATES:
            raise
        # like `systemctl stop` or `docker stop` of something stopped: the wanted end holds already
        print(f"{run_dir.name} is not running ({state}); nothing to stop")
        return 0
    if not ack.get("ok"):
        print(f"{args.command} refused: {ack.get('message')}", file=sys.stderr)
        return 1
    outcome = request_outcome(done)
    if outcome in ("failed", "refused"):
        print(f"{args.command} {outcome}: {done.get('message')}", file=sys.stderr)
        return 1
    print(done.get("message") if done else f"{args.command}: acknowledged ({ack.get('message') or 'pending'})")
    return 0


def request_outcome(done) -> str:
    """done/failed/refused of a request's completion event (None: it did not come)."""
    if not done:
        return "pending"
    data = done.get("data") or {}
    if done.get("kind") == "request":
        return str(data.get("outcome") or "done")
    return "failed" if data.get("state") == "failed" else "done"


def resumable_at_boot(info: dict) -> bool:
    """Interrupted runs, and runs a clean shutdown stopped by signal (SIGTERM at reboot):
    neither was stopped by a person."""
    stop_reason = str(info.get("stop_reason") or "")
    return info["state"] == "interrupted" or (info["state"] == "stopped" and stop_reason.startswith("signal"))


def cmd_resume(args) -> int:
    from trainer import daemon

    root = runs_root_arg(args)
    if args.force and not args.from_dir or args.from_dir and args.all:
        print("resume: --from restores one RUN (not --all), and --force goes only with --from", file=sys.stderr)
        return 2
    if args.all:
        _pass_accept_data_change(args)
        return resume_all(root)
    if not args.run:
        print("resume needs RUN or --all", file=sys.stderr)
        return 2
    if args.from_dir:
        check_notify_file(args)  # refused before the restore, not after it put the run back
    run_dir = restore_from_replica(args, root) if args.from_dir else resolve_run(args.run, root)
    _pass_accept_data_change(args, run_dir)
    state = effective_state(run_dir)
    if args.from_dir and state == "finished":
        print(f"{run_dir.name} had finished: nothing to resume")
        return 0
    if state in ("paused", "running", "starting", "stopping"):
        return cmd_control(argparse.Namespace(**{**vars(args), "command": "resume", "timeout": 30.0}))
    if state == "queued":
        print(f"{run_dir.name} is queued: it starts when a slot is free (`longhaul queue`; `queue move "
              f"{run_dir.name} 1` puts it next)", file=sys.stderr)
        return 1
    if state not in ("interrupted", "stopped", "failed"):
        print(f"{run_dir.name} is {state}; only interrupted, stopped or failed runs can be resumed",
              file=sys.stderr)
        return 1
    check_notify_file(args)
    registry.register(run_dir)
    pid = daemon.launch_daemon(run_dir)
    print(f"resumed {run_dir.name} (daemon pid {pid}); attach: {longhaul_command()} attach {address(run_dir)}")
    return 0


def restore_from_replica(args, root: Path) -> Path:
    """`resume RUN --from DIR`: the run directory put back from its replica (trainer/run/restore.py)."""
    from trainer.run.restore import replica_dir, restore, restore_target

    target = restore_target(args.run, root)
    done = restore(replica_dir(Path(args.from_dir), target.name), target, force=args.force)
    aside = f"; the old directory was kept as {done.aside}" if done.aside else ""
    print(f"restored {done.run_dir} from {args.from_dir} (newest checkpoint step {done.step:,}){aside}")
    for step, reason in done.skipped:
        print(f"  skipped the replica's checkpoint step {step:,}: {reason}", file=sys.stderr)
    return done.run_dir


def restore_arguments(parser: argparse.ArgumentParser) -> None:
    """`resume`'s --from and --force (restore_from_replica)."""
    parser.add_argument("--from", dest="from_dir", metavar="DIR",
                        help="restore the run from its replica (checkpoint.replicate_to.dir: DIR or DIR/RUN) when "
                             "its own directory is gone or has no valid checkpoint, then resume it")
    parser.add_argument("--force", action="store_true",
                        help="with --from: restore even over a run directory that has a valid checkpoint (it is "
                             "kept aside as RUN.before-restore-TIME)")


def _pass_accept_data_change(args, run_dir: Optional[Path] = None) -> None:
    """--accept-data-change reaches the trainer through the environment the daemon and its
    workers inherit (store_setup.ACCEPT_ENV). For one run it names the store the user saw (its
    fingerprint now), so that a store changed again later in that daemon's life is refused, not
    accepted too; where none can be read (start, resume --all, no store yet) it accepts any."""
    if getattr(args, "accept_data_change", False):
        from trainer.store_setup import ACCEPT_ENV

        os.environ[ACCEPT_ENV] = (store_fingerprint(run_dir) if run_dir is not None else None) or "1"


def check_notify_file(args) -> None:
    """`start` and `resume` refuse a broken per-user notify file (a run would go unwatched
    without anyone knowing) unless told to train without it (notify.IGNORE_FILE_ENV)."""
    from trainer import notify
    from trainer.config import ConfigError

    if getattr(args, "ignore_notify_file", False):
        os.environ[notify.IGNORE_FILE_ENV] = "1"
        return
    try:
        notify.load_user_rules()
    except ConfigError as exc:
        raise ConfigError(exc.source, exc.problems + [
            ("", "fix it (`longhaul notify --test` tries it), or pass --ignore-notify-file to train without "
                 "its notifications")]) from None


def cmd_notify(args) -> int:
    """List the notify rules that apply (the user's file, and RUN's config), or --test them."""
    from trainer import notify
    from trainer.config import load_config

    rules = notify.load_user_rules()
    run_dir = resolve_run(args.run, runs_root_arg(args)) if args.run else None
    if run_dir is not None:
        rules += notify.run_rules(load_config(RunDir(run_dir).config, check_paths=False, check_model=False))
    if not rules:
        print(f"no notify rules: none in {notify.user_file()}" + ("" if run_dir else " (a run's own: notify RUN)")
              + "; see README.md, Notifications", file=sys.stderr)
        return 1
    if not args.test:
        for rule in rules:
            print(f"{rule.source}: on {', '.join(sorted(rule.on))}: {rule.command}")
        return 0
    results = notify.send_test(rules, run_dir.name if run_dir else "test", run_dir)
    for rule, outcome in results:
        text = "ok" if outcome.ok else f"FAILED: {outcome.describe(rule.timeout)}"
        print(f"{rule.source}: {text} ({outcome.seconds:.1f} s)")
        if not outcome.ok and outcome.output.strip():
            print("  " + "\n  ".join(outcome.output.strip().splitlines()[-5:]))
    return 0 if all(outcome.ok for _, outcome in results) else 1


def store_fingerprint(run_dir: Path) -> Optional[str]:
    """The fingerprint of the feature store a run's config names, None when there is none to read."""
    from trainer.config import ConfigError, load_config
    from trainer.data.store.layout import StoreError, StorePaths, read_manifest

    try:
        cfg = load_config(RunDir(run_dir).config, check_paths=False, check_model=False)
        if cfg.data.store is None:
            return None
        return read_manifest(StorePaths(cfg.resolve_path(cfg.data.store)))["fingerprint"]
    except (ConfigError, StoreError, OSError, KeyError, TypeError):
        return None


def resume_all(root: Path) -> int:
    """Every interrupted run under `root` and in the registry (what runs at boot). A run whose
    daemon died at start MAX_LAUNCH_FAILURES times in a row is skipped with the reason, so a
    boot never retries it forever; one run that cannot start does not keep the others down."""
    from trainer import daemon

    targets, infos = [], list_runs(root)
    for info in infos:
        if not resumable_at_boot(info):
            continue
        if (info.get("launch_failures") or 0) >= MAX_LAUNCH_FAILURES:
            print(f"skipping {info['dir']}: its daemon died at start {info['launch_failures']} times in a row; "
                  f"see {RunDir(info['dir']).daemon_log} and resume it by hand", file=sys.stderr)
            continue
        targets.append(Path(info["dir"]))
    if not targets:
        print("no interrupted runs")
    failed = 0
    for run_dir in targets:
        try:
            pid = daemon.launch_daemon(run_dir)
        except RunError as exc:
            failed += 1
            print(f"longhaul resume: {exc}", file=sys.stderr)
            continue
        print(f"resumed {run_dir.name} (daemon pid {pid}); attach: {longhaul_command()} attach {address(run_dir)}")
    for queue_root in boot_queues(root, infos):  # then the queues go on
        for run_dir, error in daemon.start_queued(queue_root):
            if error:
                failed += 1
                print(f"longhaul resume: queued run {run_dir.name} did not start: {error}", file=sys.stderr)
            else:
                print(f"started queued run {run_dir.name}")
    return 1 if failed else 0


def boot_queues(root: Path, infos: list[dict]) -> list[Path]:
    """The queues `resume --all` moves on: the runs root's, and the queue of every registered run
    queued elsewhere (`start --queue --root X`), which would otherwise wait for a command there."""
    from trainer.daemon.launch import queue_roots

    roots = [root.absolute()]
    for info in infos:
        if info.get("state") == "queued":
            roots += [queue_root for queue_root in queue_roots(Path(info["dir"])) if queue_root not in roots]
    return roots


def cmd_logs(args) -> int:
    from trainer import remote

    run_dir = resolve_run(args.run, runs_root_arg(args))
    path = RunDir(run_dir).train_log
    if path.exists():
        lines = path.read_text(errors="replace").splitlines()
        print("\n".join(lines[-args.lines:]))
    if not args.follow:
        return 0
    try:
        for line in remote.follow_logs(run_dir):
            print(line, flush=True)
    except KeyboardInterrupt:
        pass
    return 0


def cmd_attach(args) -> int:
    from tui.app import run_attach

    target = ssh.parse_target(args.run)
    if target:
        from tui.remote import run_remote_attach

        return run_remote_attach(target, args.remote_command)
    return run_attach(args.run, Path(args.root) if args.root else None)


def cmd_install_service(args) -> int:
    from trainer.service import install_service

    print(install_service(uninstall=args.uninstall))
    return 0


# ----------------------------------------------------------------------------- parser
def _add_accept_data_change(parser: argparse.ArgumentParser, sub) -> argparse.ArgumentParser:
    """`parser` with --accept-data-change on train, start and resume (store_setup.ACCEPT_ENV),
    and --ignore-notify-file on start and resume."""
    for name in ("start", "resume"):
        sub.choices[name].add_argument("--ignore-notify-file", action="store_true",
                                       help="train without the per-user notify file's rules (when it has an error)")
    for name in ("train", "start", "resume"):
        sub.choices[name].add_argument(
            "--accept-data-change", action="store_true",
            help="resume even if the feature store (data.store) changed since the run's checkpoints were "
                 "written: training goes on, but not bit-exactly")
    return parser


PREPARE_HELP = ("decode the data once, in parallel, into the config's feature store (data.store); "
                "its path is the last line of output")


def prepare_arguments(p: argparse.ArgumentParser) -> None:
    def workers(text: str) -> int:
        if not text.isdigit() or int(text) < 1:
            raise argparse.ArgumentTypeError(f"expected a whole number >= 1, found {text!r}")
        return int(text)

    p.add_argument("--workers", type=workers, metavar="N",
                   help="worker processes (default: data.prepare_workers, else one per core)")
    p.add_argument("--no-wait", action="store_true", help="fail at once when another prepare holds the store")


CV_HELP = ("k-fold cross-validation: K fold runs (NAME-fold1..K) under the parent NAME, queued; "
           "`status NAME` aggregates them")


def cv_arguments(p: argparse.ArgumentParser) -> None:
    def fold_count(text: str) -> int:
        if not text.isdigit() or int(text) < 2:
            raise argparse.ArgumentTypeError(f"expected a whole number of folds >= 2, found {text!r}")
        return int(text)

    p.add_argument("--folds", type=fold_count, required=True, metavar="K", help="number of folds (>= 2)")
    p.add_argument("--name", help="name of the cross-validation (default: the config's name); its folds are "
                                  "NAME-fold1 .. NAME-foldK")
    p.add_argument("--now", action="store_true", help="train the folds here, one after another, instead of "
                                                     "queueing them")
    p.add_argument("--quiet", action="store_true", help="with --now: print only events, no progress lines")


def remote_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--remote-command", metavar="SHELL_TEXT",
                   help=f"for HOST:RUN, how to run longhaul on HOST (default: ${ssh.REMOTE_COMMAND_ENV}, else "
                        "`longhaul`), e.g. ~/venv/bin/longhaul")
    return p


def ls_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("host", nargs="?", metavar="HOST:", help="list the runs of another machine, through ssh")
    p.add_argument("--json", action="store_true")
    p.add_argument("--sort", choices=SORTS, default="name",
                   help="order: name (the default), started (newest first), state, best (each run's own "
                        "monitor, better first) or samples/s (fastest first); the picker's `o`")
    p.add_argument("--filter", metavar="TEXT", help="only runs whose name, state or model contains TEXT "
                                                   "(case-insensitive); the picker's `/`")
    p.set_defaults(func=cmd_ls)


def resume_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", nargs="?")
    p.add_argument("--all", action="store_true", help="every interrupted run (what runs at boot)")
    restore_arguments(p)
    p.set_defaults(func=cmd_resume)


def notify_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", nargs="?", help="also the rules of this run's config")
    p.add_argument("--test", action="store_true", help="send a test event through every rule (whatever its `on`)")
    p.set_defaults(func=cmd_notify)


def compare_arguments(sub) -> None:
    p = sub.add_parser("compare", help="compare runs: best and test metrics, calibration, time per phase, "
                       "samples/s, parameters and the config keys that differ")
    p.add_argument("runs", nargs="+", metavar="RUN", help="two or more run names or run directories")
    p.add_argument("--json", action="store_true", help="one JSON object: {runs: [...], config_diff: {...}}")
    p.set_defaults(func=cmd_compare)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="longhaul", description="Long CPU training runs that survive logout, "
                                     "kill -9 and power cuts.")
    parser.add_argument("--root", help="runs root (default: $LONGHAUL_ROOT or ./checkpoints)")
    sub = parser.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    def config_cmd(name, func, help_text, run_dir=True):
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("config", help="YAML config (see configs/ and docs/CONFIG.md)")
        p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key (repeatable)")
        if run_dir:
            p.add_argument("--name", help="run name (default: the config's name)")
            p.add_argument("--run-dir", help="run directory (default: ROOT/NAME)")
        p.set_defaults(func=func)
        return p

    p = config_cmd("train", cmd_train, "train in the foreground")
    p.add_argument("--quiet", action="store_true", help="print only events, no progress lines")
    p = config_cmd("start", cmd_start, "start a detached training daemon (or queue it)")
    p.add_argument("--attach", action="store_true", help="open the dashboard right away")
    queue_commands.start_arguments(p)
    distributed_arguments(p)
    cv_arguments(config_cmd("cv", cmd_cv, CV_HELP, run_dir=False))
    config_cmd("check-data", cmd_check_data, "report on a config's data and exit non-zero on errors", run_dir=False)
    prepare_arguments(config_cmd("prepare", cmd_prepare, PREPARE_HELP, run_dir=False))

    def run_cmd(name, func, help_text):
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("run", help="run name or run directory")
        p.set_defaults(func=func)
        return p

    p = remote_arguments(run_cmd("status", cmd_status, "show a run's state (HOST:RUN: on another machine, through ssh)"))
    p.add_argument("--json", action="store_true", help="one JSON object")
    p = run_cmd("export", cmd_export, "export the metric history")
    p.add_argument("--format", choices=["jsonl", "csv"], default="jsonl")
    p.add_argument("-o", "--output", help="file (default: stdout)")
    for action in ("pause", "stop", "checkpoint"):
        p = run_cmd(action, cmd_control, f"{action} a running run at the next step boundary")
        p.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the confirmation")
        p.set_defaults(command=action)
    resume_arguments(sub.add_parser("resume", help="resume a paused run, or restart an interrupted/stopped/failed "
                                    "one from its last checkpoint"))
    p = run_cmd("logs", cmd_logs, "show the trainer log")
    p.add_argument("-f", "--follow", action="store_true")
    p.add_argument("-n", "--lines", type=int, default=50)
    posthoc_commands.register(sub, run_cmd)
    compare_arguments(sub)
    ls_arguments(remote_arguments(sub.add_parser("ls", help="list runs (HOST: another machine's, through ssh)")))
    p = remote_arguments(sub.add_parser("attach", help="open the dashboard (no RUN: pick one; HOST:RUN: a run on "
                                                    "another machine, its socket forwarded by ssh)"))
    p.add_argument("run", nargs="?")
    p.set_defaults(func=cmd_attach)
    queue_commands.register(sub)
    notify_arguments(sub.add_parser("notify", help="list the notify rules that apply, or send a test message "
                                    "through each"))
    upkeep_arguments(sub)
    return _add_accept_data_change(parser, sub)


def upkeep_arguments(sub) -> None:
    """install-service and config-docs: the commands that look after longhaul itself."""
    p = sub.add_parser("install-service", help="resume interrupted runs at boot (systemd user unit or cron)")
    p.add_argument("--uninstall", action="store_true")
    p.set_defaults(func=cmd_install_service)
    p = sub.add_parser("config-docs", help="print the config reference (docs/CONFIG.md)")
    p.add_argument("-o", "--output")
    p.set_defaults(func=cmd_config_docs)


# (module, class) of errors that mean "the user's input was wrong": printed without a traceback.
USER_ERRORS = [("trainer.config", "ConfigError"), ("trainer.run.errors", "RunError"),
               ("trainer.data.report", "DataError"), ("trainer.checkpoint", "CheckpointError"),
               ("trainer.remote", "ClientError"), ("trainer.service", "ServiceError"),
               ("trainer.posthoc.classifier", "ClassifierError"), ("trainer.data.store.layout", "StoreError")]


def user_error_types() -> tuple[type[BaseException], ...]:
    """Only modules already imported are consulted, so `longhaul ls` never pays for torch; and
    only what they hold (`vars`): a getattr would run a package's lazy import (trainer.data's)."""
    types = [FileNotFoundError, PermissionError]
    for module, name in USER_ERRORS:
        cls = vars(sys.modules[module]).get(name) if module in sys.modules else None
        if isinstance(cls, type):
            types.append(cls)
    return tuple(types)


# OS errors that come from where the user pointed us (a read-only or full disk, a path too
# long, no permission), not from a bug: reported as a message, not a traceback.
USER_ERRNOS = {errno.EROFS, errno.ENAMETOOLONG, errno.ENOSPC, errno.EDQUOT, errno.ENOTDIR, errno.EISDIR,
               errno.EEXIST, errno.EACCES, errno.EPERM, errno.ELOOP, errno.ENOENT}


def is_user_error(exc: BaseException) -> bool:
    return isinstance(exc, user_error_types()) or (isinstance(exc, OSError) and exc.errno in USER_ERRNOS)


def reader_gone() -> int:
    """`longhaul export RUN | head`: the reader left, so stop quietly as unix tools do (their
    exit status after SIGPIPE, 128 + 13). stdout is pointed at /dev/null first: Python flushes
    it again at exit and would print a second BrokenPipeError there."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return 128 + signal.SIGPIPE


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        apply_umask()  # run data is private: directories 0700, files 0600 (LONGHAUL_UMASK relaxes it)
        code = args.func(args)
        sys.stdout.flush()  # a closed pipe shows here, not at exit where it could not be caught
        return code
    except BrokenPipeError:
        return reader_gone()
    except Exception as exc:
        if not is_user_error(exc):
            raise
        print(f"longhaul {args.cmd}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
