"""What a new user tripped over in the CLI (issue 13): `export | head` tracebacks, `pid None`,
`stop` of a stopped run exiting 2, epochs counted from 0, hints naming a `longhaul` not on PATH;
and the best metric and samples/s of `ls`, read cheaply from the end of the history."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import msgpack
import pytest

sys.path.insert(0, str(Path(__file__).parent))

import tui_fakes  # noqa: E402
from longhaul_cli import ROOT, cli_env  # noqa: E402

from trainer import cli  # noqa: E402
from trainer.history.tail import recent_rate, tail_records  # noqa: E402
from trainer.run.status import list_runs  # noqa: E402


@pytest.fixture
def runs(tmp_path, monkeypatch) -> Path:
    """A runs root with a finished run (all 15 epochs) and a stopped one (epoch 5 of 15)."""
    root = tmp_path / "runs"
    tui_fakes.write_run_dir(root / "done", state="finished", steps=18_750, finished=True)
    tui_fakes.write_run_dir(root / "halfway", state="stopped", steps=6_000)
    monkeypatch.setenv("LONGHAUL_ROOT", str(root))
    return root


def run_cli(capsys, *args) -> tuple[int, str, str]:
    code = cli.main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


# ----------------------------------------------------------------------------- status
def test_status_counts_epochs_from_one_capped_at_the_total(runs, capsys):
    """Reported: a finished run read `epoch 9/8` in the TUI while status --json counted from 0."""
    _, out, _ = run_cli(capsys, "status", "done", "--json")
    info = json.loads(out)
    assert info["epoch"] == 15 and info["total_epochs"] == 15
    _, out, _ = run_cli(capsys, "status", "halfway", "--json")
    assert json.loads(out)["epoch"] == 5  # step 6,000 at 1,250 steps an epoch: the 5th epoch
    _, out, _ = run_cli(capsys, "status", "done")
    assert "epoch 15/15" in out.splitlines()[0]


def test_status_says_no_daemon_instead_of_pid_none(runs, capsys):
    """Reported: `status` printed `pid None` for a run without a daemon."""
    code, out, _ = run_cli(capsys, "status", "done")
    assert code == 0 and "None" not in out and "no daemon" in out


def test_status_and_ls_show_the_best_metric_and_samples_per_second(runs, capsys):
    _, out, _ = run_cli(capsys, "status", "done", "--json")
    info = json.loads(out)
    assert info["best"]["metric"] == "val_f1_macro" and info["best"]["label"] == "F1"
    assert info["best"]["value"] == pytest.approx(info["best_eval"]["val_f1_macro"])
    assert 20.0 <= info["samples_per_s"] <= 20.8 and info["model"] == "efficientnet_b0"
    _, out, _ = run_cli(capsys, "ls")
    header, *rows = out.splitlines()
    assert "BEST" in header and "SAMPLES/S" in header
    done = next(row for row in rows if row.startswith("done"))
    assert f"F1 {info['best']['value']:.3f}" in done and " 20" in done
    _, out, _ = run_cli(capsys, "ls", "--json")
    assert {r["name"]: r["best"]["label"] for r in json.loads(out)} == {"done": "F1", "halfway": "F1"}


def test_ls_sorts_and_filters_like_the_picker(runs, capsys):
    """`ls --sort/--filter` share the picker's rule (trainer.run.status.ordered)."""
    def names(*args):
        _, out, _ = run_cli(capsys, "ls", "--json", *args)
        return [r["name"] for r in json.loads(out)]

    assert names() == ["done", "halfway"]  # by name, as before
    assert names("--sort", "state") == ["halfway", "done"]  # stopped before finished (RUN_STATES)
    _, out, _ = run_cli(capsys, "ls", "--json", "--sort", "samples/s")
    rates = [r["samples_per_s"] for r in json.loads(out)]
    assert rates == sorted(rates, reverse=True)  # fastest first
    assert names("--filter", "HALF") == ["halfway"] and names("--filter", "stopped") == ["halfway"]
    assert names("--filter", "nothing-like-it") == []
    code, out, _ = run_cli(capsys, "ls", "--filter", "nothing-like-it")
    assert code == 0 and "no run matches 'nothing-like-it'" in out
    with pytest.raises(SystemExit):
        cli.main(["ls", "--sort", "size"])


# ----------------------------------------------------------------------------- stop
def test_stop_of_a_run_that_is_not_running_succeeds_saying_so(runs, capsys, runtime_dir):
    """Reported: `stop` on a stopped run exited 2; like `systemctl stop`, the wanted end holds."""
    code, out, err = run_cli(capsys, "stop", "done")
    assert code == 0 and "not running (finished); nothing to stop" in out and not err
    code, _, err = run_cli(capsys, "pause", "done")  # a pause cannot hold: still an error
    assert code == 2 and "no running daemon" in err


# ----------------------------------------------------------------------------- pipes
@pytest.mark.parametrize("command", [["export", "done"], ["export", "done", "--format", "csv"], ["ls", "--json"],
                                     ["logs", "done", "-n", "100000"]])
def test_a_reader_that_leaves_early_ends_the_command_quietly(runs, tmp_path, command):
    """Reported: `longhaul export ... | head` ended in a BrokenPipeError traceback."""
    (runs / "done" / "train.log").write_text("a log line of the run\n" * 20_000)  # more than a pipe holds
    env = cli_env(runs, tmp_path / "xdg")
    producer = subprocess.Popen([sys.executable, "-m", "trainer.cli", *command], cwd=ROOT, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    head = subprocess.run(["head", "-1"], stdin=producer.stdout, capture_output=True, timeout=60)
    producer.stdout.close()
    err = producer.stderr.read().decode()
    code = producer.wait(timeout=60)
    assert head.stdout.strip(), "head saw no line"
    assert "Traceback" not in err and "BrokenPipe" not in err and err == "", err
    assert code in (0, 141)  # 141: the status a unix tool has after SIGPIPE (0: all of it fit in the pipe)


# ----------------------------------------------------------------------------- hints
def test_hints_name_a_longhaul_command_that_runs(tmp_path, monkeypatch):
    """Reported: the printed `longhaul attach qs1` did not run: the venv was not on PATH."""
    bin_dir = tmp_path / "venv" / "bin"
    bin_dir.mkdir(parents=True)
    entry = bin_dir / "longhaul"
    entry.write_text("#!/bin/sh\n")
    entry.chmod(0o755)
    monkeypatch.setattr(sys, "argv", [str(entry), "start"])
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    assert cli.longhaul_command() == str(entry)  # not on PATH: its full path
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    assert cli.longhaul_command() == "longhaul"  # on PATH, and the same file
    other = tmp_path / "other" / "longhaul"
    other.parent.mkdir()
    other.write_text("#!/bin/sh\n")
    other.chmod(0o755)
    monkeypatch.setenv("PATH", f"{other.parent}:/usr/bin:/bin")
    assert cli.longhaul_command() == str(entry)  # another longhaul first on PATH: not that one
    monkeypatch.setattr(sys, "argv", [str(ROOT / "trainer" / "cli.py")])
    monkeypatch.setattr(sys, "executable", "/nowhere/python3")
    assert cli.longhaul_command() == "/nowhere/python3 -m trainer.cli"  # from a source tree


def test_readme_activates_the_venv_before_bare_longhaul_commands():
    readme = (ROOT / "README.md").read_text()
    assert "source .venv/bin/activate" in readme
    assert readme.index("source .venv/bin/activate") < readme.index("`longhaul attach RUN`")


# ----------------------------------------------------------------------------- the history's tail
def write_records(path: Path, records: list[dict]) -> None:
    path.write_bytes(b"".join(msgpack.packb(r, use_bin_type=True) for r in records))


def train(step: int, rate: float) -> dict:
    return {"kind": "train", "step": step, "epoch": 0, "phase": 0, "time": 1.0, "train_loss": 0.5,
            "samples_per_s": rate}


def test_recent_rate_weighs_steps_by_their_time(tmp_path):
    path = tmp_path / "history.msgpack"
    assert recent_rate(path) is None  # no history yet
    write_records(path, [train(1, 100.0), train(2, 25.0)])
    assert recent_rate(path) == pytest.approx(40.0)  # 2 steps' samples over their time, not the mean 62.5
    write_records(path, [train(s, 10.0) for s in range(1, 100)] + [train(s, 50.0) for s in range(100, 120)])
    assert recent_rate(path) == pytest.approx(50.0)  # only the newest 20


def test_the_tail_is_found_without_reading_the_whole_file(tmp_path):
    """A damaged start (which stops a whole-file reader) does not matter: only the end is read."""
    path = tmp_path / "history.msgpack"
    body = b"".join(msgpack.packb(train(s, 30.0), use_bin_type=True) for s in range(1, 5000))
    path.write_bytes(b"\xc1" * 100 + body + msgpack.packb(train(5000, 30.0))[:9])  # torn last record
    records = tail_records(path)
    assert records[-1]["step"] == 4999 and recent_rate(path) == pytest.approx(30.0)
    assert len(records) < 1000  # a window at the end, not the file


def test_the_tail_skips_kind_inside_values_and_reads_past_a_long_last_record(tmp_path):
    path = tmp_path / "history.msgpack"
    confusion = {"per_class": {f"kind{i}": {"kind": "x" * 50} for i in range(2000)}}  # ~150 KB, `kind` inside
    write_records(path, [train(s, 12.0) for s in range(1, 30)]
                  + [{"kind": "eval", "step": 29, "epoch": 0, "phase": 0, "time": 1.0, **confusion}])
    assert path.stat().st_size > 100_000
    assert recent_rate(path) == pytest.approx(12.0)
    assert tail_records(path)[-1]["kind"] == "eval"


def test_ls_with_50_runs_reads_little(tmp_path):
    """ls stays cheap: each run costs a state.json, a plan.json and the last 16 KB of its history."""
    root = tmp_path / "runs"
    record = msgpack.packb(train(1, 20.0), use_bin_type=True)
    for i in range(50):
        run_dir = root / f"r{i:02d}"
        run_dir.mkdir(parents=True)
        (run_dir / "state.json").write_text(json.dumps({"name": run_dir.name, "state": "stopped", "step": 1}))
        (run_dir / "history.msgpack").write_bytes(record * 20_000)  # 2 MB each: 100 MB in all
    start = time.perf_counter()
    infos = list_runs(root)
    elapsed = time.perf_counter() - start
    assert len(infos) == 50 and all(info["samples_per_s"] == pytest.approx(20.0) for info in infos)
    assert elapsed < 2.0, f"{elapsed:.2f} s"  # ~0.02 s here; reading 100 MB would not fit


def test_status_of_a_fresh_run_directory_has_no_best_nor_rate(tmp_path):
    run_dir = tmp_path / "fresh"
    run_dir.mkdir()
    (run_dir / "state.json").write_text(json.dumps({"name": "fresh", "state": "stopped"}))
    info = list_runs(tmp_path)[0]
    assert info["best"] is None and info["samples_per_s"] is None and info["epoch"] is None
    assert info["total_epochs"] is None and info["started"] is None


def test_a_growing_history_is_read_again_an_unchanged_one_is_not(tmp_path, monkeypatch):
    """The picker lists every 2 s: finished runs cost a stat, a live run's speed still moves."""
    from trainer.run import status as run_status

    run_dir = tmp_path / "live"
    run_dir.mkdir()
    (run_dir / "state.json").write_text(json.dumps({"name": "live", "state": "stopped"}))
    path = run_dir / "history.msgpack"
    write_records(path, [train(s, 10.0) for s in range(1, 30)])
    assert list_runs(tmp_path)[0]["samples_per_s"] == pytest.approx(10.0)
    reads = []
    monkeypatch.setattr(run_status, "recent_rate", lambda p: reads.append(p) or recent_rate(p))
    assert list_runs(tmp_path)[0]["samples_per_s"] == pytest.approx(10.0) and reads == []
    with open(path, "ab") as f:
        f.write(b"".join(msgpack.packb(train(s, 40.0), use_bin_type=True) for s in range(30, 60)))
    assert list_runs(tmp_path)[0]["samples_per_s"] == pytest.approx(40.0) and len(reads) == 1


def test_start_attach_opens_the_dashboard_under_the_root_given(tmp_path, monkeypatch, capsys):
    """Seen: `longhaul --root R start ... --attach`, then Esc: the run list was of ./checkpoints."""
    import trainer.daemon
    import tui.app

    opened = {}
    monkeypatch.setattr(trainer.daemon, "launch_daemon", lambda run_dir: 4242)
    monkeypatch.setattr(tui.app, "run_attach", lambda run, root: opened.update(run=run, root=root) or 0)
    root = tmp_path / "elsewhere"
    config = Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml"
    assert cli.main(["--root", str(root), "start", str(config), "--name", "qs", "--attach"]) == 0
    assert Path(opened["root"]) == root and Path(opened["run"]) == root / "qs"
