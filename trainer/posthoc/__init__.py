"""After the run: a finished run as a classifier, its evaluation on any split, calibration,
test-time augmentation, prediction on new files, export and a report.

    clf = load_classifier("checkpoints/birds")        # best.pt, the run's preprocessing, temperature
    clf.predict("recording.wav")                      # Prediction(label, prob, probs, windows)

Module map: classifier (load_classifier, Classifier, Prediction), evaluate (`longhaul evaluate`:
metrics with intervals, calibration, TTA side by side; evaluation.json), calibration (temperature
scaling, ECE/MCE/Brier/NLL), tta (test-time augmentation transforms), export (`longhaul
export-model`: ONNX/TorchScript with a preprocessing spec and a parity check), report (`longhaul
report`: one HTML page).
"""
from __future__ import annotations

__all__ = ["Classifier", "Prediction", "load_classifier"]


def __getattr__(name: str):
    """`from trainer.posthoc import load_classifier` without importing torch for the CLI's parsers."""
    if name in __all__:
        from trainer.posthoc import classifier

        return getattr(classifier, name)
    raise AttributeError(f"module 'trainer.posthoc' has no attribute {name!r}")
