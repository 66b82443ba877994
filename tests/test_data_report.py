"""check_data: the human report (counts, bad files, statistics, imbalance, warnings, verdict)."""
import numpy as np
import pytest
import soundfile

from trainer.config import RunConfig
from trainer.data import DataError, build_datasets, check_data

SR = 8000


def folder_cfg(root, **data):
    return RunConfig.model_validate({"data": {"source": "audio_folder", "root": str(root), "sample_rate": SR,
                                              **data}})


def write(path, seconds):
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(str(path), np.full(int(seconds * SR), 0.1, np.float32), SR)


@pytest.fixture
def messy(tmp_path):
    """train: bird x4 (one corrupt), frog x1; val: bird x1, no frog; a stray text file."""
    for i, seconds in enumerate((0.5, 1.0, 1.5)):
        write(tmp_path / "train" / "bird" / f"{i}.wav", seconds)
    (tmp_path / "train" / "bird" / "broken.wav").write_bytes(b"\x00" * 64)
    write(tmp_path / "train" / "frog" / "0.wav", 2.0)
    write(tmp_path / "val" / "bird" / "0.wav", 1.0)
    (tmp_path / "val" / "readme.txt").write_text("hello")
    return tmp_path


def test_report_lists_counts_bad_files_stats_and_warnings(messy):
    report = check_data(folder_cfg(messy))
    assert not report.ok and not report.usable
    assert report.classes == ["bird", "frog"]
    assert report.counts == {"train": [3, 1], "val": [1, 0]}
    assert report.imbalance() == 3.0
    broken = str(messy / "train" / "bird" / "broken.wav")
    assert report.errors == [(broken, "cannot decode audio: Format not recognised.")]
    text = report.to_text()
    for expected in (broken, "cannot decode audio", "bird", "frog", "Imbalance (largest / smallest training class): 3.00",
                     "Duration train: min 0.500 s, mean 1.250 s, max 2.000 s; 1 padded, 2 trimmed", "8000 Hz x4",
                     "class 'frog' is missing from the val split", "ignored 1 file(s) directly in",
                     "Result: FAILED: 1 bad item(s)"):
        assert expected in text, expected
    lines = text.splitlines()
    assert any(line.split() == ["bird", "3", "1"] for line in lines)
    assert any(line.split() == ["total", "4", "1"] for line in lines)


def test_build_raises_the_same_report_and_skip_bad_files_counts(messy):
    with pytest.raises(DataError) as caught:
        build_datasets(folder_cfg(messy))
    assert str(caught.value) == check_data(folder_cfg(messy)).to_text()

    cfg = folder_cfg(messy, skip_bad_files=True)
    report = check_data(cfg)
    assert not report.ok and report.usable
    assert "1 bad item(s) will be skipped" in report.to_text()
    bundle = build_datasets(cfg)
    assert bundle.skipped == [(str(messy / "train" / "bird" / "broken.wav"), report.errors[0][1])]
    assert bundle.class_counts == {"train": [3, 1], "val": [1, 0]}


def test_clean_data_reports_ok(tmp_path):
    for split in ("train", "val"):
        for name in ("a", "b"):
            write(tmp_path / split / name / "x.wav", 1.0)
    report = check_data(folder_cfg(tmp_path))
    assert report.ok and report.usable and report.errors == []
    assert report.to_text().endswith("Result: OK")
    assert report.imbalance() == 1.0


def test_impossible_feature_settings_are_fatal():
    cfg = RunConfig.model_validate({"features": {"kind": "mfcc", "n_mfcc": 80, "n_mels": 64},
                                    "data": {"synthetic": {"train_per_class": 2, "val_per_class": 1}}})
    with pytest.raises(DataError) as caught:
        build_datasets(cfg)
    assert ("features.n_mfcc", "must be <= features.n_mels (64), found 80") in caught.value.report.errors
    cfg = RunConfig.model_validate({"data": {"duration": 0.01, "synthetic": {"train_per_class": 2, "val_per_class": 1}},
                                    "features": {"n_fft": 1024}, "augment": {"hflip": True}})
    report = check_data(cfg)
    assert not report.usable and report.errors[0][0] == "features.n_fft"
    assert "augment.hflip has no effect" in report.to_text()


def test_long_error_lists_are_capped(tmp_path):
    write(tmp_path / "a" / "ok.wav", 1.0)
    write(tmp_path / "a" / "ok2.wav", 1.0)
    for i in range(120):
        (tmp_path / "a" / f"bad{i:03d}.wav").write_bytes(b"junk")
    report = check_data(folder_cfg(tmp_path))
    assert len(report.errors) == 120
    assert "... and 20 more" in report.to_text()


def test_clips_far_shorter_than_the_duration_are_named_in_a_warning(tmp_path):
    """A 1-sample WAV trains on padding alone: accepted, but the report names it and its length."""
    for i in range(3):
        write(tmp_path / "train" / "bird" / f"{i}.wav", 1.0)
    write(tmp_path / "train" / "bird" / "tiny.wav", 1 / SR)   # one sample
    write(tmp_path / "train" / "bird" / "short.wav", 0.05)    # 5% of the 1 s duration
    write(tmp_path / "train" / "bird" / "enough.wav", 0.2)    # 20%: only padded
    write(tmp_path / "val" / "bird" / "0.wav", 1.0)
    report = check_data(folder_cfg(tmp_path, duration=1.0))
    assert report.ok and report.usable  # a warning, not an error
    short = [w for w in report.warnings if "shorter than 10% of data.duration" in w]
    assert len(short) == 1, report.warnings
    assert "2 train clip(s)" in short[0]
    assert str(tmp_path / "train" / "bird" / "tiny.wav") + " (0.000125 s)" in short[0]
    assert str(tmp_path / "train" / "bird" / "short.wav") + " (0.05 s)" in short[0]
    assert "enough.wav" not in short[0]
    assert short[0] in report.to_text()
