"""Do the shipped audio presets learn on real recordings? Train each on a spoken-word set, test on unseen voices.

    python bench/learning.py [--presets b0,mfcc] [--size default|small] [--time-budget SECONDS]
                             [--data DIR] [--out DIR] [--set KEY=VALUE ...]

Makes (or reuses, --data) the espeak-ng command-word set of bench/speech_data.py, whose
validation and test voices never speak in training. Each preset is trained with
`python -m trainer.cli train` changing only where the data is and `auto` for the sample rate and
clip length - what a new user would change. Then best.pt is scored on the validation and test
splits with the engine's own data and model code (trainer.data.build_datasets,
trainer.models.build_model). Per preset it prints epochs run, wall time, peak RSS of the training
process, and validation and test accuracy; the last line is one JSON object with all of it.

--time-budget is a wall-clock limit per preset (for B2): a run still going when it is spent is
stopped (SIGINT: checkpoint and stop) and its best.pt so far is scored. To shorten the plan
itself instead, pass --set phases.1.epochs=N.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import speech_data  # noqa: E402

PRESETS = {
    "b0": "audio_efficientnet_b0_fast.yaml",
    "b1": "audio_efficientnet_b1_balanced.yaml",
    "b2": "audio_efficientnet_b2_quality.yaml",
    "mfcc": "mfcc_mlp.yaml",
    "waveform": "waveform_cnn1d_attention.yaml",
}
# Only where the data is, and `auto` for what the data decides.
DATA_OVERRIDES = ["data.source=audio_folder", "data.train=null", "data.val=null", "data.test=null", "data.classes=null",
                  "data.sample_rate=auto", "data.duration=auto"]


def overrides(data_root: Path) -> list[str]:
    return [f"data.root={data_root}"] + DATA_OVERRIDES


def train(preset: str, data_root: Path, run_dir: Path, extra: list[str], budget: float | None) -> dict:
    """Train one preset in a child process; wall time, peak RSS, exit code, whether cut by budget."""
    cmd = [sys.executable, "-m", "trainer.cli", "train", str(ROOT / "configs" / PRESETS[preset]),
           "--run-dir", str(run_dir), "--quiet"]
    for item in overrides(data_root) + extra:
        cmd += ["--set", item]
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    started = time.monotonic()
    log = open(run_dir.parent / f"{run_dir.name}.log", "wb")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    cut = threading.Event()
    if budget:
        def stop_at_budget():
            if proc.poll() is None:
                cut.set()
                proc.send_signal(signal.SIGINT)  # checkpoint and stop; best.pt so far stays
        timer = threading.Timer(budget, stop_at_budget)
        timer.start()
    _, status, usage = os.wait4(proc.pid, 0)  # rusage of this child alone
    proc.returncode = os.waitstatus_to_exitcode(status)
    if budget:
        timer.cancel()
    log.close()
    return {"wall_s": round(time.monotonic() - started, 1), "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
            "exit_code": proc.returncode, "cut_by_budget": cut.is_set(),
            "log": str(run_dir.parent / f"{run_dir.name}.log")}


def epochs_run(run_dir: Path) -> int:
    from trainer.history import read_history
    from trainer.run.rundir import RunDir

    epochs = [r.get("epoch", 0) for r in read_history(RunDir(run_dir).history) if r.get("kind") == "eval"]
    return max(epochs, default=0)


def score(run_dir: Path) -> dict:
    """Accuracy of run_dir/best.pt on val and test, through the engine's data and model code."""
    import torch

    from trainer import models
    from trainer.config import load_config
    from trainer.data import build_datasets, make_loader
    from trainer.run.rundir import RunDir

    files = RunDir(run_dir)
    best = files.best_weights
    if not best.exists():
        return {"val_accuracy": None, "test_accuracy": None, "note": "no best.pt"}
    cfg = load_config(files.config, check_model=False)
    torch.set_num_threads(cfg.threads)
    data = build_datasets(cfg, frozen=files.data_auto)  # the run's own auto values
    model = models.build_model(cfg, len(data.classes), data.in_chans, data.input_shape)
    model.load_state_dict(torch.load(best, map_location="cpu", weights_only=False)["model"])
    model.eval()
    out = {}
    for split, dataset in (("val", data.val), ("test", data.test)):
        if dataset is None:
            out[f"{split}_accuracy"] = None
            continue
        predicted = []
        with torch.no_grad():
            for x, _ in make_loader(dataset, 64, sampler=None, num_workers=0):
                predicted += model(x).argmax(dim=1).tolist()
        wrong = [item for item, p in zip(dataset.examples.items, predicted) if p != item.label]
        out[f"{split}_accuracy"] = round(1 - len(wrong) / len(dataset), 4)
        if split == "test":
            out["test_errors_by_voice"] = errors_by_voice(wrong)
    out["chance"] = round(1 / len(data.classes), 4)
    out["input"] = f"{data.data_config.sample_rate} Hz, {data.data_config.duration:g} s, shape {list(data.input_shape)}"
    return out


def errors_by_voice(wrong_items) -> dict:
    """Wrongly classified test clips per speaker variant (the `+variant` of speech_data's file
    names), most first: whether the errors are spread out or one unusual voice."""
    import collections

    counts = collections.Counter(Path(str(item.where)).stem.split("_")[1].split("+")[-1] for item in wrong_items)
    return dict(counts.most_common())


def run_preset(preset: str, data_root: Path, out: Path, extra: list[str], budget) -> dict:
    run_dir = out / preset
    result = {"preset": preset, "config": PRESETS[preset], **train(preset, data_root, run_dir, extra, budget)}
    result["epochs"] = epochs_run(run_dir)
    result.update(score(run_dir))
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", default=",".join(PRESETS), help=f"comma-separated, of {','.join(PRESETS)}")
    parser.add_argument("--size", choices=sorted(speech_data.SIZES), default="default")
    parser.add_argument("--time-budget", type=float, default=None,
                        help="seconds per preset; a run still going then is stopped and scored")
    parser.add_argument("--data", type=Path, default=None, help="an existing speech_data set (else generated)")
    parser.add_argument("--out", type=Path, default=None, help="where run directories go (default: a temp dir)")
    parser.add_argument("--set", action="append", default=[], help="extra override for every preset, e.g. phases.1.epochs=10")
    args = parser.parse_args(argv)
    presets = [p.strip() for p in args.presets.split(",") if p.strip()]
    unknown = [p for p in presets if p not in PRESETS]
    if unknown:
        parser.error(f"unknown preset(s) {unknown}; choose from {', '.join(PRESETS)}")
    out = args.out or Path(tempfile.mkdtemp(prefix="longhaul-learning-"))
    out.mkdir(parents=True, exist_ok=True)
    data_root = args.data
    if data_root is None:
        data_root = out / "speech"
        manifest = speech_data.generate(data_root, args.size)
        print(f"data: {sum(manifest['clips'].values())} clips in {manifest['seconds']} s -> {data_root}", flush=True)
    results = []
    for preset in presets:
        r = run_preset(preset, data_root, out, args.set, args.time_budget)
        results.append(r)
        print(f"{preset:9s} epochs {r['epochs']:3d}  wall {r['wall_s']:8.1f} s  peak RSS {r['peak_rss_mb']:7.1f} MB  "
              f"val acc {r['val_accuracy']}  test acc {r['test_accuracy']}  (chance {r.get('chance')}; "
              f"exit {r['exit_code']}{', cut by budget' if r['cut_by_budget'] else ''})", flush=True)
    print(json.dumps({"data": str(data_root), "size": args.size, "results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
