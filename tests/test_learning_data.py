"""Real-data learning set-up: the espeak-ng word set (speaker-disjoint splits), data.sample_rate /
data.duration `auto` (chosen from the data, reported with their numbers, kept for the run),
SpecAugment masks relative to / checked against the input, and the data report's warnings about
upsampling and padding."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from trainer import cli
from trainer.config import ConfigError, RunConfig, SpecAugmentConfig, load_config
from trainer.data import build_datasets, check_data
from trainer.data.augment import freq_warp, mask_limit, spec_augment, time_shift
from trainer.data.features import FeatureExtractor
from trainer.data.auto import round_up
from trainer.run.rundir import RunDir

sys.path.append(str(Path(__file__).resolve().parent.parent / "bench"))  # last: bench/tui.py must not shadow the tui package
import speech_data  # noqa: E402


def write(path: Path, seconds: float, rate: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(round(seconds * rate))) / rate
    soundfile.write(str(path), (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), rate)


@pytest.fixture
def clips(tmp_path):
    """train: 16 clips at 8000 Hz and 4 at 16000 Hz, 0.25..1.20 s (p95 = 1.1525 s); val: 2."""
    lengths = [0.25 + 0.05 * i for i in range(20)]  # 0.25 .. 1.20
    for i, seconds in enumerate(lengths):
        rate = 16000 if i % 5 == 0 else 8000
        write(tmp_path / "train" / ("a" if i % 2 else "b") / f"{i}.wav", seconds, rate)
    write(tmp_path / "val" / "a" / "0.wav", 0.5, 8000)
    write(tmp_path / "val" / "b" / "0.wav", 0.5, 8000)
    return tmp_path


def auto_cfg(root, **extra):
    data = {"source": "audio_folder", "root": str(root), "sample_rate": "auto", "duration": "auto"}
    data.update(extra.pop("data", {}))
    return RunConfig.model_validate({"data": data, "features": {"kind": "mel", "n_fft": 256, "hop_length": 128,
                                                               "n_mels": 32}, **extra})


# ----------------------------------------------------------------------------- generator
def test_speech_generator_small_set_has_speaker_disjoint_splits(tmp_path, speech_tools):
    manifest = speech_data.generate(tmp_path, size="small", seed=3)
    per_word = speech_data.SIZES["small"]
    words = speech_data.WORDS
    for split in ("train", "val", "test"):
        for word in words:
            assert len(list((tmp_path / split / word).glob("*.wav"))) == per_word[split]
    assert manifest["clips"] == {s: n * len(words) for s, n in per_word.items()}
    # No voice variant (the speaker) of validation or test ever speaks in training.
    variants = {split: {v.split("+")[1] for v in manifest["voices"][split]} for split in ("train", "val", "test")}
    assert variants["train"].isdisjoint(variants["val"] | variants["test"])
    assert variants["val"].isdisjoint(variants["test"])
    assert variants["val"] and variants["test"]
    assert json.loads((tmp_path / "manifest.json").read_text())["voices"] == manifest["voices"]
    info = soundfile.info(str(next((tmp_path / "train" / "yes").glob("*.wav"))))
    assert info.samplerate == speech_data.NATIVE_RATE and 0.2 < info.duration < 2.5
    # Deterministic from the seed: the plan (every random choice) repeats exactly.
    assert speech_data.plan(tmp_path, "small", 3) == speech_data.plan(tmp_path, "small", 3)
    assert speech_data.plan(tmp_path, "small", 3) != speech_data.plan(tmp_path, "small", 4)


# ----------------------------------------------------------------------------- auto
def test_round_up_to_a_tenth():
    assert [round_up(x) for x in (0.01, 0.9, 0.9000000001, 0.91, 1.1525)] == [0.1, 0.9, 0.9, 1.0, 1.2]


def test_auto_picks_the_most_common_rate_and_p95_length(clips):
    bundle = build_datasets(auto_cfg(clips))
    assert bundle.data_config.sample_rate == 8000          # 16 of 20 files
    assert bundle.data_config.duration == pytest.approx(1.2)  # p95 1.1525 s, rounded up
    assert bundle.input_shape[-1] == 8000 * 1.2 // 128 + 1
    assert "data.sample_rate auto -> 8000 Hz (16 of 20 train files)" in bundle.auto.lines
    assert any(line.startswith("data.duration auto -> 1.2 s (p95 of 20 clips = 1.152 s") for line in bundle.auto.lines)


def test_auto_only_one_of_them_keeps_the_other(clips):
    bundle = build_datasets(auto_cfg(clips, data={"sample_rate": 16000}))
    assert (bundle.data_config.sample_rate, bundle.data_config.duration) == (16000, pytest.approx(1.2))
    assert len(bundle.auto.lines) == 1


def test_check_data_prints_the_auto_numbers(clips, capsys):
    config = clips / "run.yaml"
    config.write_text(f"data: {{source: audio_folder, root: {clips}, sample_rate: auto, duration: auto}}\n"
                      "features: {kind: mel, n_fft: 256, hop_length: 128, n_mels: 32, f_max: 6000}\n")
    assert cli.main(["check-data", str(config)]) == 0
    out = capsys.readouterr().out
    assert "data.sample_rate auto -> 8000 Hz (16 of 20 train files)" in out
    assert "data.duration auto -> 1.2 s (p95 of 20 clips = 1.152 s, rounded up; max 1.200 s)" in out
    # f_max 6000 is fine for a fixed 16 kHz config but above Nyquist of the auto rate: cut, said.
    assert "features.f_max 6000 Hz -> 4000 Hz (half of the auto sample rate)" in out
    assert "Every example becomes: 1.200 s mono at 8000 Hz (9600 samples)" in out


def test_a_run_keeps_its_auto_values_when_the_data_changes(clips, tmp_path_factory):
    frozen = RunDir(tmp_path_factory.mktemp("run")).data_auto
    cfg = auto_cfg(clips)
    first = build_datasets(cfg, frozen=frozen)
    assert json.loads(frozen.read_text())["sample_rate"] == 8000
    for i in range(40):  # the data set grows: longer clips at another rate
        write(clips / "train" / "a" / f"new{i}.wav", 2.0, 16000)
    again = build_datasets(cfg, frozen=frozen)  # a resume of the same run
    assert again.input_shape == first.input_shape
    assert (again.data_config.sample_rate, again.data_config.duration) == (8000, pytest.approx(1.2))
    assert all(line.endswith(f"(kept from {frozen.name})") for line in again.auto.lines)
    fresh = build_datasets(cfg)  # a new run measures the data as it is now
    assert (fresh.data_config.sample_rate, fresh.data_config.duration) == (16000, pytest.approx(2.0))


def test_config_accepts_auto_and_rejects_nonsense(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data: {sample_rate: auto, duration: auto}\n")
    cfg = load_config(path, check_model=False)
    assert (cfg.data.sample_rate, cfg.data.duration) == ("auto", "auto")
    for key, value in (("sample_rate", "automatic"), ("sample_rate", 500), ("duration", 0), ("duration", "long")):
        with pytest.raises(ConfigError) as err:
            load_config(path, [f"data.{key}={value}"], check_model=False)
        assert f"data.{key}" in str(err.value) and "'auto'" in str(err.value)


# ----------------------------------------------------------------------------- warnings
def test_report_warns_about_upsampling_and_padding(clips):
    report = check_data(auto_cfg(clips, data={"sample_rate": 32000, "duration": 5.0}))
    text = report.to_text()
    assert "data.sample_rate 32000 Hz is far above the files' native 8000 Hz (16 of 20 train files)" in text
    assert "on average 86% of each training example is padding: clips are 0.72 s long on average, " \
           "data.duration is 5 s" in text
    quiet = check_data(auto_cfg(clips))
    assert not any("far above" in w or "padding:" in w for w in quiet.warnings)


# ----------------------------------------------------------------------------- SpecAugment
def test_mask_width_fraction_or_cells_never_over_half():
    assert mask_limit(0.2, 50) == pytest.approx(10.0)  # a fraction of the axis
    assert mask_limit(8, 50) == 8                      # a number of cells
    assert mask_limit(32, 49) == 24.5                  # 5-s preset on a 1-s input: cut to half
    assert mask_limit(0.9, 40) == 20.0


def test_spec_augment_masks_respect_the_limits():
    x = torch.randn(1, 20, 49)
    widest = 0
    for seed in range(200):
        out = spec_augment(x, SpecAugmentConfig(time_mask=32, num_masks=1), torch.Generator().manual_seed(seed))
        masked_frames = int((out != x).any(dim=1).any(dim=0).sum())
        widest = max(widest, masked_frames)
    assert 20 <= widest <= 24  # never more than half of 49 frames (before: up to 31)
    for seed in range(50):
        out = spec_augment(x, SpecAugmentConfig(freq_mask=0.25, num_masks=1), torch.Generator().manual_seed(seed))
        assert int((out != x).any(dim=-1).any(dim=0).sum()) < 5  # 25% of 20 bins


def test_oversized_masks_are_reported_and_fractions_are_not(clips):
    wide = check_data(auto_cfg(clips, augment={"spec_augment": {"time_mask": 64, "freq_mask": 0.2}}))
    frames = 9600 // 128 + 1
    assert any(f"augment.spec_augment.time_mask 64 is wider than half of the input's {frames} frames" in w
               for w in wide.warnings)
    assert not any("freq_mask" in w for w in wide.warnings)


def test_mask_of_one_or_more_must_be_whole():
    with pytest.raises(ValueError, match="must be whole"):
        SpecAugmentConfig(time_mask=2.5)
    assert SpecAugmentConfig(time_mask=0.5).time_mask == 0.5


# ----------------------------------------------------------------------------- time shift
def test_time_shift_moves_the_sound_and_fills_with_silence():
    x = torch.full((1, 4, 20), -80.0)
    x[..., 5:10] = 0.0  # a loud word in frames 5..9, silence elsewhere
    silence = x[..., :1]
    shifts = set()
    for seed in range(200):
        out = time_shift(x, 0.25, silence, torch.Generator().manual_seed(seed))
        loud = (out[0, 0] == 0.0).nonzero().flatten().tolist()
        assert len(loud) == 5 and loud == list(range(loud[0], loud[0] + 5))  # moved whole, not smeared
        assert ((out == 0.0) | (out == -80.0)).all()  # the gap is silence
        shifts.add(loud[0] - 5)
    assert shifts == set(range(-5, 6))  # +-25% of 20 frames, every whole shift reachable


def test_time_shift_cuts_off_what_moves_out():
    x = torch.arange(10, dtype=torch.float32).view(1, 10)
    silence = torch.zeros(1, 1)
    for seed in range(100):
        out = time_shift(x, 0.5, silence, torch.Generator().manual_seed(seed))
        kept = out[out != 0]
        assert (kept[1:] - kept[:-1] == 1).all()  # a run of consecutive samples, in order


def test_silence_frame_is_the_quietest_frame(clips):
    small = {"n_fft": 256, "hop_length": 128, "n_mels": 32, "n_mfcc": 13}
    fixed = {"sample_rate": 8000, "duration": 0.5}
    extractor = FeatureExtractor(auto_cfg(clips, data=fixed, features={"kind": "mel", **small}))
    wave = np.zeros(extractor.n_samples, np.float32)
    wave[: len(wave) // 2] = np.sin(np.arange(len(wave) // 2) * 0.3)  # sound, then digital silence
    raw = extractor.raw(wave)
    frame = extractor.silence_frame(raw)
    assert frame.shape == raw.shape[:-1] + (1,)
    assert torch.equal(frame, raw[..., -1:])  # the last frame is silent
    mfcc = FeatureExtractor(auto_cfg(clips, data=fixed, features={"kind": "mfcc", **small}))
    raw = mfcc.raw(wave)
    assert torch.equal(mfcc.silence_frame(raw), raw[..., -1:])
    waveform = FeatureExtractor(auto_cfg(clips, data=fixed, features={"kind": "waveform"}))
    assert not waveform.silence_frame(waveform.raw(wave)).any()


def test_training_examples_are_shifted_only_when_asked(clips):
    plain = build_datasets(auto_cfg(clips))
    shifted = build_datasets(auto_cfg(clips, augment={"time_shift": 0.2}))
    x0, x1 = plain.train[0, 0][0], shifted.train[0, 0][0]
    assert x0.shape == x1.shape
    assert not torch.equal(x0, x1)
    assert torch.equal(plain.val[0][0], shifted.val[0][0])  # evaluation is never shifted


# ----------------------------------------------------------------------------- frequency warp
def test_freq_warp_moves_a_band_up_or_down_by_the_factor():
    x = torch.zeros(1, 40, 3)
    x[0, 20] = 1.0  # one loud band
    up, down = freq_warp(x, 1.2), freq_warp(x, 0.8)
    assert int(up[0, :, 0].argmax()) == 24 and int(down[0, :, 0].argmax()) == 16
    assert torch.equal(freq_warp(x, 1.0), x)
    edge = torch.arange(10, dtype=torch.float32).view(1, 10, 1)
    assert freq_warp(edge, 0.5)[0, -1, 0] == 9.0  # from beyond the top: the top bin


def test_freq_warp_is_drawn_per_example_and_only_for_spectra(clips):
    warped = build_datasets(auto_cfg(clips, augment={"freq_warp": 0.2}))
    plain = build_datasets(auto_cfg(clips))
    assert not torch.equal(warped.train[0, 0][0], plain.train[0, 0][0])
    assert torch.equal(warped.val[0][0], plain.val[0][0])
    waveform = auto_cfg(clips, augment={"freq_warp": 0.2}, features={"kind": "waveform"})
    assert any("augment.freq_warp has no effect" in w for w in check_data(waveform).warnings)


def test_mfcc_is_the_dct_of_the_cached_log_mel(clips):
    small = {"n_fft": 256, "hop_length": 128, "n_mels": 32, "n_mfcc": 13}
    fixed = {"sample_rate": 8000, "duration": 0.5}
    mfcc = FeatureExtractor(auto_cfg(clips, data=fixed, features={"kind": "mfcc", "normalize": False, **small}))
    wave = np.sin(np.arange(mfcc.n_samples) * 0.2).astype(np.float32)
    raw = mfcc.raw(wave)
    assert raw.shape[-2] == 32  # the log-mel is cached
    assert mfcc.output_shape == (1, 13, raw.shape[-1])
    import torchaudio.transforms as T
    reference = T.MFCC(sample_rate=8000, n_mfcc=13, melkwargs={"n_fft": 256, "hop_length": 128, "n_mels": 32})
    assert torch.allclose(mfcc.finish(raw), reference(torch.from_numpy(wave).unsqueeze(0)), atol=1e-3)
    louder = mfcc.finish(mfcc.apply_gain(raw, 6.0))
    assert torch.allclose(louder, mfcc.finish(mfcc.raw(wave * 10 ** (6 / 20))), atol=1e-3)
