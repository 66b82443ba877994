"""`longhaul predict RUN PATH... [--json] [--top-k K] [--tta] [--weights best|last]`: a finished
run's model on new files, with exactly the run's preprocessing (trainer.posthoc.classifier).

PATHs are files, or folders searched recursively for the run's file types (.wav/.flac/.ogg for an
audio run, .png/.jpg/.jpeg for an image run; hidden files and folders skipped), in sorted order. A
recording longer than the run's clip is cut into windows of that length: each window is classified
and the recording's probabilities are the mean of its windows'. Probabilities are calibrated with
the temperature `longhaul evaluate` fitted for these weights (1.0 before any evaluation).

Output, one file after the other as they are done: a line per file (`PATH: LABEL PROB [top-k]`, and
a line per window under a recording of several windows), or with --json one JSON object per line:
`path`, `label`, `prob` (the probability of `label`), `probs` (the top-k classes' probabilities)
and, for several windows, `windows` (each with `start`, `end` in seconds, `label`, `prob`, `probs`).
A file that cannot be read gets an error line on stderr (and `{"path", "error"}` with --json) and
the others go on. Exit status: 0, 1 when any file failed, 2 for a bad run or argument.

The same from Python (trainer.posthoc.classifier):

    from trainer.posthoc.classifier import load_classifier
    clf = load_classifier("checkpoints/birds")           # weights="last", calibrated=False
    p = clf.predict("dawn.wav")                          # or a waveform / an (H, W[, C]) image array
    p.label, p.prob, p.probs, p.windows                  # windows: per-window probabilities
    clf.predict_batch(["a.wav", "b.wav"], tta=True)      # windows batched through the model
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Iterable, Iterator, Optional

import torch

from trainer.data.decode import BadItem
from trainer.data.sources import AUDIO_EXTS, IMAGE_EXTS
from trainer.posthoc.classifier import Classifier, Prediction, load_classifier
from trainer.posthoc.tta import transform_names

FILES_PER_BATCH = 32
"""Files decoded before their windows go through the model together (bounds the memory)."""
READ_ERRORS = (BadItem, ValueError, OSError)


def main(args, run_dir) -> int:
    if args.top_k < 1:
        print(f"longhaul predict: --top-k must be at least 1, got {args.top_k}", file=sys.stderr)
        return 2
    clf = load_classifier(run_dir, weights=args.weights)  # ClassifierError: the CLI says it, exit 2
    torch.set_num_threads(clf.cfg.threads)
    out = Output(args.json, args.top_k)
    if not args.json:
        print(describe(clf, args.tta), file=sys.stderr)
    exts = IMAGE_EXTS if clf.image else AUDIO_EXTS
    try:
        failed = _run(clf, find_files(args.paths, exts), args.tta, out)
    except BrokenPipeError:  # `longhaul predict ... | head`: the reader has all it wants
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 1
    return 1 if failed else 0


def _run(clf: Classifier, files: Iterator[tuple[str, Optional[str]]], tta: bool, out: "Output") -> int:
    """Predict every file, printing as each chunk is done; the number that failed."""
    done = failed = 0
    for chunk in _chunks(files, FILES_PER_BATCH):
        for path, result in predict_files(clf, chunk, tta):
            done += 1
            if isinstance(result, Prediction):
                out.prediction(result)
            else:
                failed += 1
                out.error(path, result)
    if not out.as_json:
        print(f"{done - failed} predicted, {failed} failed", file=sys.stderr)
    return failed


def describe(clf: Classifier, tta: bool) -> str:
    """What predicts: the weights, classes, calibration and TTA (stderr, text output only)."""
    calibration = (f"temperature {clf.temperature:.3g}" if clf.temperature != 1.0
                   else "not calibrated (longhaul evaluate fits the temperature)")
    text = (f"{clf.weights}.pt (step {clf.step}), {len(clf.classes)} classes, {calibration}, "
            f"input {clf.decoder.describe(clf.image)}")
    return text + (f", TTA: {', '.join(transform_names(clf.cfg))}" if tta else "")


# ----------------------------------------------------------------------------- inputs
def find_files(paths: Iterable[str], exts: tuple[str, ...]) -> Iterator[tuple[str, Optional[str]]]:
    """(path, None) for each file to classify, (path, why) for a PATH that gives none: a file
    named is taken whatever its type (the classifier says when it is not the run's); a folder
    gives its files of types `exts`, recursively, sorted, hidden files and folders left out."""
    for given in paths:
        path = Path(given)
        if path.is_dir():
            found = False
            for pair in _walk(path, exts):
                found = True
                yield pair
            if not found:
                yield given, f"no {'/'.join(exts)} files in this folder"
        elif path.exists():
            yield given, None
        else:
            yield given, "no such file or folder"


def _walk(folder: Path, exts: tuple[str, ...]) -> Iterator[tuple[str, Optional[str]]]:
    """find_files' pairs of one folder; a subfolder that cannot be listed is an error pair."""
    errors: list[OSError] = []
    for root, dirs, files in os.walk(folder, onerror=errors.append):
        yield from _listing_errors(errors)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith(".") and Path(name).suffix.lower() in exts:
                yield str(Path(root) / name), None
    yield from _listing_errors(errors)


def _listing_errors(errors: list[OSError]) -> Iterator[tuple[str, str]]:
    while errors:
        exc = errors.pop(0)
        yield str(exc.filename), f"cannot list this folder: {exc.strerror or exc}"


def _chunks(items: Iterator, size: int) -> Iterator[list]:
    chunk = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def predict_files(clf: Classifier, chunk: list[tuple[str, Optional[str]]], tta: bool) -> list[tuple[str, object]]:
    """(path, Prediction or error message) for each of `chunk` (find_files' pairs), in order; the
    windows of every readable file go through the model together."""
    results: list[tuple[str, object]] = []
    readable, windows = [], []
    for path, problem in chunk:
        if problem is None:
            try:
                windows.append(clf.windows(path))
                readable.append(len(results))
            except READ_ERRORS as exc:
                problem = _message(path, exc)
        results.append((path, problem))
    for index, prediction in zip(readable, clf.predict_windows([results[i][0] for i in readable], windows, tta=tta)):
        results[index] = (results[index][0], prediction)
    return results


def _message(path: str, exc: Exception) -> str:
    text = str(exc)
    if isinstance(exc, OSError) and exc.strerror:
        text = exc.strerror
    return text[len(path) + 2:] if text.startswith(f"{path}: ") else text


# ----------------------------------------------------------------------------- output
class Output:
    """Text lines or JSON lines on stdout; errors on stderr (and stdout under --json)."""

    def __init__(self, as_json: bool, top_k: int):
        self.as_json = as_json
        self.top_k = top_k

    def prediction(self, p: Prediction) -> None:
        if self.as_json:
            self._emit(json.dumps(p.to_dict(self.top_k)))
            return
        lines = [f"{p.source}: {self._ranked(p.probs)}"]
        if p.windows:
            lines += [f"  {w['start']:8.2f}-{w['end']:.2f} s: {self._ranked(w['probs'])}"
                      for w in (p.window(i, self.top_k) for i in range(len(p.windows)))]
        self._emit("\n".join(lines))

    def error(self, path: str, message: str) -> None:
        print(f"longhaul predict: {path}: {message}", file=sys.stderr, flush=True)
        if self.as_json:
            self._emit(json.dumps({"path": path, "error": message}))

    def _ranked(self, probs: dict[str, float]) -> str:
        ranked = sorted(probs.items(), key=lambda kv: -kv[1])[:self.top_k]
        head = f"{ranked[0][0]} {ranked[0][1]:.3f}"
        rest = ", ".join(f"{name} {prob:.3f}" for name, prob in ranked[1:])
        return f"{head}  [{rest}]" if rest else head

    @staticmethod
    def _emit(text: str) -> None:
        print(text, flush=True)
