"""float16 against float32 feature stores: the same short training from each, side by side.

    python bench/store_dtype.py [--preset mfcc|b0] [--epochs 15] [--data DIR] [--size default]
                                [--out DIR] [--set KEY=VALUE ...]

Data: --data (a folder of ROOT/{train,val,test}/<class>/*.wav), else the espeak-ng spoken-word set
of bench/speech_data.py (made in OUT when espeak-ng and sox are installed; unseen voices in
validation and test), else a bench/corpus.py corpus of 5,000 clips. Each dtype gets its own store
(`longhaul prepare`: time and disk use), then one `longhaul train` of the preset (learning.py's
data overrides, phases.0.epochs=--epochs; samples/s and data share from the history, peak RSS),
then `longhaul evaluate --split test` of its best weights. Progress on stderr; the last line of
stdout is one JSON object: both results and the float16/float32 ratios and accuracy differences.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import corpus  # noqa: E402
import data_scale  # noqa: E402
import learning  # noqa: E402
import speech_data  # noqa: E402
from data_scale import Bench, log  # noqa: E402

DTYPES = ("float16", "float32")
CORPUS_FILES = 5000


def find_data(args, out: Path) -> tuple[Path, str, dict]:
    """(data root, what it is, config changes that point a preset at it)."""
    if args.data:
        return args.data.absolute(), "given", {}
    if not speech_data.tools_missing():
        root = out / "speech"
        log(f"making the espeak-ng spoken-word set ({args.size}) in {root}")
        manifest = speech_data.generate(root, args.size)
        return root, f"speech_data {args.size}: {manifest['clips']}", {}
    root = out / "corpus"
    log(f"espeak-ng or sox missing: a corpus of {CORPUS_FILES} clips in {root}")
    info = corpus.make_audio(root, CORPUS_FILES, workers=2, progress=corpus.stderr_progress("audio"))
    return root, f"bench/corpus.py {info['files']} files", {"data.sample_rate": corpus.RATE, "data.duration": 1.0}


def changes(root: Path, store: Path, dtype: str, epochs: int, extra: dict) -> dict:
    base = dict(item.split("=", 1) for item in learning.DATA_OVERRIDES)
    base = {key: (None if value == "null" else value) for key, value in base.items()}
    return {**base, "data.root": str(root), "data.store": str(store), "data.store_dtype": dtype,
            "phases.0.epochs": epochs, **extra}


def test_metrics(bench: Bench, run_dir: Path) -> dict:
    """`longhaul evaluate RUN --split test --json` of the best weights: accuracy and macro F1."""
    done = subprocess.run([sys.executable, "-m", "trainer.cli", "evaluate", str(run_dir), "--split", "test",
                           "--json"], cwd=ROOT, env=bench.env, capture_output=True, text=True)
    if done.returncode != 0:
        return {"error": done.stderr.strip()[-1000:]}
    found = json.loads(done.stdout.strip().splitlines()[-1])
    metrics = found.get("metrics", found)
    return {key: metrics.get(key) for key in ("accuracy", "f1_macro") if key in metrics} or {"raw": found}


def best_eval(run_dir: Path) -> dict:
    from trainer.history import read_history

    evals = [r for r in read_history(run_dir / "history.msgpack") if r.get("kind") == "eval"]
    if not evals:
        return {}
    best = max(evals, key=lambda r: r.get("val_f1_macro") or 0.0)
    return {"epochs": max(r.get("epoch", 0) for r in evals), "best_val_accuracy": best.get("val_accuracy"),
            "best_val_f1_macro": best.get("val_f1_macro")}


def one_dtype(bench: Bench, dtype: str, root: Path, args, extra: dict, files: int) -> dict:
    store = bench.out / "stores" / dtype
    config = bench.config(f"dtype-{dtype}", learning.PRESETS[args.preset],
                          changes(root, store, dtype, args.epochs, extra))
    result = {"prepare": data_scale.prepare(bench, f"prepare-{dtype}", config, 2, files)}
    result["train"] = data_scale.train(bench, f"train-{dtype}", config)
    run_dir = bench.out / "runs" / f"train-{dtype}"
    result["train"].update(best_eval(run_dir))
    result["test"] = test_metrics(bench, run_dir)
    log(f"  {dtype}: test {result['test']}")
    return result


def compare(results: dict) -> dict:
    """float16 / float32: store size, training speed; float16 - float32: accuracies."""
    half, full = results.get("float16", {}), results.get("float32", {})

    def ratio(a, b):
        return round(a / b, 3) if a and b else None

    def diff(a, b):
        return round(a - b, 4) if a is not None and b is not None else None

    return {"store_size_16_over_32": ratio(half.get("prepare", {}).get("store_bytes"),
                                           full.get("prepare", {}).get("store_bytes")),
            "samples_per_s_16_over_32": ratio(half.get("train", {}).get("samples_per_s"),
                                              full.get("train", {}).get("samples_per_s")),
            "prepare_s_16_over_32": ratio(half.get("prepare", {}).get("wall_s"), full.get("prepare", {}).get("wall_s")),
            "test_accuracy_16_minus_32": diff(half.get("test", {}).get("accuracy"), full.get("test", {}).get("accuracy")),
            "best_val_accuracy_16_minus_32": diff(half.get("train", {}).get("best_val_accuracy"),
                                                  full.get("train", {}).get("best_val_accuracy"))}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(learning.PRESETS), default="mfcc")
    parser.add_argument("--epochs", type=int, default=15, help="phases.0.epochs of both runs")
    parser.add_argument("--data", type=Path, default=None, help="an audio folder (default: speech set, else corpus)")
    parser.add_argument("--size", choices=sorted(speech_data.SIZES), default="default", help="speech set size")
    parser.add_argument("--out", type=Path, default=None, help="work folder (default: a new temp folder)")
    parser.add_argument("--set", action="append", default=[], help="extra config override for both runs")
    args = parser.parse_args(argv)
    out = (args.out or Path(tempfile.mkdtemp(prefix="longhaul-store-dtype-"))).absolute()
    bench = Bench(out, learning.PRESETS[args.preset], None, args.set)
    try:
        root, what, extra = find_data(args, out)
        files = sum(1 for _ in root.glob("*/*/*.wav"))
        results = {dtype: one_dtype(bench, dtype, root, args, extra, files) for dtype in DTYPES}
    finally:
        bench.close()
    summary = {"data": str(root), "what": what, "files": files, "preset": args.preset, "epochs": args.epochs,
               "results": results, "compare": compare(results)}
    log(json.dumps(summary["compare"]))
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
