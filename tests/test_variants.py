"""Pre-augmented variants (trainer/data/variants.py): determinism, length, pitch, tempo, noise at a
given SNR, gain, and the noise folder's errors."""
from __future__ import annotations

import pickle
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile

from tests.run_configs import RESNET_TINY, run_config
from trainer.data import variants
from trainer.data.variants import NoiseBank, NoiseError, make_variants, stretch_and_shift

RATE = 16000


def vcfg(**changes) -> SimpleNamespace:
    """data.variants with everything off but what the test turns on."""
    base = dict(seed=0, pitch_semitones=0.0, time_stretch=0.0, noise_snr_db=(5.0, 20.0), gain_db=0.0)
    return SimpleNamespace(**{**base, **changes})


def tone(freq: float, seconds: float = 1.0, rate: int = RATE) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def dominant(wave: np.ndarray, rate: int = RATE) -> float:
    """Frequency (Hz) of the strongest bin of the middle half (clear of the edges' transients)."""
    mid = wave[len(wave) // 4: 3 * len(wave) // 4]
    spectrum = np.abs(np.fft.rfft(mid * np.hanning(len(mid))))
    return float(np.argmax(spectrum) * rate / len(mid))


def snr_db(clean: np.ndarray, mixed: np.ndarray) -> float:
    noise = mixed.astype(np.float64) - clean
    return 10 * np.log10(np.mean(np.square(clean, dtype=np.float64)) / np.mean(np.square(noise)))


@pytest.fixture
def noise_dir(tmp_path):
    folder = tmp_path / "noise"
    (folder / "b").mkdir(parents=True)
    rng = np.random.default_rng(1)
    soundfile.write(str(folder / "b" / "hiss.WAV"), rng.normal(0, 0.1, 4000).astype(np.float32), 8000)
    soundfile.write(str(folder / "a.flac"), rng.normal(0, 0.2, (RATE // 2, 2)).astype(np.float32), RATE)
    (folder / "notes.txt").write_text("not audio, not listed")
    return folder


def bank(folder) -> NoiseBank:
    return NoiseBank.from_config(run_config(RESNET_TINY, **{"data.variants.noise_dir": str(folder),
                                                             "data.sample_rate": RATE}))


# ----------------------------------------------------------------------------- determinism and length
def test_variants_are_deterministic_per_seed_name_and_number(noise_dir):
    cfg = vcfg(pitch_semitones=2.0, time_stretch=0.2, gain_db=6.0)
    wave = tone(440) + np.random.default_rng(0).normal(0, 0.01, RATE).astype(np.float32)
    first = make_variants(wave, RATE, cfg, bank(noise_dir), "dog/1.wav", 3)
    again = make_variants(wave.copy(), RATE, cfg, bank(noise_dir), "dog/1.wav", 3)
    assert all(a.tobytes() == b.tobytes() for a, b in zip(first, again))
    assert len({v.tobytes() for v in first}) == 3, "variants 1, 2, 3 differ"
    other_name = make_variants(wave, RATE, cfg, bank(noise_dir), "dog/2.wav", 1)[0]
    other_seed = make_variants(wave, RATE, vcfg(**{**vars(cfg), "seed": 1}), bank(noise_dir), "dog/1.wav", 1)[0]
    assert other_name.tobytes() != first[0].tobytes() and other_seed.tobytes() != first[0].tobytes()


def test_a_file_name_that_is_not_utf8_has_variants():
    """os.listdir gives such a name as surrogate-escaped str; its variants are drawn from its bytes."""
    name = b"/data/b\xff.wav".decode("utf-8", "surrogateescape")
    assert variants.name_number(name) != variants.name_number("/data/b.wav")
    assert variants.name_number(name) == variants.name_number(b"/data/b\xff.wav".decode("utf-8", "surrogateescape"))
    assert len(make_variants(tone(300), RATE, vcfg(gain_db=6.0), None, name, 1)) == 1


def test_a_variant_does_not_depend_on_how_many_are_made():
    cfg = vcfg(pitch_semitones=3.0)
    two = make_variants(tone(300), RATE, cfg, None, "x", 2)
    five = make_variants(tone(300), RATE, cfg, None, "x", 5)
    assert [v.tobytes() for v in two] == [v.tobytes() for v in five[:2]]


@pytest.mark.parametrize("size", [RATE, 12345, 800])
def test_length_and_dtype_are_kept(size):
    wave = np.random.default_rng(size).normal(0, 0.1, size).astype(np.float32)
    for v in make_variants(wave, RATE, vcfg(pitch_semitones=4.0, time_stretch=0.3, gain_db=3.0), None, "n", 4):
        assert v.dtype == np.float32 and v.shape == (size,) and np.isfinite(v).all()


def test_everything_off_gives_copies_of_the_wave():
    wave = tone(500)
    out = make_variants(wave, RATE, vcfg(), None, "n", 2)
    assert all(np.array_equal(v, wave) for v in out)
    out[0][0] = 9.0
    assert wave[0] != 9.0


def test_draws_stay_in_their_ranges():
    cfg = vcfg(pitch_semitones=2.0, time_stretch=0.1, gain_db=6.0, noise_snr_db=(3.0, 9.0))
    draws = [variants.draw_variant(cfg, f"item{i}", v) for i in range(50) for v in (1, 2)]
    assert all(-2 <= d.semitones <= 2 and 0.9 <= d.tempo <= 1.1 and -6 <= d.gain_db <= 6 and 3 <= d.snr_db <= 9
               for d in draws)
    assert min(d.semitones for d in draws) < -1.5 and max(d.semitones for d in draws) > 1.5


def test_turning_one_augmentation_on_keeps_the_others_draws():
    pitch_only = variants.draw_variant(vcfg(pitch_semitones=2.0), "x", 1)
    with_gain = variants.draw_variant(vcfg(pitch_semitones=2.0, gain_db=6.0), "x", 1)
    assert pitch_only.semitones == with_gain.semitones and with_gain.gain_db != 0


# ----------------------------------------------------------------------------- pitch and tempo
def test_twelve_semitones_up_doubles_the_frequency():
    shifted = stretch_and_shift(tone(440), RATE, tempo=1.0, semitones=12.0)
    assert abs(dominant(shifted) - 880) < 5
    assert abs(dominant(stretch_and_shift(tone(440), RATE, 1.0, -12.0)) - 220) < 5


@pytest.mark.parametrize("rate", [16000, 32000])
def test_a_fractional_shift_lands_within_a_few_cents(rate):
    shifted = stretch_and_shift(tone(1000, 2.0, rate), rate, tempo=1.0, semitones=1.37)
    cents = 1200 * np.log2(dominant(shifted, rate) / 1000)
    assert abs(cents - 137) < 10  # the FFT bin is 1 Hz here, about 2 cents


@pytest.mark.parametrize("tempo", [0.7, 1.3])
def test_time_stretch_keeps_the_frequency_and_changes_the_duration(tempo):
    burst = np.zeros(RATE, np.float32)
    burst[:RATE // 2] = tone(440, 0.5)
    out = stretch_and_shift(burst, RATE, tempo=tempo, semitones=0.0)
    assert abs(dominant(np.resize(out[:int(0.4 * RATE / tempo)], RATE)) - 440) < 5
    loud = np.flatnonzero(np.abs(out) > 0.1)
    assert abs(loud[-1] / RATE - 0.5 / tempo) < 0.03, "the burst ends at 0.5 s / tempo"


# ----------------------------------------------------------------------------- noise and gain
def test_noise_is_mixed_at_the_drawn_snr(noise_dir):
    wave = tone(440)
    for snr in (0.0, 10.0, 25.0):
        for v in make_variants(wave, RATE, vcfg(noise_snr_db=(snr, snr)), bank(noise_dir), "x", 3):
            assert abs(snr_db(wave, v) - snr) < 0.5


def test_noise_comes_from_every_file_at_varied_offsets(noise_dir):
    noise = bank(noise_dir)
    draws = [variants.draw_variant(vcfg(), f"x{i}", 1) for i in range(40)]
    assert {int(d.noise_file * len(noise)) for d in draws} == {0, 1}
    segment = variants.noise_segment(np.arange(10, dtype=np.float32), 0.75, 6)
    assert segment.tolist() == [7, 8, 9, 0, 1, 2], "a short noise file wraps round"


def test_silent_wave_gets_no_noise(noise_dir):
    out = make_variants(np.zeros(RATE, np.float32), RATE, vcfg(), bank(noise_dir), "x", 1)[0]
    assert not out.any()


def test_gain_scales_by_the_drawn_decibels():
    wave = tone(440)
    cfg = vcfg(gain_db=6.0)
    for v, out in enumerate(make_variants(wave, RATE, cfg, None, "g", 4), start=1):
        gain = variants.draw_variant(cfg, "g", v).gain_db
        np.testing.assert_allclose(out, wave * 10 ** (gain / 20), rtol=1e-6, atol=1e-7)


# ----------------------------------------------------------------------------- the noise folder
def test_noise_files_are_found_recursively_sorted_mono_and_resampled(noise_dir):
    noise = bank(noise_dir)
    assert [p.relative_to(noise_dir).as_posix() for p in noise.files] == ["a.flac", "b/hiss.WAV"]
    assert noise.wave(0).shape == (RATE // 2,) and noise.wave(1).shape == (8000,)  # 4000 at 8 kHz -> 16 kHz
    assert noise.wave(1) is noise.wave(1), "decoded once"
    assert [name for name, _, _ in variants.noise_listing(noise_dir)] == ["a.flac", "b/hiss.WAV"]


def test_files_that_are_not_audio_leave_the_store_recipe_alone(noise_dir):
    """The recipe fingerprints the files the bank uses, no others: a stray .DS_Store or notes
    file must not make every stored variant stale."""
    import os

    from trainer.data.store import layout

    cfg = run_config(RESNET_TINY, **{"data.variants": {"count": 1, "noise_dir": str(noise_dir)}})
    before = layout.recipe_id(layout.recipe(cfg))
    (noise_dir / ".DS_Store").write_bytes(b"\0\0")
    (noise_dir / "notes.txt").write_text("changed")
    (noise_dir / "b" / "desktop.ini").write_text("[x]")
    assert layout.recipe_id(layout.recipe(cfg)) == before
    assert [name for name, _, _ in layout.noise_listing(noise_dir)] == [p.relative_to(noise_dir).as_posix()
                                                                         for p in bank(noise_dir).files]
    os.utime(noise_dir / "a.flac", ns=(1, 1))
    assert layout.recipe_id(layout.recipe(cfg)) != before


def test_a_bank_sent_to_a_worker_carries_no_audio(noise_dir):
    noise = bank(noise_dir)
    noise.wave(0)
    copy = pickle.loads(pickle.dumps(noise))
    assert copy.files == noise.files and not copy._waves
    assert np.array_equal(copy.wave(0), noise.wave(0))


def test_no_noise_dir_means_no_bank():
    assert NoiseBank.from_config(run_config(RESNET_TINY)) is None


def test_a_bad_noise_file_is_named(noise_dir):
    bad = noise_dir / "b" / "broken.ogg"
    bad.write_bytes(b"this is not an ogg file at all")
    noise = bank(noise_dir)
    with pytest.raises(NoiseError, match="broken.ogg: cannot read audio"):
        noise.check()
    with pytest.raises(NoiseError, match="broken.ogg: cannot decode audio"):
        noise.wave(noise.files.index(bad))


def test_an_empty_or_missing_folder_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no audio here")
    with pytest.raises(NoiseError, match="no wav/flac/ogg files in .*empty"):
        bank(tmp_path / "empty")
    with pytest.raises(NoiseError, match="folder not found: .*gone"):
        bank(tmp_path / "gone")


def test_a_silent_noise_file_is_refused(tmp_path):
    (tmp_path / "quiet").mkdir()
    soundfile.write(str(tmp_path / "quiet" / "zero.wav"), np.zeros(100, np.float32), RATE)
    with pytest.raises(NoiseError, match="zero.wav: silent"):
        bank(tmp_path / "quiet").wave(0)


def test_a_changed_folder_gets_a_new_bank(noise_dir):
    before = bank(noise_dir)
    assert bank(noise_dir) is before, "one bank per folder and rate in a process"
    soundfile.write(str(noise_dir / "c.ogg"), np.full(800, 0.1, np.float32), RATE)
    assert len(bank(noise_dir)) == 3


def test_only_a_mono_waveform_has_variants():
    with pytest.raises(ValueError, match=r"mono waveform \(T,\), not of an array of shape \(3, 8, 8\)"):
        make_variants(np.zeros((3, 8, 8), np.uint8), RATE, vcfg(), None, "img", 1)
