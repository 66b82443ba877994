"""The `longhaul` command.

Heavy modules (torch, the engine, textual) are imported inside the command that needs them, so
`longhaul ls` and `longhaul status` answer at once on a loaded training box.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

from trainer.console import format_duration


def _load(args, check_model: bool = True):
    from trainer.config import load_config

    return load_config(args.config, overrides=args.set or [], check_model=check_model)


def _run_dir_for(args, cfg) -> Path:
    from trainer import runs

    if args.run_dir:
        run_dir = Path(args.run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        return run_dir
    return runs.create_run_dir(runs_root_arg(args), args.name or cfg.name)


def runs_root_arg(args) -> Path:
    from trainer import runs

    return Path(args.root) if getattr(args, "root", None) else runs.runs_root()


def write_config(run_dir: Path, cfg) -> None:
    """The resolved config is the run's own copy: later edits of the source YAML change nothing."""
    from trainer.config import dump_config

    path = run_dir / "config.yaml"
    if not path.exists():
        tmp = run_dir / ".config.yaml.tmp"
        tmp.write_text(dump_config(cfg))
        os.replace(tmp, path)


# ----------------------------------------------------------------------------- train
def cmd_train(args) -> int:
    """Train in the foreground; Ctrl-C checkpoints and stops (run `longhaul train` again with
    --run-dir to resume)."""
    import queue

    from trainer.config import load_config
    from trainer.console import ConsolePublisher
    from trainer.engine import Trainer

    cfg = _load(args)
    run_dir = _run_dir_for(args, cfg)
    write_config(run_dir, cfg)
    cfg = load_config(run_dir / "config.yaml")  # train exactly what the run directory says
    controls: queue.SimpleQueue = queue.SimpleQueue()

    def request_stop(signum, _frame):
        print(f"\n{signal.Signals(signum).name}: checkpointing and stopping at the next step...", flush=True)
        controls.put((-1, "stop"))

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    publisher = ConsolePublisher(run_dir, cfg.name or run_dir.name, quiet=args.quiet)
    publisher.started()
    try:
        final = Trainer(cfg, run_dir, publisher, controls).run()
    except BaseException as exc:
        publisher.failed(exc)
        raise
    print(f"{final}: {run_dir}")
    return 0 if final in ("finished", "stopped") else 1


def cmd_check_data(args) -> int:
    from trainer.data import check_data

    cfg = _load(args, check_model=False)
    report = check_data(cfg)
    print(report.to_text())
    return 0 if report.ok else 1


def cmd_status(args) -> int:
    from trainer import runs

    run_dir = runs.resolve_run(args.run, runs_root_arg(args))
    info = runs.status(run_dir)
    if args.json:
        print(json.dumps(info))
        return 0
    print(format_status(info))
    return 0


def format_status(info: dict) -> str:
    lines = [f"{info['name']}: {info['state']}  step {info.get('step') or 0}/{info.get('total_steps') or '?'}"
             f"  epoch {(info.get('epoch') or 0) + 1}  phase {info.get('phase_name') or info.get('phase')}"]
    if info.get("eta") is not None:
        lines.append(f"  ETA {format_duration(info['eta'])}")
    for key in ("last_eval", "best_eval"):
        ev = info.get(key)
        if ev:
            lines.append(f"  {key.replace('_', ' ')}: acc {ev.get('val_accuracy', float('nan')):.4f}  "
                         f"f1 {ev.get('val_f1_macro', float('nan')):.4f}  loss {ev.get('val_loss', float('nan')):.4f}"
                         f"  (step {ev.get('step')})")
    lines.append(f"  dir {info.get('dir')}  pid {info.get('pid')}")
    return "\n".join(lines)


def cmd_export(args) -> int:
    """Export the metric history; a torn or corrupt tail is exported up to the tear, named on
    stderr, and makes the exit status 1 (the rows after it are lost)."""
    from trainer import runs
    from trainer.history import ExportReport, write_export

    run_dir = runs.resolve_run(args.run, runs_root_arg(args))
    path = run_dir / "history.msgpack"
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


def cmd_config_docs(args) -> int:
    from trainer.config import config_docs

    text = config_docs()
    if args.output:
        Path(args.output).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


# ----------------------------------------------------------------------------- daemon side
def cmd_start(args) -> int:
    from trainer import daemon

    cfg = _load(args)
    run_dir = _run_dir_for(args, cfg)
    write_config(run_dir, cfg)
    pid = daemon.launch_daemon(run_dir)
    name = run_dir.name
    print(f"started {name} (daemon pid {pid})\n  dir:    {run_dir}\n  attach: longhaul attach {name}"
          f"\n  status: longhaul status {name}")
    if args.attach:
        from tui.app import run_attach

        return run_attach(str(run_dir), None)
    return 0


def cmd_ls(args) -> int:
    from trainer import runs

    infos = runs.list_runs(runs_root_arg(args))
    if args.json:
        print(json.dumps(infos))
        return 0
    if not infos:
        print(f"no runs under {runs_root_arg(args)}")
        return 0
    print(f"{'NAME':24} {'STATE':12} {'PHASE':16} {'STEP':>15} {'ETA':>12} {'LAST CKPT':>10}")
    for info in infos:
        step = f"{info.get('step') or 0}/{info.get('total_steps') or '?'}"
        eta = format_duration(info["eta"]) if info.get("eta") is not None else "-"
        age = info.get("last_checkpoint_age")
        age_text = format_duration(age) + " ago" if age is not None else "-"
        print(f"{info['name'][:24]:24} {info['state']:12} {str(info.get('phase_name') or '-')[:16]:16} "
              f"{step:>15} {eta:>12} {age_text:>10}")
    return 0


def cmd_control(args) -> int:
    from trainer import client, runs

    run_dir = runs.resolve_run(args.run, runs_root_arg(args))
    ack, done = client.request(run_dir, args.command, timeout=args.timeout)
    if not ack.get("ok"):
        print(f"{args.command} refused: {ack.get('message')}", file=sys.stderr)
        return 1
    print(done.get("message") if done else f"{args.command}: acknowledged ({ack.get('message') or 'pending'})")
    return 0


def resumable_at_boot(info: dict) -> bool:
    """Interrupted runs, and runs a clean shutdown stopped by signal (SIGTERM at reboot):
    neither was stopped by a person."""
    stop_reason = str(info.get("stop_reason") or "")
    return info["state"] == "interrupted" or (info["state"] == "stopped" and stop_reason.startswith("signal"))


def cmd_resume(args) -> int:
    from trainer import daemon, runs

    root = runs_root_arg(args)
    if args.all:
        targets = [Path(i["dir"]) for i in runs.list_runs(root) if resumable_at_boot(i)]
        if not targets:
            print("no interrupted runs")
    else:
        if not args.run:
            print("resume needs RUN or --all", file=sys.stderr)
            return 2
        run_dir = runs.resolve_run(args.run, root)
        state = runs.effective_state(run_dir)
        if state in ("paused", "running", "starting", "stopping"):
            return cmd_control(argparse.Namespace(**{**vars(args), "command": "resume", "timeout": 30.0}))
        if state not in ("interrupted", "stopped", "failed"):
            print(f"{run_dir.name} is {state}; only interrupted, stopped or failed runs can be resumed",
                  file=sys.stderr)
            return 1
        targets = [run_dir]
    for run_dir in targets:
        pid = daemon.launch_daemon(run_dir)
        print(f"resumed {run_dir.name} (daemon pid {pid}); attach: longhaul attach {run_dir.name}")
    return 0


def cmd_logs(args) -> int:
    from trainer import client, runs

    run_dir = runs.resolve_run(args.run, runs_root_arg(args))
    path = run_dir / "train.log"
    if path.exists():
        lines = path.read_text(errors="replace").splitlines()
        print("\n".join(lines[-args.lines:]))
    if not args.follow:
        return 0
    try:
        for line in client.follow_logs(run_dir):
            print(line, flush=True)
    except KeyboardInterrupt:
        pass
    return 0


def cmd_attach(args) -> int:
    from tui.app import run_attach

    return run_attach(args.run, Path(args.root) if args.root else None)


def cmd_install_service(args) -> int:
    from trainer.service import install_service

    print(install_service(uninstall=args.uninstall))
    return 0


# ----------------------------------------------------------------------------- parser
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
    p = config_cmd("start", cmd_start, "start a detached training daemon")
    p.add_argument("--attach", action="store_true", help="open the dashboard right away")
    config_cmd("check-data", cmd_check_data, "report on a config's data and exit non-zero on errors", run_dir=False)

    def run_cmd(name, func, help_text):
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("run", help="run name or run directory")
        p.set_defaults(func=func)
        return p

    p = run_cmd("status", cmd_status, "show a run's state")
    p.add_argument("--json", action="store_true", help="one JSON object")
    p = run_cmd("export", cmd_export, "export the metric history")
    p.add_argument("--format", choices=["jsonl", "csv"], default="jsonl")
    p.add_argument("-o", "--output", help="file (default: stdout)")
    for action in ("pause", "stop", "checkpoint"):
        p = run_cmd(action, cmd_control, f"{action} a running run at the next step boundary")
        p.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the confirmation")
        p.set_defaults(command=action)
    p = sub.add_parser("resume", help="resume a paused run, or restart an interrupted/stopped/failed one "
                       "from its last checkpoint")
    p.add_argument("run", nargs="?")
    p.add_argument("--all", action="store_true", help="every interrupted run (what runs at boot)")
    p.set_defaults(func=cmd_resume)
    p = run_cmd("logs", cmd_logs, "show the trainer log")
    p.add_argument("-f", "--follow", action="store_true")
    p.add_argument("-n", "--lines", type=int, default=50)
    p = sub.add_parser("ls", help="list runs")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_ls)
    p = sub.add_parser("attach", help="open the dashboard (no RUN: pick one)")
    p.add_argument("run", nargs="?")
    p.set_defaults(func=cmd_attach)
    p = sub.add_parser("install-service", help="resume interrupted runs at boot (systemd user unit or cron)")
    p.add_argument("--uninstall", action="store_true")
    p.set_defaults(func=cmd_install_service)
    p = sub.add_parser("config-docs", help="print the config reference (docs/CONFIG.md)")
    p.add_argument("-o", "--output")
    p.set_defaults(func=cmd_config_docs)
    return parser


# (module, class) of errors that mean "the user's input was wrong": printed without a traceback.
USER_ERRORS = [("trainer.config", "ConfigError"), ("trainer.runs", "RunError"), ("trainer.data", "DataError"),
               ("trainer.checkpoint", "CheckpointError"), ("trainer.client", "ClientError"),
               ("trainer.service", "ServiceError")]


def user_error_types() -> tuple[type[BaseException], ...]:
    """Only modules already imported are consulted, so `longhaul ls` never pays for torch."""
    types = [FileNotFoundError, PermissionError]
    for module, name in USER_ERRORS:
        cls = getattr(sys.modules.get(module), name, None)
        if isinstance(cls, type):
            types.append(cls)
    return tuple(types)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except Exception as exc:
        if not isinstance(exc, user_error_types()):
            raise
        print(f"longhaul {args.cmd}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
