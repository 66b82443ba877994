"""Inference speed of an exported model: PyTorch eager, TorchScript and ONNX Runtime, 2 threads.

What is timed is what `longhaul export-model` writes: the run's model *with its preprocessing in
the graph* (trainer/posthoc/export_graph.py), base examples -> calibrated probabilities. Eager is
that same module in PyTorch (channels_last, as the Classifier runs the model); `classifier` is the
Classifier's own path (torchaudio features one example at a time, then the model: what `longhaul
predict` runs), for reference; TorchScript is its
trace (`--format torchscript`, plus a frozen variant: torch.jit.freeze + optimize_for_inference,
which folds BatchNorm into the convolutions), ONNX is `--format onnx` run by ONNX Runtime
(graph optimisation level ALL). Models (random weights, 8 / 3 classes):
- quickstart: efficientnet_b0 on 1x64x63 log-mel, input one 1 s window at 16 kHz;
- v2s: tf_efficientnetv2_s on a 3 x SIZE x SIZE image (default 224).
For each: latency p50/p95 of one example (batch 1) and throughput at batch 32 (examples/s,
from the median batch time), and the speed-up of each exported form over eager and over the
Classifier. The STFT is a DFT convolution in the graph (exact, exportable): for the quickstart
shape it costs about as much as efficientnet_b0 itself, in every form (ONNX's own STFT op measured
no faster in ONNX Runtime 1.32).
--profile adds, per model, the share of time per operator kind in eager (torch.profiler) and in
ONNX Runtime (its profiler), batch 32: where the time goes when the speed-up is small.

    python bench/predict.py [--quick] [--threads 2] [--size 224] [--profile]
JSON on the last line. --quick: few repeats and a 96 px image (a smoke run of the script).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainer import models  # noqa: E402
from trainer.config import RunConfig  # noqa: E402
from trainer.data.features import FeatureExtractor  # noqa: E402
from trainer.posthoc import export_graph  # noqa: E402
from trainer.posthoc.classifier import Classifier  # noqa: E402

QUICKSTART = {"name": "quickstart", "data": {"source": "synthetic", "sample_rate": 16000, "duration": 1.0},
              "features": {"kind": "mel", "n_fft": 512, "hop_length": 256, "n_mels": 64},
              "model": {"name": "efficientnet_b0"}, "phases": [{"name": "learn", "epochs": 1}]}


def v2s_config(size: int) -> dict:
    return {"name": "v2s", "data": {"source": "image_folder", "root": ".", "image_size": size, "image_channels": 3},
            "features": {"kind": "image"}, "model": {"name": "tf_efficientnetv2_s"},
            "phases": [{"name": "learn", "epochs": 1}]}


def classifier(raw: dict, n_classes: int) -> Classifier:
    cfg = RunConfig.model_validate(raw)
    shape = FeatureExtractor(cfg).output_shape
    torch.manual_seed(0)
    model = models.build_model(cfg, n_classes, shape[0], shape)
    with torch.no_grad():
        models.classifier(model).weight.normal_(0.0, 1.0)
    return Classifier(cfg, model, [f"c{i}" for i in range(n_classes)])


def runners(clf: Classifier, folder: Path, threads: int) -> dict:
    """name -> function(float32 numpy batch) -> probabilities."""
    import onnxruntime

    module = export_graph.Exported(clf).eval()
    example = torch.from_numpy(_batch(clf, 2))
    name = export_graph.input_name(clf)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(module, example, check_trace=False)
        frozen = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(module, example, check_trace=False)))
        path = folder / f"{clf.cfg.name}.onnx"
        torch.onnx.export(module, (example,), str(path), input_names=[name], output_names=["probs", "logits"],
                          dynamic_axes={name: {0: "batch"}, "probs": {0: "batch"}, "logits": {0: "batch"}},
                          opset_version=17, dynamo=False)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def torch_runner(fn):
        def run(x):
            with torch.no_grad():
                return fn(torch.from_numpy(x))[0].numpy()
        return run
    def classifier_path(x):  # what `longhaul predict` runs: torchaudio features one by one, then the model
        return clf.probabilities(clf.logits(torch.stack([clf.inputs(b) for b in x]))).numpy()
    return {"eager": torch_runner(module), "classifier": classifier_path, "torchscript": torch_runner(traced),
            "torchscript_frozen": torch_runner(frozen), "onnxruntime": lambda x: session.run(["probs"], {name: x})[0]}


def _batch(clf: Classifier, n: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    if clf.image:
        return rng.integers(0, 256, (n, *clf.input_shape)).astype(np.float32)
    return (rng.standard_normal((n, clf.decoder.n_samples)) * 0.1).astype(np.float32)


def timings(forms: dict, x: np.ndarray, repeats: int, warmup: int = 3) -> dict[str, list[float]]:
    """Seconds per call of each form, the forms taking turns (a change of load on a shared box
    then hits them all alike); TorchScript's profiling executor optimises after its first calls."""
    for run in forms.values():
        for _ in range(warmup):
            run(x)
    out: dict[str, list[float]] = {name: [] for name in forms}
    for _ in range(repeats):
        for name, run in forms.items():
            start = time.perf_counter()
            run(x)
            out[name].append(time.perf_counter() - start)
    return out


def measure(clf: Classifier, threads: int, latency_reps: int, batch_reps: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        forms = runners(clf, Path(tmp), threads)
        one, batch = _batch(clf, 1), _batch(clf, 32)
        ref = forms["eager"](batch)
        lat, thr = timings(forms, one, latency_reps), timings(forms, batch, batch_reps)
        result = {}
        for name, run in forms.items():
            result[name] = {"p50_ms": round(1000 * float(np.percentile(lat[name], 50)), 2),
                            "p95_ms": round(1000 * float(np.percentile(lat[name], 95)), 2),
                            "batch32_per_s": round(32 / statistics.median(thr[name]), 1),
                            "max_abs_diff": float(np.abs(run(batch) - ref).max())}
            print(f"{clf.cfg.name:10} {name:18} p50 {result[name]['p50_ms']:8.2f} ms  p95 "
                  f"{result[name]['p95_ms']:8.2f} ms  batch 32: {result[name]['batch32_per_s']:8.1f}/s", flush=True)
    for base in ("eager", "classifier"):
        rate = result[base]["batch32_per_s"]
        result[f"speedup_vs_{base}"] = {name: round(result[name]["batch32_per_s"] / rate, 2)
                                        for name in ("torchscript", "torchscript_frozen", "onnxruntime")}
    return result


def profile(clf: Classifier, threads: int) -> dict:
    """Share of time per operator kind, batch 32, eager and ONNX Runtime (top 8 each)."""
    import onnxruntime

    module, x = export_graph.Exported(clf).eval(), _batch(clf, 32)
    with torch.no_grad(), torch.profiler.profile() as prof:
        for _ in range(3):
            module(torch.from_numpy(x))
    eager = Counter({e.key: e.self_cpu_time_total for e in prof.key_averages()})
    with tempfile.TemporaryDirectory() as tmp:
        path, name = Path(tmp) / "m.onnx", export_graph.input_name(clf)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, (torch.from_numpy(x[:2]),), str(path), input_names=[name],
                              output_names=["probs", "logits"], dynamic_axes={name: {0: "batch"}},
                              opset_version=17, dynamo=False)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads, options.enable_profiling = threads, True
        options.profile_file_prefix = str(Path(tmp) / "ort")
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        for _ in range(3):
            session.run(["probs"], {name: x})
        events = json.loads(Path(session.end_profiling()).read_text())
    ort = Counter()
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            ort[e["args"].get("op_name", "?")] += e["dur"]
    return {"eager": _shares(eager), "onnxruntime": _shares(ort)}


def _shares(counter: Counter) -> dict:
    total = sum(counter.values()) or 1
    return {k: round(v / total, 3) for k, v in counter.most_common(8)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="few repeats, 96 px image (smoke run)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--size", type=int, default=None, help="v2s image size (default 224; 96 with --quick)")
    parser.add_argument("--profile", action="store_true", help="time per operator kind, eager and ONNX Runtime")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    size = args.size or (96 if args.quick else 224)
    reps = {"quickstart": (5, 3) if args.quick else (60, 12), "v2s": (3, 2) if args.quick else (30, 6)}
    summary = {"threads": args.threads, "quick": args.quick, "v2s_size": size, "torch": torch.__version__}
    for key, clf in (("quickstart", classifier(QUICKSTART, 8)), ("v2s", classifier(v2s_config(size), 3))):
        summary[key] = measure(clf, args.threads, *reps[key])
        if args.profile:
            summary[key]["profile"] = profile(clf, args.threads)
    import onnxruntime

    summary["onnxruntime"] = onnxruntime.__version__
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
