"""Windows of long recordings (trainer/data/windows.py): training windows anywhere in a recording,
fixed evaluation windows that cover it, per-recording aggregation, and the engine's evaluation of
a windowed split."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from tests.run_configs import MFCC_TINY, RESNET_TINY, run_config
from trainer.data import windows
from trainer.data.decode import Decoder
from trainer.data.features import FeatureExtractor

AUDIO = {"data.source": "audio_folder", "data.root": "/nonexistent", "data.store": "/nonexistent/store",
         "data.windows": {"enabled": True, "max_seconds": 4.0}}


def windows_config(base=RESNET_TINY, **changes):
    return run_config(base, **{**AUDIO, **changes})


class FakeSplit:
    """A StoreSplit's reading interface over in-memory raw features (C, F, T) or (1, T)."""

    def __init__(self, raws: list[np.ndarray], labels: list[int]):
        self.raws = raws
        self.labels = np.asarray(labels, dtype=np.int32)
        self.variants = 0
        self.reads: list[tuple[int, int, int]] = []

    def __len__(self) -> int:
        return len(self.raws)

    def names(self) -> list[str]:
        return [f"rec{i}.wav" for i in range(len(self.raws))]

    def length(self, item: int, variant: int = 0) -> int:
        return self.raws[item].shape[-1]

    def raw(self, item: int, variant: int = 0, start: int = 0, count=None) -> np.ndarray:
        count = self.length(item) - start if count is None else count
        assert 0 <= start and start + count <= self.length(item), "read past the end of the entry"
        self.reads.append((item, start, count))
        return self.raws[item][..., start:start + count].astype(np.float16)


# ----------------------------------------------------------------------------- training windows
def test_train_start_is_deterministic_and_covers_the_recording():
    length, window = 40, 10
    starts = [windows.train_start(length, window, 7, epoch, index) for epoch in range(20) for index in range(50)]
    assert starts == [windows.train_start(length, window, 7, epoch, index) for epoch in range(20) for index in range(50)]
    assert min(starts) == 0 and max(starts) == length - window  # both ends reachable
    assert set(starts) == set(range(length - window + 1))       # every start is drawn
    counts = np.bincount(starts)
    assert counts.min() > 0.5 * counts.mean()                    # roughly uniform
    # a function of (seed, epoch, index): another seed or epoch draws differently
    assert starts[:50] != [windows.train_start(length, window, 8, 0, i) for i in range(50)]
    assert starts[:50] != starts[50:100]


def test_train_start_of_a_recording_no_longer_than_a_window_is_zero():
    assert windows.train_start(10, 10, 0, 0, 0) == 0
    assert windows.train_start(3, 10, 5, 2, 9) == 0


# ----------------------------------------------------------------------------- evaluation windows
@pytest.mark.parametrize("length,window,hop", [(100, 10, 10), (101, 10, 10), (97, 10, 3), (10, 10, 5),
                                               (11, 10, 10), (250, 64, 32), (5, 10, 10)])
def test_eval_starts_cover_every_row(length, window, hop):
    starts = windows.eval_starts(length, window, hop)
    covered = np.zeros(max(length, window), bool)
    for s in starts:
        covered[s:s + window] = True
    assert covered[:length].all()
    assert starts == sorted(set(starts)) and starts[0] == 0
    assert all(b - a <= hop for a, b in zip(starts, starts[1:]))
    assert starts[-1] == max(length - window, 0)  # the last window ends at the end
    assert starts == windows.eval_starts(length, window, hop)


def test_eval_starts_with_a_hop_that_lands_on_the_end_add_nothing():
    assert windows.eval_starts(30, 10, 10) == [0, 10, 20]
    assert windows.eval_starts(31, 10, 10) == [0, 10, 20, 21]
    with pytest.raises(ValueError, match="hop"):
        windows.eval_starts(30, 10, 0)


# ----------------------------------------------------------------------------- geometry
@pytest.mark.parametrize("base,changes", [(RESNET_TINY, {}), (MFCC_TINY, {}),
                                          (RESNET_TINY, {"data.duration": 0.73}),
                                          (MFCC_TINY, {"features": {"kind": "waveform"}, "model": {"name": "cnn1d"}})])
def test_window_rows_are_the_frames_of_one_clip(base, changes):
    cfg = windows_config(base, **changes)
    n_samples = Decoder.from_config(cfg).n_samples
    raw = FeatureExtractor(cfg).raw(np.zeros(n_samples, np.float32))
    assert windows.window_rows(cfg) == raw.shape[-1]


def test_windows_hop_follows_eval_hop():
    cfg = windows_config(**{"data.windows": {"enabled": True, "max_seconds": 4.0, "eval_hop": 0.25}})
    geometry = windows.Windows.from_config(cfg)
    assert geometry.rows == 0.5 * 8000 // 128 + 1 and geometry.row_samples == 128
    assert geometry.hop == round(0.25 * 8000 / 128)
    side_by_side = windows.Windows.from_config(windows_config())
    assert side_by_side.hop == round(0.5 * 8000 / 128)  # null: data.duration


def test_store_wave_keeps_the_start_and_pads_to_one_window():
    cfg = windows_config()
    decoder = Decoder.from_config(cfg)
    long = np.arange(10 * 8000, dtype=np.float32)
    kept = windows.store_wave(long, decoder, cfg.data.windows)
    assert kept.dtype == np.float32 and len(kept) == 4 * 8000 and np.array_equal(kept, long[:4 * 8000])
    short = np.ones(1000, np.float32)
    padded = windows.store_wave(short, decoder, cfg.data.windows)
    assert len(padded) == decoder.n_samples and padded[:1000].all() and not padded[1000:].any()


def test_sample_starts_are_the_stores_windows_in_samples():
    cfg = windows_config(**{"data.windows": {"enabled": True, "max_seconds": 4.0, "eval_hop": 0.3}})
    geometry = windows.Windows.from_config(cfg)
    n = 3 * 8000 + 77
    frames = FeatureExtractor(cfg).raw(np.zeros(n, np.float32)).shape[-1]
    starts = windows.sample_starts(n, geometry)
    assert starts == [s * 128 for s in windows.eval_starts(frames, geometry.rows, geometry.hop)]


# ----------------------------------------------------------------------------- aggregation
def test_a_recording_whose_windows_disagree_takes_the_mean():
    window_probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7],   # recording 0: windows disagree
                             [0.6, 0.4]])                           # recording 1: one window
    recording = np.array([0, 0, 0, 1])
    probs = windows.recording_probabilities(window_probs, recording, 2)
    np.testing.assert_allclose(probs, [[1.4 / 3, 1.6 / 3], [0.6, 0.4]])
    assert probs.argmax(1).tolist() == [1, 0]
    with pytest.raises(ValueError, match="without windows"):
        windows.recording_probabilities(window_probs, recording, 3)


def test_windowed_metrics_report_recordings_first_and_windows_beside():
    rng = np.random.default_rng(0)
    raws = [rng.normal(size=(1, 8, n)).astype(np.float32) for n in (10, 25, 10)]
    cfg = windows_config()
    dataset = windows.WindowedEvalDataset(FakeSplit(raws, [1, 0, 1]), FeatureExtractor(cfg),
                                          windows.Windows(rows=10, hop=10, row_samples=128))
    assert len(dataset) == 1 + 3 + 1 and dataset.recordings == 3
    # recording 1 (label 0): two windows say 1, one says 0 strongly -> the mean says 0
    window_probs = np.array([[0.1, 0.9], [0.95, 0.05], [0.4, 0.6], [0.45, 0.55], [0.2, 0.8]])
    m = windows.windowed_metrics(window_probs, 0.5, dataset, ["a", "b"])
    assert m["val_accuracy"] == 1.0 and m["val_window_accuracy"] == pytest.approx(3 / 5)
    assert m["val_window_loss"] == 0.5 and m["val_windows"] == 5
    assert m["confusion"] == [[1, 0], [0, 2]]
    expected_loss = -np.mean(np.log([0.9, (0.95 + 0.4 + 0.45) / 3, 0.8]))
    assert m["val_loss"] == pytest.approx(expected_loss)
    assert "val_window_auc_roc" in m and "val_auc_roc" in m


def test_windowed_dataset_reads_each_window_from_the_store():
    cfg = windows_config()
    extractor = FeatureExtractor(cfg)
    rows = windows.window_rows(cfg)
    rng = np.random.default_rng(1)
    raws = [rng.normal(size=(1, 32, n)).astype(np.float32) for n in (rows, rows + 5, 3 * rows)]
    split = FakeSplit(raws, [0, 1, 2])
    geometry = windows.Windows.from_config(cfg)
    dataset = windows.WindowedEvalDataset(split, extractor, geometry)
    expected = [(0, 0), (1, 0), (1, 5)] + [(2, s) for s in windows.eval_starts(3 * rows, rows, geometry.hop)]
    assert list(zip(dataset.recording.tolist(), dataset.start.tolist())) == expected
    assert dataset.labels.tolist() == [0, 1, 1] + [2] * (len(expected) - 3)
    assert dataset.names == ["rec0.wav", "rec1.wav", "rec2.wav"]
    x, y = dataset[2]
    raw = torch.from_numpy(raws[1][..., 5:5 + rows].astype(np.float16).astype(np.float32))
    assert y == 1 and torch.equal(x, extractor.finish(raw))
    assert x.shape == extractor.output_shape


def test_a_recording_shorter_than_a_window_is_refused():
    split = FakeSplit([np.zeros((1, 4, 3), np.float32)], [0])
    with pytest.raises(ValueError, match="shorter than one window"):
        windows.WindowedEvalDataset(split, None, windows.Windows(rows=5, hop=5, row_samples=1))


# ----------------------------------------------------------------------------- the engine's evaluation
class MeanModel(torch.nn.Module):
    """Logits from the mean of the input: a window's class is fixed by its content."""

    def forward(self, x):
        m = x.float().flatten(1).mean(1, keepdim=True)
        return torch.cat([-m, m], dim=1) * 50.0


def test_engine_evaluation_reports_recordings_and_windows():
    from trainer.evaluation import Evaluation

    cfg = windows_config(**{"features.normalize": False})
    rows = windows.window_rows(cfg)
    high, low = np.full((1, 32, rows), 1.0, np.float32), np.full((1, 32, rows), -1.0, np.float32)
    # recording 0 (class 1): high, high, low -> mean says 1; recording 1 (class 0): low only
    raws = [np.concatenate([high, high, low], axis=-1), low]
    split = FakeSplit(raws, [1, 0])
    geometry = windows.Windows(rows=rows, hop=rows, row_samples=128)
    data = SimpleNamespace(val=windows.WindowedEvalDataset(split, FeatureExtractor(cfg), geometry), classes=["a", "b"])
    ev = Evaluation(cfg, data, plan=None, state=None, model=MeanModel(), ema=None, channels_last=False,
                    smoother=None, event=None, train_mode=lambda: None, on_best=lambda: None)
    metrics = ev._evaluate_model(ev.model)
    assert metrics["val_accuracy"] == 1.0
    assert metrics["val_window_accuracy"] == pytest.approx(3 / 4)
    assert metrics["val_windows"] == 4 and metrics["confusion"] == [[1, 0], [0, 1]]


# ----------------------------------------------------------------------------- stored vs clip features
def _recording_with_quiet_stretches(rate: int, seconds: float) -> np.ndarray:
    """Tone bursts over a background ~100 dB below them: a window of background alone is far
    quieter than the recording's loudest frame (what top_db is relative to)."""
    rng = np.random.default_rng(3)
    n = int(rate * seconds)
    wave = rng.normal(size=n).astype(np.float32) * 1e-5
    t = np.arange(rate // 4) / rate
    for at in (0.3, 1.9, 2.2):
        i = int(at * rate)
        wave[i:i + len(t)] += np.sin(2 * np.pi * 900 * t).astype(np.float32)
    return wave


def test_cropped_features_match_a_clip_of_the_window():
    """A window cut from the store's whole-recording spectrogram against the spectrogram of the
    same stretch of waveform (what predict computes). Frames within n_fft/2 of a window's edges
    differ (the clip's STFT reflects its edges); the rest matches because the store keeps spectra
    without the top_db floor and each window gets its own. Flooring the whole recording instead
    (extractor.raw of it) puts quiet windows ~10 dB off on average."""
    cfg = windows_config(**{"data.duration": 0.5, "features.top_db": 80.0})
    extractor, decoder = FeatureExtractor(cfg), Decoder.from_config(cfg)
    geometry = windows.Windows.from_config(cfg)
    wave = _recording_with_quiet_stretches(8000, 3.0)
    stored = windows.store_features(extractor, [wave])[0].half()  # a float16 store
    floored_whole = extractor.raw(wave)
    edge = cfg.features.n_fft // 2 // cfg.features.hop_length + 1
    ours, theirs = [], []
    split = FakeSplit([stored.float().numpy()], [0])
    for start in windows.eval_starts(stored.shape[-1], geometry.rows, geometry.hop):
        clip = extractor.raw(decoder.fit_length(wave[start * geometry.row_samples:]))
        window = windows.read_window(split, 0, 0, start, geometry.rows, "mel", 80.0)
        old = floored_whole[..., start:start + geometry.rows]
        ours.append(float((window - clip)[..., edge:-edge].abs().mean()))
        theirs.append(float((old - clip)[..., edge:-edge].abs().mean()))
    print(f"window vs clip, mean |dB| inside the edges: stored {max(ours):.3f}, floored whole {max(theirs):.2f}")
    assert max(ours) < 0.5 and max(theirs) > 5.0


def test_window_floor_is_the_clip_floor_and_idempotent():
    x = torch.tensor([[[-100.0, -30.0, 10.0], [0.0, -75.0, -50.0]]])
    floored = windows.window_floor(x, 80.0)
    assert floored.min() == -70.0 and torch.equal(windows.window_floor(floored, 80.0), floored)
    assert torch.equal(windows.window_floor(x, None), x)


# ----------------------------------------------------------------------------- a real windows-mode run
def _write_long_recordings(root, per_class: dict) -> None:
    """root/<split>/<class>/*.wav: recordings of 0.3 to 3 s at 8 kHz; 'tone' holds a 1 kHz tone
    in noise, 'noise' noise alone (so the model has something to learn)."""
    import soundfile as sf

    rng = np.random.default_rng(5)
    for split, count in per_class.items():
        for label in ("noise", "tone"):
            folder = root / split / label
            folder.mkdir(parents=True)
            for i in range(count):
                n = int(rng.uniform(0.3, 3.0) * 8000)
                wave = rng.normal(size=n) * 0.05
                if label == "tone":
                    wave += 0.3 * np.sin(2 * np.pi * 1000 * np.arange(n) / 8000)
                sf.write(folder / f"{i}.wav", wave.astype(np.float32), 8000)


@pytest.fixture(scope="module")
def windows_run(tmp_path_factory):
    """A finished run on a windows-mode store of long recordings (prepared by `train`), evaluated
    on its test split when it finished."""
    import yaml

    from trainer import cli

    tmp = tmp_path_factory.mktemp("windows")
    _write_long_recordings(tmp / "data", {"train": 6, "val": 3, "test": 3})
    raw = {**MFCC_TINY, "name": "wintiny",
           "data": {"source": "audio_folder", "root": "data", "store": "store", "duration": 0.5, "sample_rate": 8000,
                    "prepare_workers": 1, "windows": {"enabled": True, "max_seconds": 2.0, "eval_hop": 0.25}},
           "optim": {"batch_size": 4}}
    (tmp / "run.yaml").write_text(yaml.safe_dump(raw))
    assert cli.main(["train", str(tmp / "run.yaml"), "--run-dir", str(tmp / "run"), "--quiet"]) == 0
    return tmp / "run", run_config(raw)


def test_a_windows_run_reports_recordings_and_windows(windows_run):
    from trainer.history import read_history

    run_dir, cfg = windows_run
    evals = [r for r in read_history(run_dir / "history.msgpack") if r["kind"] == "eval"]
    assert evals, "no evaluation recorded"
    geometry = windows.Windows.from_config(cfg)
    for record in evals:
        assert 0.0 <= record["val_accuracy"] <= 1.0 and 0.0 <= record["val_window_accuracy"] <= 1.0
        assert record["val_window_loss"] > 0 and record["val_loss"] > 0
        # 6 val recordings, each at least one window; more windows than recordings (0.25 s hop)
        assert record["val_windows"] > 6 and geometry.hop == 16


def test_evaluate_writes_recordings_and_windows(windows_run):
    import json

    from trainer.run.rundir import RunDir

    run_dir, _ = windows_run
    files = RunDir(run_dir)
    result = json.loads(files.evaluation.read_text())["results"]["test/best"]
    assert result["n"] == 6 and sum(result["confusion"][0]) + sum(result["confusion"][1]) == 6
    section = result["windows"]
    assert section["n_recordings"] == 6 and section["n_windows"] > 6
    assert section["window_seconds"] == 0.5 and section["hop_seconds"] == pytest.approx(0.256)
    assert 0.0 <= section["accuracy"] <= 1.0
    from trainer.posthoc.evaluate import format_result

    assert f"per window ({section['n_windows']} windows of 0.5 s every 0.256 s)" in format_result(result)
    saved = np.load(files.predictions("test", "best"))
    assert saved["labels"].shape == (6,) and saved["logits"].shape == (6, 2)
    assert saved["window_logits"].shape == (section["n_windows"], 2)
    assert np.bincount(saved["window_recording"]).min() >= 1
    # the per-recording logits give back the mean of the windows' probabilities
    from trainer.posthoc import calibration

    mean = windows.recording_probabilities(calibration.softmax(saved["window_logits"]), saved["window_recording"], 6)
    np.testing.assert_allclose(calibration.softmax(saved["logits"]), mean, atol=1e-5)


# ----------------------------------------------------------------------------- predict takes the same windows
def test_predict_cuts_the_windows_evaluation_takes():
    from trainer.posthoc.classifier import Classifier

    cfg = windows_config(**{"data.windows": {"enabled": True, "max_seconds": 4.0, "eval_hop": 0.25}})
    clf = Classifier(cfg, MeanModel(), ["a", "b"])
    wave = np.random.default_rng(0).normal(size=int(1.3 * 8000)).astype(np.float32)
    cut = clf.windows(wave)
    geometry = windows.Windows.from_config(cfg)
    starts = windows.sample_starts(len(wave), geometry)
    assert len(cut) == len(starts) and all(len(w) == clf.decoder.n_samples for w in cut)
    for base, start in zip(cut, starts):
        assert np.array_equal(base, clf.decoder.fit_length(wave[start:start + clf.decoder.n_samples]))
    # the store's frames of the same recording: one window per evaluation start, the last one ending at the end
    frames = FeatureExtractor(cfg).raw(wave).shape[-1]
    assert [s // 128 for s in starts] == windows.eval_starts(frames, geometry.rows, geometry.hop)
    assert starts[-1] // 128 + geometry.rows == frames
    prediction = clf.predict(wave)
    assert len(prediction.windows) == len(starts)
    assert [prediction.window(i)["start"] for i in range(len(starts))] == [round(s / 8000, 6) for s in starts]


def test_predict_without_windows_mode_is_unchanged():
    from trainer.posthoc.classifier import Classifier

    clf = Classifier(run_config(RESNET_TINY), MeanModel(), ["a", "b"])
    wave = np.ones(int(1.3 * 8000), np.float32)
    cut = clf.windows(wave)
    assert len(cut) == 3 and not hasattr(cut, "starts") and cut[2][:2400].all() and not cut[2][2400:].any()


@pytest.mark.parametrize("row_samples,window_rows,hop_rows", [(128, 32, 16), (128, 32, 32), (1, 4000, 1000), (256, 63, 7)])
def test_the_exported_script_cuts_the_same_windows(row_samples, window_rows, hop_rows):
    from trainer.posthoc import run_onnx

    geometry = windows.Windows(rows=window_rows, hop=hop_rows, row_samples=row_samples)
    for n in (1, 100, 3999, 4000, 4001, 8000, 12345, 40000):
        assert run_onnx.window_starts(n, row_samples, window_rows, hop_rows) == windows.sample_starts(n, geometry)


def test_evaluate_with_tta_on_windows_says_why_not(windows_run):
    from trainer.posthoc.evaluate import EvaluationError, evaluate_run

    with pytest.raises(EvaluationError, match="--tta: .*features, not the waveforms"):
        evaluate_run(windows_run[0], "test", tta=True, n_boot=10)


def test_evaluate_with_data_on_windows_says_why_not(windows_run, tmp_path):
    from trainer.posthoc.evaluate import EvaluationError, evaluate_run

    with pytest.raises(EvaluationError, match="--data .*windows of long recordings .*evaluate without --data"):
        evaluate_run(windows_run[0], "test", data=str(tmp_path), n_boot=10)


def test_training_reads_a_window_as_evaluation_and_predict_do():
    from trainer.data.stored import StoredExamples

    cfg = windows_config(**{"features.top_db": 80.0})
    rows = windows.window_rows(cfg)
    quiet = np.full((1, 32, 3 * rows), -100.0, np.float32)
    quiet[..., :rows // 2] = 20.0  # one loud stretch: the rest lies 120 dB under it
    split = FakeSplit([quiet], [0])
    examples = StoredExamples(split, FeatureExtractor(cfg), cfg.seed, rows)
    for epoch in range(4):
        start = windows.train_start(3 * rows, rows, cfg.seed, epoch, 0)
        expected = windows.read_window(split, 0, 0, start, rows, "mel", 80.0)
        assert torch.equal(examples.raw(0, epoch), expected)
