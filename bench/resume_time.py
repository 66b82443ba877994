"""Seconds from `kill -9` of a run (its daemon and trainer, as a power cut) to the first new
training step after `longhaul resume`.

Each case starts a real run with `longhaul start`, waits for its first checkpoint and a few steps
more, kills the daemon's process group with SIGKILL, runs `longhaul resume` and times the first
history record written after the kill (its own wall-clock stamp). The compiled cases resume from
the on-disk compile cache their first start filled, as a user's resume would.

Cases: the quickstart as shipped (eager: `auto` judges it too short to compile), the quickstart
compiled, and the image V2-S preset compiled (on generated 320x320 images: the content does not
matter here). The JSON object is the last line.
    python bench/resume_time.py [--cases quickstart,quickstart_compiled,v2s_compiled]
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.append(str(ROOT / "bench"))  # after the checkout: bench/tui.py must not shadow tui

from compile import image_folder  # noqa: E402
from trainer.history import read_history  # noqa: E402

CASES = {
    # name: (preset, overrides)
    "quickstart": ("quickstart.yaml", ["checkpoint.interval_seconds=15"]),
    "quickstart_compiled": ("quickstart.yaml", ["checkpoint.interval_seconds=15", "model.compile=true"]),
    "v2s_compiled": ("image_efficientnetv2_s_cpu.yaml", ["checkpoint.interval_seconds=30", "model.compile=true",
                                                          "data.root={images}"]),
}


def longhaul(env: dict, *args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "trainer.cli", *args], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise SystemExit(f"longhaul {' '.join(args)} failed:\n{out.stderr[-3000:]}")
    return out.stdout


def status(env: dict, run: str) -> dict:
    return json.loads(longhaul(env, "status", run, "--json"))


def wait(predicate, timeout: float, what: str, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise SystemExit(f"timed out after {timeout:.0f} s waiting for {what}")


def train_records(run_dir: Path) -> list[dict]:
    try:
        return [r for r in read_history(run_dir / "history.msgpack") if r["kind"] == "train"]
    except (OSError, ValueError):
        return []


def first_step_after(run_dir: Path, since: float):
    records = [r for r in train_records(run_dir) if r["time"] > since]
    return records[0] if records else None


def one_case(name: str, images: Path, tmp: Path, cache: Path) -> dict:
    preset, overrides = CASES[name]
    env = dict(os.environ, LONGHAUL_ROOT=str(tmp / "runs"), XDG_RUNTIME_DIR=str(tmp / "rt"),
               TORCHINDUCTOR_CACHE_DIR=str(cache), PYTHONPATH=str(ROOT))
    (tmp / "rt").mkdir(exist_ok=True, mode=0o700)
    sets = [a for o in overrides for a in ("--set", o.replace("{images}", str(images)))]
    longhaul(env, "start", str(ROOT / "configs" / preset), "--name", name, *sets)
    run_dir = tmp / "runs" / name
    wait(lambda: status(env, name)["last_checkpoint_age"] is not None, 1800, f"{name}'s first checkpoint", 2.0)
    steps = len(train_records(run_dir))
    wait(lambda: len(train_records(run_dir)) >= steps + 3, 600, f"{name} to train on")
    pid = status(env, name)["pid"]
    killed = time.time()
    os.killpg(pid, signal.SIGKILL)
    wait(lambda: status(env, name)["state"] == "interrupted", 60, f"{name} interrupted")
    resume_at = time.time()
    longhaul(env, "resume", name)
    record = wait(lambda: first_step_after(run_dir, killed), 1800, f"{name}'s first step after resume", 0.1)
    compiles = [e for e in read_events(run_dir) if e.get("kind") == "compile"]
    longhaul(env, "stop", name)
    result = {"kill_to_first_step_s": round(record["time"] - killed, 1),
              "resume_cmd_to_first_step_s": round(record["time"] - resume_at, 1),
              "resumed_at_step": record["step"]}
    if compiles:
        result["compile_s_on_resume"] = compiles[-1]["data"]["seconds"]
        result["cache_hits_on_resume"] = compiles[-1]["data"]["cache_hits"]
    print(name, result, flush=True)
    return result


def read_events(run_dir: Path) -> list[dict]:
    from trainer.run.events import read_events as read

    return read(run_dir / "events.jsonl")[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=",".join(CASES))
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        images = image_folder(Path(tmp) / "images")
        cache = Path(tmp) / "inductor"
        for name in args.cases.split(","):
            results[name] = one_case(name, images, Path(tmp), cache)
            wait(lambda: status(dict(os.environ, LONGHAUL_ROOT=str(Path(tmp) / "runs"),
                                     XDG_RUNTIME_DIR=str(Path(tmp) / "rt"), PYTHONPATH=str(ROOT)),
                                name)["state"] in ("stopped", "finished"), 600, f"{name} to stop")
    print(json.dumps({"cases": results}))


if __name__ == "__main__":
    main()
