"""Benchmark: what a dashboard costs the training box, attached locally and from a laptop.

One live daemon (the real one) fed by tests/fake_worker.py at 20 steps/s, a log line a second,
the default system sample interval; its progress reaches clients at the daemon's own rate. In
the same run, over windows of the same --seconds (after a warm-up each), one after the other:

  none    no client: the daemon alone (what any attach adds comes on top of this)
  local   `longhaul attach RUN` under a pseudo-terminal (bench/tui.py's PtyProcess), on the box:
          box = the TUI process + the daemon
  remote  `longhaul attach longhaul-test:RUN` under a pseudo-terminal, through a real sshd on
          localhost (tests/sshd.py) and the socket forwarding of trainer/ssh.py:
          box = the daemon + the sshd session processes serving the forward (the sshd
          listener's descendants); laptop = the TUI process + its ssh client (for information)

CPU is % of one core (user + system time over wall time). The fake worker's own CPU (the
"training") is counted on neither side. Prints a summary, then one JSON object on the last line.

    python bench/remote_attach.py [--seconds 20] [--warmup 5] [--size 160x48]
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import psutil  # noqa: E402

import sshd  # noqa: E402  (tests/sshd.py)
from daemon_helpers import Launcher, make_run  # noqa: E402
from trainer.config import DaemonConfig  # noqa: E402
from trainer.run.status import status  # noqa: E402


def bench_tui_module():
    """bench/tui.py under another name: as `tui` it would shadow the tui package."""
    spec = importlib.util.spec_from_file_location("bench_tui", ROOT / "bench" / "tui.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cpu_of(pids: list[int]) -> dict[int, float]:
    """CPU seconds (user + system) of each process still alive."""
    found = {}
    for pid in pids:
        try:
            times = psutil.Process(pid).cpu_times()
        except psutil.NoSuchProcess:
            continue
        found[pid] = times.user + times.system
    return found


def window(groups: dict[str, list[int]], seconds: float) -> dict[str, float]:
    """% of one core of each group of processes over `seconds` (processes alive throughout)."""
    before = {name: cpu_of(pids) for name, pids in groups.items()}
    started = time.perf_counter()
    time.sleep(seconds)
    wall = time.perf_counter() - started
    after = {name: cpu_of(pids) for name, pids in groups.items()}
    return {name: 100 * sum(after[name][p] - before[name][p] for p in after[name] if p in before[name]) / wall
            for name in groups}


def attach_window(pty_process, argv: list[str], env: dict, size: str, warmup: float, seconds: float,
                  groups) -> dict[str, float]:
    """Run `argv` under a pty, warm up, then measure the groups `groups(app_pid)` names."""
    app = pty_process(argv, env, size)
    try:
        time.sleep(warmup)
        app.check_running()
        measured = groups(app.proc.pid)
        result = window(measured, seconds)
        app.check_running()
        result["terminal_bytes_per_s"] = app.received / (warmup + seconds)
        result["processes"] = {name: len(pids) for name, pids in measured.items()}
        return result
    finally:
        app.stop()


def ssh_clients(pid: int) -> list[int]:
    return [p.pid for p in psutil.Process(pid).children(recursive=True) if p.name() == "ssh"]


def measure(args, folder: Path, env: dict) -> dict:
    pty_process = bench_tui_module().PtyProcess
    launcher = Launcher()
    with sshd.LocalSshd(folder / "sshd") as server:
        run_dir = make_run(folder / "runs", "bench", fake={"steps": 10**9, "step_time": 0.05, "log_every": 20},
                           daemon_cfg={"system_interval": DaemonConfig().system_interval})
        try:
            daemon = launcher.start(run_dir)
            time.sleep(args.warmup)
            result = {"none": window({"daemon": [daemon]}, args.seconds)}
            cli = [sys.executable, "-m", "trainer.cli", "attach"]
            result["local"] = attach_window(
                pty_process, cli + [str(run_dir)], env, args.size, args.warmup, args.seconds,
                lambda tui: {"daemon": [daemon], "tui": [tui]})
            remote_env = dict(env, LONGHAUL_SSH_OPTIONS=server.ssh_options, LONGHAUL_REMOTE_COMMAND=sshd.far_side_command(
                {k: env[k] for k in ("LONGHAUL_ROOT", "LONGHAUL_STATE_DIR", "XDG_RUNTIME_DIR")}))
            result["remote"] = attach_window(
                pty_process, cli + [f"{sshd.HOST}:{run_dir.name}"], remote_env, args.size, args.warmup, args.seconds,
                lambda tui: {"daemon": [daemon], "sshd_session": server.session_pids(), "tui": [tui],
                             "ssh_client": ssh_clients(tui)})
            result["steps_during_bench"] = status(run_dir)["step"]
        finally:
            launcher.cleanup()
    return result


def summarise(result: dict) -> dict:
    local, remote = result["local"], result["remote"]
    local["box"] = local["tui"] + local["daemon"]
    remote["box"] = remote["daemon"] + remote["sshd_session"]
    remote["laptop"] = remote["tui"] + remote["ssh_client"]
    result["box_ratio_remote_to_local"] = remote["box"] / local["box"] if local["box"] else None
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="each measurement window")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds before each window")
    parser.add_argument("--size", default="160x48", help="terminal size WxH")
    args = parser.parse_args()
    if sshd.sshd_program() is None:
        sys.exit("bench/remote_attach.py needs sshd, ssh and ssh-keygen (apt-get install openssh-server)")
    folder = Path(tempfile.mkdtemp(prefix="lhremote"))
    runtime = tempfile.mkdtemp(prefix="lh-", dir="/tmp")  # short: sun_path holds 108 bytes
    (folder / "runs").mkdir()
    settings = {"XDG_RUNTIME_DIR": runtime, "LONGHAUL_ROOT": str(folder / "runs"),
                "LONGHAUL_STATE_DIR": str(folder / "state")}
    os.environ.update(settings)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    load_before = round(os.getloadavg()[0], 2)
    try:
        result = summarise(measure(args, folder, env))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        shutil.rmtree(runtime, ignore_errors=True)
    result.update(seconds=args.seconds, size=args.size, cpus=os.cpu_count(), load_average_1m_before=load_before,
                  load_average_1m_after=round(os.getloadavg()[0], 2))
    local, remote = result["local"], result["remote"]
    print(f"daemon alone: {result['none']['daemon']:.2f}% of one core")
    print(f"local attach: box {local['box']:.2f}% (TUI {local['tui']:.2f}% + daemon {local['daemon']:.2f}%)")
    print(f"remote attach: box {remote['box']:.2f}% (daemon {remote['daemon']:.2f}% + sshd {remote['sshd_session']:.2f}%), "
          f"laptop {remote['laptop']:.2f}% (TUI {remote['tui']:.2f}% + ssh {remote['ssh_client']:.2f}%)")
    print(f"training box, remote / local: {result['box_ratio_remote_to_local']:.3f}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
