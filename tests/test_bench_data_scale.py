"""The issue-12 benchmark stays runnable: bench/corpus.py (layout, formats, a re-run that does
nothing, a half-made corpus finished, other parameters refused, classes a simple classifier tells
apart) and bench/data_scale.py end to end at a tiny size (every section, no errors, the JSON line)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.append(str(ROOT / "bench"))  # last: bench/tui.py must not shadow the tui package
import corpus  # noqa: E402


def files_of(root: Path, ext: str) -> list[Path]:
    return sorted(root.glob(f"*/*/*.{ext}"))


def test_audio_corpus_layout_format_and_rerun(tmp_path):
    info = corpus.make_audio(tmp_path, 60, classes=4, workers=1)
    assert info["per_split"] == {"train": 13, "val": 1, "test": 1}
    wavs = files_of(tmp_path, "wav")
    assert len(wavs) == 60 == info["files_written"]
    assert sorted(p.name for p in (tmp_path / "train").iterdir()) == sorted(corpus.class_names("audio", 4))
    for path in wavs[:10]:
        meta = soundfile.info(str(path))
        assert (meta.samplerate, meta.channels, meta.subtype) == (16000, 1, "PCM_16")
        assert 0.5 <= meta.duration <= 1.5
    before = {p: p.stat().st_mtime_ns for p in wavs}
    assert corpus.make_audio(tmp_path, 60, classes=4, workers=1) == info  # the marker: nothing made again
    assert {p: p.stat().st_mtime_ns for p in files_of(tmp_path, "wav")} == before
    assert not list(tmp_path.glob("**/.*.tmp-*"))


def test_half_made_corpus_is_finished_and_other_parameters_refused(tmp_path):
    whole = tmp_path / "whole"
    corpus.make_audio(whole, 30, classes=3, workers=1)
    half = tmp_path / "half"
    corpus.make_audio(half, 30, classes=3, workers=1)
    (half / corpus.MARKER).unlink()  # as if killed before the end
    for path in files_of(half, "wav")[::2]:
        path.unlink()
    corpus.make_audio(half, 30, classes=3, workers=2)
    assert [p.read_bytes() for p in files_of(half, "wav")] == [p.read_bytes() for p in files_of(whole, "wav")]
    with pytest.raises(corpus.CorpusError, match="another corpus"):
        corpus.make_audio(whole, 30, classes=3, seed=1, workers=1)
    (whole / corpus.MARKER).unlink()
    with pytest.raises(corpus.CorpusError, match="half-made"):
        corpus.make_audio(whole, 33, classes=3, workers=1)
    with pytest.raises(ValueError, match="at least 3 files per class"):
        corpus.split_counts(2)


def test_image_corpus_sizes_and_format(tmp_path):
    corpus.make_images(tmp_path, 30, classes=10, workers=1)
    pngs = files_of(tmp_path, "png")
    assert len(pngs) == 30
    for path in pngs[:8]:
        with Image.open(path) as img:
            assert img.mode == "RGB" and img.format == "PNG"
            assert all(corpus.IMAGE_SIDES[0] <= side <= corpus.IMAGE_SIDES[1] for side in img.size)


def test_sound_classes_are_told_apart_by_their_spectra():
    """Nearest class mean of the clips' log band energies, far above chance (1 in 50): the
    classes differ in band and in shape, so a small model has something to learn."""
    def bands(wave):
        frames = wave[:len(wave) // 512 * 512].reshape(-1, 512)
        power = (np.abs(np.fft.rfft(frames * np.hanning(512), axis=1)) ** 2).mean(axis=0)  # no time
        edges = np.geomspace(4, len(power) - 1, 41).astype(int)
        logs = np.log(np.array([power[a:b].sum() for a, b in zip(edges[:-1], edges[1:])]) + 1e-9)
        return logs - logs.mean()  # the level is drawn at random: only the shape of the spectrum

    labels = np.arange(50)
    train = np.array([[bands(corpus.audio_clip(0, "train", c, n)) for n in range(8)] for c in labels])
    means = train.mean(axis=1)
    test = [(bands(corpus.audio_clip(0, "val", c, n)), c) for c in labels for n in range(2)]
    right = sum(int(np.argmin(((means - x) ** 2).sum(axis=1)) == c) for x, c in test)
    assert right / len(test) > 0.3


@pytest.mark.slow
def test_data_scale_bench_runs_end_to_end_at_a_tiny_size(tmp_path):
    """Every section of bench/data_scale.py on 200 + 100 clips and 30 images (the small MFCC
    model, 3 steps, --quick): no section fails and the last line is the JSON object."""
    args = [sys.executable, str(ROOT / "bench" / "data_scale.py"), "--files", "200", "--small", "100",
            "--classes", "5", "--images", "30", "--steps", "3", "--rounds", "1", "--quick",
            "--base", "mfcc_mlp.yaml", "--out", str(tmp_path / "out")]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    prepare, training = result["prepare"], result["training"]
    assert "error" not in prepare and "error" not in training, (prepare.get("error"), training.get("error"))
    store = tmp_path / "out" / "stores" / "big"
    assert prepare["workers_2"]["exit_code"] == 0 and prepare["workers_2"]["last_line"] == str(store)
    assert prepare["again"]["exit_code"] == 0 and prepare["workers_2"]["store_bytes"] > 0
    assert prepare["images"]["workers_2"]["exit_code"] == 0
    for run in training["store_vs_cache"]["runs"]["cache"] + training["store_vs_cache"]["runs"]["store"]:
        assert run["exit_code"] == 0 and run["steps"] == 3
    assert training["rss"]["big_store"]["peak_rss_mb"] > 0
    assert training["resume"]["daemon_s"] > 0 and training["resume"]["stop_exit"] == 0
    figures = result["figures"]
    for key in ("old_way_files_per_s", "prepare_2_workers_files_per_s", "reprepare_s", "store_vs_cache",
                "loader_store_vs_cache",
                "rss_small_mb", "rss_big_mb", "resume_s"):
        assert figures[key] is not None, key
    assert result["paper"]["examples"] == 750000
