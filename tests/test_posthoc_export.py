"""`longhaul export-model`: the graph reproduces the run's preprocessing, ONNX and TorchScript parity
on 64 real examples, the calibration temperature, the reference script, failures that leave
nothing valid, and the missing extra."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from run_configs import MFCC_MLP, RESNET_TINY, changed, run_config

pytest.importorskip("onnxruntime")

from trainer import models  # noqa: E402
from trainer.config import dump_config  # noqa: E402
from trainer.data.features import FeatureExtractor  # noqa: E402
from trainer.posthoc import export, export_graph  # noqa: E402
from trainer.posthoc.classifier import load_classifier  # noqa: E402
from trainer.posthoc.run_onnx import resample  # noqa: E402
from trainer.run.rundir import RunDir  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# 4 classes x 16 validation clips = the 64 examples of the parity check.
MFCC_RUN = changed(RESNET_TINY, **MFCC_MLP, **{"data.synthetic": {"classes": 4, "train_per_class": 12, "val_per_class": 16}})
MEL_RUN = changed(MFCC_RUN, model={"name": "resnet18"}, features={"kind": "mel", "n_fft": 256, "hop_length": 128, "n_mels": 32})


def make_run(path: Path, raw: dict, classes: list[str], seed: int = 0, step: int = 5, scale: float = 1.0) -> Path:
    """A finished run without training: its config and a best.pt whose head is drawn large enough
    that the probabilities are far from uniform (so parity compares something)."""
    cfg = run_config(raw)
    path.mkdir(parents=True, exist_ok=True)
    files = RunDir(path)
    files.config.write_text(dump_config(cfg))
    shape = FeatureExtractor(cfg).output_shape
    torch.manual_seed(seed)
    model = models.build_model(cfg, len(classes), shape[0], shape)
    with torch.no_grad():
        head = models.classifier(model)
        head.weight.normal_(0.0, scale)
        head.bias.zero_()
    torch.save({"model": model.state_dict(), "classes": classes, "step": step}, files.best_weights)
    return path


def args(fmt="onnx", out=None, weights="best") -> argparse.Namespace:
    return argparse.Namespace(format=fmt, out=str(out) if out else None, weights=weights)


@pytest.fixture(scope="module")
def mfcc_run(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("export") / "mfcc", MFCC_RUN, ["a", "b", "c", "d"])


# ----------------------------------------------------------------------------- the graph
@pytest.mark.parametrize("features", [
    {"kind": "mel", "n_fft": 256, "hop_length": 128, "n_mels": 32},
    {"kind": "mel", "n_fft": 200, "hop_length": 80, "n_mels": 24, "f_min": 50.0, "f_max": 3000.0, "top_db": None},
    {"kind": "mfcc", "n_fft": 256, "hop_length": 100, "n_mels": 32, "n_mfcc": 13},
    {"kind": "waveform"},
    {"kind": "mel", "n_fft": 256, "hop_length": 128, "n_mels": 32, "normalize": False},
])
def test_graph_preprocessing_matches_the_runs_audio_features(features):
    extractor = FeatureExtractor(run_config(RESNET_TINY, features=features))
    rng = np.random.default_rng(0)
    bases = [rng.standard_normal(4000).astype(np.float32) * scale for scale in (0.01, 0.3, 1.0)]
    bases.append(np.zeros(4000, np.float32))  # silence: the dB floor and the std floor
    expected = torch.stack([extractor.finish(extractor.raw(b).float()) for b in bases])
    got = export_graph.Preprocess(extractor)(torch.from_numpy(np.stack(bases)))
    assert got.shape == expected.shape
    # float32 DFT by convolution against torch.stft's FFT: differences only near the 80 dB floor
    assert float((got - expected).abs().max()) < 1e-3
    assert float((got - expected).abs().mean()) < 1e-5


@pytest.mark.parametrize("channels,normalize", [(3, True), (1, True), (3, False)])
def test_graph_preprocessing_matches_the_runs_image_features(channels, normalize):
    cfg = run_config(RESNET_TINY, data={"source": "image_folder", "root": ".", "image_size": 16, "image_channels": channels},
                     features={"kind": "image", "normalize": normalize})
    extractor = FeatureExtractor(cfg)
    bases = [np.random.default_rng(i).integers(0, 256, (channels, 16, 16), dtype=np.uint8) for i in range(3)]
    expected = torch.stack([extractor.finish(extractor.raw(b).float()) for b in bases])
    got = export_graph.Preprocess(extractor)(torch.from_numpy(np.stack(bases).astype(np.float32)))
    assert float((got - expected).abs().max()) < 1e-6


@pytest.mark.parametrize("rates", [(44100, 16000), (8000, 16000), (22050, 8000), (48000, 44100)])
def test_reference_script_resamples_like_torchaudio(rates):
    import torchaudio.functional as AF

    wave = np.random.default_rng(1).standard_normal(9001).astype(np.float32) * 0.3
    expected = AF.resample(torch.from_numpy(wave), *rates).numpy()
    got = resample(wave, *rates)
    assert got.shape == expected.shape and np.abs(got - expected).max() < 1e-5


# ----------------------------------------------------------------------------- export-model
def test_onnx_export_passes_parity_on_64_examples_and_writes_the_spec(mfcc_run, tmp_path, capsys):
    out = tmp_path / "onnx"
    assert export.main(args("onnx", out), mfcc_run) == 0
    printed = capsys.readouterr().out
    assert "parity: 64 examples (val 64)" in printed and "max |dp|" in printed
    assert sorted(p.name for p in out.iterdir()) == ["model.onnx", "preprocessing.json", "run_onnx.py"]
    assert [p.name for p in tmp_path.iterdir()] == ["onnx"]  # no temporary folder left
    doc = json.loads((out / "preprocessing.json").read_text())
    assert doc["classes"] == ["a", "b", "c", "d"] and doc["temperature"] == 1.0 and doc["step"] == 5
    assert doc["audio"]["sample_rate"] == 8000 and doc["audio"]["window_samples"] == 4000
    assert doc["in_graph"]["mfcc"]["n_mfcc"] == 20 and doc["in_graph"]["stft"]["n_fft"] == 256
    assert doc["input"] == {"name": "waveform", "dtype": "float32", "shape": ["batch", 4000]}
    assert doc["parity"]["passed"] and doc["parity"]["max_abs_diff"] <= 1e-4 and doc["parity"]["examples"] == 64


def test_parity_compares_confident_predictions(mfcc_run):
    """The fixture's model is far from uniform, so a parity of 1e-4 means something."""
    clf = load_classifier(mfcc_run)
    bases, where = export.parity_examples(clf)
    assert len(bases) == 64 and where == "val 64"
    probs = export_graph.reference_probs(clf, bases)
    assert 0.4 < probs.max(axis=1).mean() < 0.99 and len(set(probs.argmax(axis=1))) > 1


def test_export_uses_the_calibration_temperature(tmp_path):
    run = make_run(tmp_path / "run", MFCC_RUN, ["a", "b", "c", "d"], seed=1, step=9)
    RunDir(run).calibration.write_text(json.dumps({"weights": {"best": {"temperature": 2.5, "step": 9}}}))
    assert export.main(args("onnx", tmp_path / "out"), run) == 0
    doc = json.loads((tmp_path / "out" / "preprocessing.json").read_text())
    assert doc["temperature"] == 2.5
    clf = load_classifier(run)
    bases, _ = export.parity_examples(clf, 8)
    probs, logits = export.load_exported("onnx", tmp_path / "out" / "model.onnx", clf)(
        export_graph.example_batch(clf, bases).numpy())
    assert np.allclose(probs, torch.softmax(torch.from_numpy(logits) / 2.5, dim=-1).numpy(), atol=1e-6)
    assert np.abs(probs - export_graph.reference_probs(clf, bases)).max() <= 1e-4


def test_torchscript_export_and_its_reference_script(mfcc_run, tmp_path):
    import soundfile

    out = tmp_path / "ts"
    assert export.main(args("torchscript", out), mfcc_run) == 0
    assert sorted(p.name for p in out.iterdir()) == ["model.pt", "preprocessing.json", "run_torchscript.py"]
    wav = tmp_path / "long.wav"  # 2.6 s stereo at 22.05 kHz: mono, resampling, three windows
    soundfile.write(wav, np.random.default_rng(2).standard_normal((57330, 2)).astype(np.float32) * 0.2, 22050)
    _check_reference_script(out / "run_torchscript.py", wav, load_classifier(mfcc_run))
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not audio")
    done = subprocess.run([sys.executable, str(out / "run_torchscript.py"), str(bad), str(wav)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and f"error: {bad}" in done.stderr and str(wav) in done.stdout


def test_mel_onnx_export_and_reference_script_on_a_recording(tmp_path):
    import soundfile

    run = make_run(tmp_path / "mel", MEL_RUN, ["w", "x", "y", "z"], seed=3)
    assert export.main(args("onnx", tmp_path / "out"), run) == 0
    wav = tmp_path / "rec.flac"
    t = np.arange(11025) / 11025
    soundfile.write(wav, (0.4 * np.sin(2 * np.pi * 700 * t * (1 + t))).astype(np.float32), 11025)
    _check_reference_script(tmp_path / "out" / "run_onnx.py", wav, load_classifier(run))


def test_image_run_exports_and_its_reference_script_reads_images(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(4)
    for split, count in (("train", 4), ("val", 16), ("test", 24)):
        for label in ("normal", "benign", "malignant"):
            folder = tmp_path / "data" / split / label
            folder.mkdir(parents=True)
            for i in range(count):
                Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    raw = changed(RESNET_TINY, data={"source": "image_folder", "root": str(tmp_path / "data"), "image_size": 16},
                  features={"kind": "image"}, augment={})
    run = make_run(tmp_path / "run", raw, ["benign", "malignant", "normal"])
    assert export.main(args("onnx", tmp_path / "out"), run) == 0
    doc = json.loads((tmp_path / "out" / "preprocessing.json").read_text())
    assert doc["parity"]["split"] == "test 64" and doc["image"]["size"] == 16 and doc["input"]["name"] == "image"
    image = tmp_path / "data" / "test" / "benign" / "3.png"
    _check_reference_script(tmp_path / "out" / "run_onnx.py", image, load_classifier(run))


def _check_reference_script(script: Path, path: Path, clf) -> None:
    done = subprocess.run([sys.executable, str(script), str(path), "--json", "--top-k", "9"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout.strip().splitlines()[-1])
    expected = clf.predict(path)
    assert got["label"] == expected.label
    assert max(abs(got["probs"][c] - p) for c, p in expected.probs.items()) <= 1e-4


# ----------------------------------------------------------------------------- failures
def test_failed_parity_exits_1_and_leaves_nothing(mfcc_run, tmp_path, monkeypatch, capsys):
    forward = export_graph.Exported.forward

    def off(self, x):
        probs, logits = forward(self, x)
        return probs + 1e-3, logits
    monkeypatch.setattr(export_graph.Exported, "forward", off)
    assert export.main(args("onnx", tmp_path / "out"), mfcc_run) == 1
    assert "FAILED" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_a_failed_export_keeps_the_earlier_one_untouched(mfcc_run, tmp_path, monkeypatch):
    out = tmp_path / "out"
    assert export.main(args("torchscript", out), mfcc_run) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    monkeypatch.setattr(export, "TOLERANCE", -1.0)
    assert export.main(args("torchscript", out), mfcc_run) == 1
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_missing_extra_names_it(mfcc_run, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime -> ImportError
    assert export.main(args("onnx", tmp_path / "out"), mfcc_run) == 2
    assert "pip install 'longhaul[export]'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_bad_out_and_missing_weights_are_said(mfcc_run, tmp_path, capsys):
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    assert export.main(args("onnx", busy), mfcc_run) == 2
    assert "holds other files" in capsys.readouterr().err and (busy / "notes.txt").read_text() == "mine"
    assert export.main(args("onnx", tmp_path / "x", weights="last"), mfcc_run) == 2
    assert "last.pt" in capsys.readouterr().err


def test_command_line_default_out_folder(tmp_path):
    run = make_run(tmp_path / "run", MFCC_RUN, ["a", "b", "c", "d"], seed=5)
    done = subprocess.run([sys.executable, "-m", "trainer.cli", "export-model", str(run), "--format", "onnx"],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "parity: 64 examples" in done.stdout
    assert (RunDir(run).export_dir("onnx") / "model.onnx").is_file()


def test_run_whose_data_is_gone_is_said(tmp_path, capsys):
    raw = changed(RESNET_TINY, data={"source": "image_folder", "root": str(tmp_path / "gone"), "image_size": 16},
                  features={"kind": "image"}, augment={})
    run = make_run(tmp_path / "run", raw, ["a", "b"])
    assert export.main(args("onnx", tmp_path / "out"), run) == 2
    err = capsys.readouterr().err
    assert "parity check" in err and "dataset folder not found" in err and str(tmp_path / "gone") in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("changes", [
    {"model": {"name": "cnn1d_attention"}, "features": {"kind": "waveform"}},  # attention: no fused op in ONNX
    {"model": {"name": "mfcc_mlp", "options": {"context": 5}}},  # frame-level MLP
])
def test_other_models_export(tmp_path, changes):
    run = make_run(tmp_path / "run", changed(MFCC_RUN, augment={}, **changes), ["a", "b", "c", "d"])
    assert export.main(args("onnx", tmp_path / "out"), run) == 0
    doc = json.loads((tmp_path / "out" / "preprocessing.json").read_text())
    assert doc["parity"]["passed"] and doc["model"] == changes["model"]["name"]
