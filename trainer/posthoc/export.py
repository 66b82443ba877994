"""`longhaul export-model RUN --format onnx|torchscript [--out DIR] [--weights best|last]`.

Writes into DIR (default RUN/export-FORMAT):
- `model.onnx` (ONNX opset 17, run by ONNX Runtime) or `model.pt` (TorchScript): the run's model
  *with its feature pipeline inside* (see export_graph.py for where and why), base examples ->
  `probs` (calibrated with the run's temperature) and `logits`, any batch size;
- `preprocessing.json`: what comes before the graph (sample rate, window length, mono mixing,
  resampling; image size, channels, resizing) and, for the record, every feature parameter the
  graph holds (STFT, mel, dB, MFCC, normalisation, image mean/std), the class names, the
  temperature and the parity result;
- `run_onnx.py` (`run_torchscript.py`): a short reference script that classifies files with it.

Parity: at least 64 real examples of the run (its test split, else validation, topped up from
the other splits) go through the Classifier (PyTorch, the run's own preprocessing) and through
the exported file; the largest absolute difference of probabilities is printed and must be
<= 1e-4. Everything is written into a temporary folder beside DIR and renamed into place only
when the check passed: a failed export leaves nothing that looks valid (exit 1).
Without the `export` extra (onnx, onnxruntime) the ONNX format exits 2 naming it.
"""
from __future__ import annotations

import os
import shutil
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from trainer.data.decode import BadItem
from trainer.data.sources import scan
from trainer.posthoc import export_graph
from trainer.posthoc.classifier import Classifier, ClassifierError, load_classifier
from trainer.run.rundir import RunDir, atomic_write_bytes, atomic_write_json, fsync_dir

TOLERANCE = 1e-4
MIN_EXAMPLES = 64
OPSET = 17
MODEL_FILES = {"onnx": "model.onnx", "torchscript": "model.pt"}
SCRIPTS = {"onnx": "run_onnx.py", "torchscript": "run_torchscript.py"}
SPEC_FILE = "preprocessing.json"
EXTRA_HINT = "pip install 'longhaul[export]'"


class ExportError(Exception):
    """An export that cannot be made (said to the user, exit 2)."""


def main(args, run_dir: Path) -> int:
    fmt, weights = args.format, args.weights
    if fmt == "onnx" and (missing := missing_extra()):
        print(f"longhaul export-model: --format onnx needs {missing}, which is not installed: {EXTRA_HINT}",
              file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else RunDir(run_dir).export_dir(fmt)
    try:
        clf = load_classifier(run_dir, weights)
        check_out_dir(out)
        bases, where = parity_examples(clf)
        result = export(clf, fmt, out, bases, where)
    except (ClassifierError, ExportError) as exc:
        print(f"longhaul export-model: {exc}", file=sys.stderr)
        return 2
    line = (f"parity: {result['examples']} examples ({result['split']}), max |dp| = {result['max_abs_diff']:.2e} "
            f"(limit {TOLERANCE:.0e}), max |dlogit| = {result['max_abs_logit_diff']:.2e}")
    if not result["passed"]:
        print(f"{line}: FAILED, nothing written to {out}", file=sys.stderr)
        return 1
    print(line)
    print(f"exported {fmt} ({weights}.pt, step {clf.step}, temperature {clf.temperature:.4g}) to {out}: "
          f"{MODEL_FILES[fmt]}, {SPEC_FILE}, {SCRIPTS[fmt]}")
    return 0


def missing_extra() -> str:
    """The first module of the `export` extra that cannot be imported, or ''."""
    for module in ("onnx", "onnxruntime"):
        try:
            __import__(module)
        except ImportError:
            return module
    return ""


def check_out_dir(out: Path) -> None:
    """DIR may be new, empty or an earlier export (replaced); anything else is refused."""
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out {out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / SPEC_FILE).exists():
        raise ExportError(f"--out {out} is a folder that holds other files, not an earlier export: choose another")


# ----------------------------------------------------------------------------- examples
def parity_examples(clf: Classifier, count: int = MIN_EXAMPLES) -> tuple[list[np.ndarray], str]:
    """`count` base examples spread over the test split (else validation), topped up from the
    other splits when it is smaller; which splits, said as e.g. "val 64"."""
    try:
        found = scan(clf.cfg)
    except (OSError, ValueError) as exc:
        raise ExportError(f"cannot list the run's data for the parity check: {exc}") from exc
    bases, used = [], []
    for split in ("test", "val", "train"):
        items = found.splits.get(split) or []
        need = count - len(bases)
        if need <= 0 or not items:
            continue
        picked = [items[int(i)] for i in np.unique(np.linspace(0, len(items) - 1, min(need, len(items))).round())]
        loaded = _load(clf, picked)
        bases += loaded
        used.append(f"{split} {len(loaded)}")
    if not bases:
        why = f": {found.problems[0].path}: {found.problems[0].reason}" if found.problems else ""
        raise ExportError(f"no example of the run's data ({found.location}) could be read for the parity check{why}")
    return bases, ", ".join(used)


def _load(clf: Classifier, items) -> list[np.ndarray]:
    out = []
    for item in items:
        try:
            out.append(item.load(clf.decoder).base)
        except BadItem:
            continue
    return out


# ----------------------------------------------------------------------------- export
def export(clf: Classifier, fmt: str, out: Path, bases: list[np.ndarray], where: str) -> dict:
    """Write the export into a temporary folder, check parity, rename it to `out` when it passed."""
    module = export_graph.Exported(clf).eval()
    tmp = out.parent / f".{out.name}.tmp-{time.time_ns()}"
    tmp.mkdir(parents=True)
    try:
        write_model(module, clf, fmt, tmp / MODEL_FILES[fmt], bases)
        _fsync(tmp / MODEL_FILES[fmt])
        result = parity(clf, load_exported(fmt, tmp / MODEL_FILES[fmt], clf), bases, where)
        if result["passed"]:
            atomic_write_json(tmp / SPEC_FILE, spec(clf, fmt, result))
            atomic_write_bytes(tmp / SCRIPTS[fmt], (Path(__file__).parent / "run_onnx.py").read_bytes())
            _replace(tmp, out)
        return result
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_model(module: torch.nn.Module, clf: Classifier, fmt: str, path: Path, bases: list[np.ndarray]) -> None:
    example = export_graph.example_batch(clf, bases[:2])
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter's deprecation notices
        if fmt == "torchscript":
            torch.jit.save(torch.jit.trace(module, example, check_trace=False), str(path))
        else:
            _onnx_export(module, example, export_graph.input_name(clf), path)


def _onnx_export(module: torch.nn.Module, example: torch.Tensor, name: str, path: Path) -> None:
    """The TorchScript-based exporter (dynamo=False): about a second, where the dynamo exporter
    takes 5-10 s for an EfficientNet, and it handles every model longhaul builds at opset 17.
    nn.MultiheadAttention's inference fast path is turned off meanwhile: its fused op has no
    ONNX form (the ordinary path computes the same)."""
    batch = {0: "batch"}
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        torch.onnx.export(module, (example,), str(path), input_names=[name], output_names=["probs", "logits"],
                          dynamic_axes={name: batch, "probs": batch, "logits": batch}, opset_version=OPSET,
                          dynamo=False, do_constant_folding=True)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)


def load_exported(fmt: str, path: Path, clf: Classifier):
    """The exported file as a function: float32 batch -> (probs, logits) numpy arrays."""
    if fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            loaded = torch.jit.load(str(path), map_location="cpu").eval()

        def run_script(x: np.ndarray):
            with torch.no_grad():
                return tuple(t.numpy() for t in loaded(torch.from_numpy(x)))
        return run_script
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = max(1, torch.get_num_threads())
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = export_graph.input_name(clf)
    return lambda x: tuple(session.run(["probs", "logits"], {name: x}))


def parity(clf: Classifier, run, bases: list[np.ndarray], where: str, batch_size: int = 32) -> dict:
    """Largest absolute differences between the Classifier and the exported file on `bases`
    (one example alone, then batches: the batch axis is dynamic)."""
    with torch.no_grad():
        logits_ref = torch.cat([clf.logits(torch.stack([clf.inputs(b) for b in bases[i:i + batch_size]]))
                                for i in range(0, len(bases), batch_size)])
    ref, ref_logits = clf.probabilities(logits_ref).numpy(), logits_ref.numpy()  # the model run once
    x = export_graph.example_batch(clf, bases).numpy()
    single = run(x[:1])
    outs = [run(x[i:i + batch_size]) for i in range(0, len(x), batch_size)]
    probs, logits = np.concatenate([o[0] for o in outs]), np.concatenate([o[1] for o in outs])
    diff = max(float(np.abs(probs - ref).max()), float(np.abs(single[0] - ref[:1]).max()))
    agree = float((probs.argmax(axis=1) == ref.argmax(axis=1)).mean())
    return {"examples": len(bases), "split": where, "max_abs_diff": diff, "tolerance": TOLERANCE,
            "max_abs_logit_diff": float(np.abs(logits - ref_logits).max()), "label_agreement": agree,
            "passed": bool(np.isfinite(diff) and diff <= TOLERANCE)}


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _replace(tmp: Path, out: Path) -> None:
    """Rename the finished folder to `out`; an earlier export there is removed once it is in place."""
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{time.time_ns()}"
        out.rename(old)
    tmp.rename(out)
    fsync_dir(out.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# ----------------------------------------------------------------------------- spec
def spec(clf: Classifier, fmt: str, parity_result: dict) -> dict:
    """preprocessing.json: see the module docstring."""
    cfg, name = clf.cfg, export_graph.input_name(clf)
    doc = {"version": 1, "format": fmt, "model_file": MODEL_FILES[fmt], "opset": OPSET if fmt == "onnx" else None,
           "run": cfg.name, "weights": clf.weights, "step": clf.step, "model": cfg.model.name,
           "kind": "image" if clf.image else "audio", "classes": clf.classes, "temperature": clf.temperature,
           "input": {"name": name, "dtype": "float32",
                     "shape": _input_shape(clf)},
           "outputs": {"probs": "softmax(logits / temperature), (batch, classes)", "logits": "(batch, classes)"},
           "in_graph": export_graph.describe_graph(clf.extractor), "parity": parity_result}
    if clf.image:
        doc["image"] = {"size": cfg.data.image_size, "channels": cfg.data.image_channels,
                        "mode": "RGB" if cfg.data.image_channels == 3 else "L",
                        "resize": "PIL bilinear to size x size (aspect ratio not kept)",
                        "values": "float32 pixel values 0..255, (batch, channels, size, size)"}
    else:
        doc["audio"] = {"sample_rate": clf.decoder.sample_rate, "window_samples": clf.decoder.n_samples,
                        "window_seconds": clf.decoder.n_samples / clf.decoder.sample_rate,
                        "mono": "mean of the channels",
                        "resample": "torchaudio.functional.resample defaults: sinc_interp_hann, "
                                    "lowpass_filter_width 6, rolloff 0.99",
                        "windows": "consecutive windows of window_samples, the last padded with zeros at the end; "
                                   "a file's probabilities are the mean of its windows'"}
        if clf.eval_windows is not None:  # data.windows: the windows the run's evaluation takes
            w = clf.eval_windows
            doc["audio"]["windows"] = ("windows of window_samples starting at window_starts.row_samples * s for s "
                                       "in 0, hop_rows, 2 hop_rows, ... up to rows - window_rows, where rows = "
                                       "n // row_samples + 1 (n samples; rows = n when row_samples is 1), plus one "
                                       "at rows - window_rows when the hop does not land there (or just 0 when "
                                       "rows <= window_rows); each padded with zeros at the end to window_samples; "
                                       "a file's probabilities are the mean of its windows'")
            doc["audio"]["window_starts"] = {"row_samples": w.row_samples, "window_rows": w.rows, "hop_rows": w.hop}
    return doc


def _input_shape(clf: Classifier) -> list:
    if clf.image:
        return ["batch", clf.cfg.data.image_channels, clf.cfg.data.image_size, clf.cfg.data.image_size]
    return ["batch", clf.decoder.n_samples]
