"""Test-time augmentation (trainer/posthoc/tta.py) and `longhaul predict` with its Python API
(trainer/posthoc/predict.py, trainer/posthoc/classifier.py), on tiny runs trained here on real
files: an audio run (MFCC MLP, 3 tones) and an image run (ResNet-18 on 16x16 images)."""
from __future__ import annotations

import json
import shutil
import signal

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml
from PIL import Image

from tests.run_configs import changed
from trainer.config import ConfigError, RunConfig, TTA_AUDIO_DEFAULT, TTA_IMAGE_DEFAULT, build_config, load_config
from trainer.data import build_datasets
from trainer.posthoc import tta
from trainer.posthoc.classifier import ClassifierError, load_classifier
from trainer.run.rundir import RunDir

RATE = 8000  # the audio run's rate; its files are written at FILE_RATE and resampled
FILE_RATE = 11025
TONES = {"low": 300.0, "mid": 900.0, "high": 2400.0}
AUDIO_RUN = {
    "name": "ptones", "seed": 3, "threads": 1,
    "data": {"source": "audio_folder", "sample_rate": RATE, "duration": 0.5},
    "features": {"kind": "mfcc", "n_fft": 256, "hop_length": 128, "n_mels": 32, "n_mfcc": 13},
    "model": {"name": "mfcc_mlp", "options": {"hidden": [32]}},
    "optim": {"batch_size": 8, "lr": 0.01},
    "phases": [{"name": "only", "epochs": 3}],
    "checkpoint": {"interval_seconds": 3600},
}
IMAGE_RUN = {
    "name": "pimages", "seed": 3, "threads": 1,
    "data": {"source": "image_folder", "image_size": 16, "image_channels": 3},
    "features": {"kind": "image"},
    "model": {"name": "resnet18"},
    "optim": {"batch_size": 8, "lr": 0.003},
    "phases": [{"name": "only", "epochs": 2}],
    "checkpoint": {"interval_seconds": 3600},
}


# ----------------------------------------------------------------------------- runs on files
def tone(freq: float, seconds: float, seed: int, stereo: bool = False) -> np.ndarray:
    t = np.arange(int(seconds * FILE_RATE)) / FILE_RATE
    wave = 0.3 * np.sin(2 * np.pi * freq * t) + 0.02 * np.random.default_rng(seed).normal(size=len(t))
    return np.stack([wave, 0.5 * wave], axis=1) if stereo else wave


def write_tones(root, per_class: dict[str, int]) -> None:
    """root/<split>/<class>/<i>.wav: tones no longer than the run's clip (some shorter, some stereo)."""
    for split, count in per_class.items():
        for c, (label, freq) in enumerate(TONES.items()):
            folder = root / split / label
            folder.mkdir(parents=True)
            for i in range(count):
                seed = 1000 * ("train", "val", "test").index(split) + 100 * c + i
                sf.write(folder / f"{i}.wav", tone(freq, 0.5 if i % 3 else 0.3, seed, stereo=i % 4 == 1), FILE_RATE)


def pattern(label: str, size: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 60, (size, size, 3)).astype(np.uint8)
    if label == "red":
        img[..., 0] += 180
    elif label == "stripes":
        img[::4] += 190
    else:
        img[:, ::4] += 190
    return img


def write_images(root, per_class: int) -> None:
    """root/<split>/<class>/: RGB PNGs and JPEGs of several sizes, and a grayscale one."""
    for split in ("train", "val", "test"):
        for label in ("red", "stripes", "columns"):
            folder = root / split / label
            folder.mkdir(parents=True)
            for i in range(per_class):
                img = Image.fromarray(pattern(label, 20 + 4 * (i % 3), i))
                if i == 2 and label != "red":
                    img = img.convert("L")
                img.save(folder / (f"{i}.jpg" if i % 2 else f"{i}.png"))


def train(tmp, raw: dict, root) -> RunDir:
    """A finished run of config `raw` on the data in `root` (the CLI's `train`, in process)."""
    from trainer.cli import main

    config = tmp / f"{raw['name']}.yaml"
    config.write_text(yaml.safe_dump(changed(raw, **{"data.root": str(root)})))
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        assert main(["train", str(config), "--run-dir", str(tmp / "run"), "--quiet"]) == 0
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    return RunDir(tmp / "run")


@pytest.fixture(scope="module")
def audio_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("audio")
    write_tones(tmp / "data", {"train": 12, "val": 4, "test": 5})
    return train(tmp, AUDIO_RUN, tmp / "data")


@pytest.fixture(scope="module")
def image_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("image")
    write_images(tmp / "data", 8)
    return train(tmp, IMAGE_RUN, tmp / "data")


def split_probabilities(run: RunDir, clf, split: str = "test") -> dict[str, torch.Tensor]:
    """{path: probabilities} of the run's model on a split built by trainer.data, as evaluation."""
    cfg = load_config(run.config)
    data = build_datasets(cfg, frozen=run.data_auto)
    dataset = getattr(data, split)
    x = torch.stack([dataset[i][0] for i in range(len(dataset))])
    probs = clf.probabilities(clf.logits(x))
    return {name: row for name, row in zip(dataset.names, probs)}


# ----------------------------------------------------------------------------- transforms
def test_flips_mirror_the_image():
    img = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    assert np.array_equal(tta.transform("hflip", image=True)(img), img[:, :, ::-1])
    assert np.array_equal(tta.transform("vflip", image=True)(img), img[:, ::-1, :])
    assert tta.transform("original", image=True)(img) is img


def test_rotation_turns_counter_clockwise_about_the_centre():
    img = np.random.default_rng(0).integers(0, 256, (3, 16, 16), dtype=np.uint8)
    assert np.array_equal(tta.rotate(img, 90), np.rot90(img, 1, axes=(1, 2)))  # exact on the pixel grid
    assert np.array_equal(tta.rotate(img, -90), np.rot90(img, -1, axes=(1, 2)))
    dot = np.zeros((1, 65, 65), np.uint8)
    dot[0, 32, 32 + 24] = 255  # 24 px right of the centre pixel
    for name, degrees in (("rotate+5", 5), ("rotate-5", -5)):
        out = tta.transform(name, image=True)(dot).astype(np.float64)[0]
        rows, cols = np.indices(out.shape)
        y, x = (out * rows).sum() / out.sum() - 32, (out * cols).sum() / out.sum() - 32
        assert np.degrees(np.arctan2(-y, x)) == pytest.approx(degrees, abs=0.3)  # up is +y on screen
        assert np.hypot(x, y) == pytest.approx(24, abs=0.3)
    smooth = np.repeat(np.linspace(0, 255, 32)[None, None], 32, axis=1).astype(np.uint8)
    back = tta.rotate(tta.rotate(smooth, 5), -5).astype(int)
    assert np.abs(back - smooth)[:, 4:-4, 4:-4].max() <= 2


def test_brightness_scales_and_clips():
    img = np.array([[[0, 100, 200, 250]]], dtype=np.uint8)
    assert tta.transform("brightness+5%", image=True)(img).tolist() == [[[0, 105, 210, 255]]]
    assert tta.transform("brightness-5%", image=True)(img).tolist() == [[[0, 95, 190, 238]]]


def test_contrast_scales_the_distance_from_the_mean_grey():
    img = np.array([[[100, 200]], [[100, 200]], [[100, 200]]], dtype=np.uint8)  # grey 100 and 200: mean 150
    assert tta.transform("contrast+5%", image=True)(img)[:, 0].tolist() == [[98, 202]] * 3
    assert tta.transform("contrast-5%", image=True)(img)[:, 0].tolist() == [[102, 198]] * 3
    gray = np.array([[[0, 50, 250]]], dtype=np.uint8)  # mean 100
    assert tta.contrast(gray, 0.05).tolist() == [[[0, 48, 255]]]


def test_shift_moves_the_window_and_fills_silence():
    wave = np.arange(1, 11, dtype=np.float32)
    later = tta.transform("shift+20%", image=False)(wave)
    assert later.tolist() == [3, 4, 5, 6, 7, 8, 9, 10, 0, 0] and later.dtype == np.float32
    assert tta.transform("shift-20%", image=False)(wave).tolist() == [0, 0, 1, 2, 3, 4, 5, 6, 7, 8]


def test_transform_names_by_kind_and_config():
    audio, image = RunConfig(), RunConfig.model_validate({"data": {"source": "image_folder"}, "features": {"kind": "image"}})
    assert tta.transform_names(audio) == TTA_AUDIO_DEFAULT and tta.transform_names(image) == TTA_IMAGE_DEFAULT
    assert len(TTA_IMAGE_DEFAULT) == 9 and TTA_IMAGE_DEFAULT[0] == TTA_AUDIO_DEFAULT[0] == "original"
    chosen = RunConfig.model_validate({"tta": {"transforms": ["original", "shift+25%"]}})
    assert tta.transform_names(chosen) == ["original", "shift+25%"]
    with pytest.raises(ValueError, match="does not apply to audio"):
        tta.transform("hflip", image=False)


@pytest.mark.parametrize("transforms, message", [
    (["original", "spin+5"], "unknown transform 'spin\\+5'"),
    ([], "empty list"),
    (["hflip", "hflip"], "listed twice"),
    (["original", "hflip"], "tta.transforms: hflip cannot apply to audio"),
])
def test_bad_tta_lists_are_refused_at_load(tmp_path, transforms, message):
    with pytest.raises(ConfigError, match=message) as err:
        build_config({"tta": {"transforms": transforms}}, "run.yaml", tmp_path, check_model=False)
    assert "tta.transforms" in str(err.value)


def test_tta_probabilities_average_the_transforms(audio_run):
    clf = load_classifier(audio_run.path)
    bases = [base for f in sorted((audio_run.path.parent / "data/test/mid").iterdir()) for base in clf.windows(f)]
    plain = clf.base_probabilities(bases)
    assert torch.allclose(tta.tta_probabilities(clf, bases, names=["original"]), plain, atol=1e-6)
    names = ["original", "shift+10%", "shift-20%"]
    each = [clf.base_probabilities([tta.transform(n, image=False)(b) for b in bases]) for n in names]
    mean = tta.tta_probabilities(clf, bases, batch_size=2, names=names)
    assert mean.shape == (len(bases), 3) and torch.allclose(mean, torch.stack(each).mean(0), atol=1e-6)
    assert torch.allclose(clf.base_probabilities(bases, tta=True), tta.tta_probabilities(clf, bases), atol=1e-6)
    raw = clf.base_probabilities(bases, calibrated=False)  # the run may carry a fitted temperature already
    clf.temperature = 2.0
    assert torch.allclose(tta.tta_probabilities(clf, bases, calibrated=False, names=["original"]), raw, atol=1e-6)
    assert not torch.allclose(tta.tta_probabilities(clf, bases, names=["original"]), raw, atol=1e-3)


def test_tta_on_images_averages_every_default_transform(image_run):
    clf = load_classifier(image_run.path)
    files = sorted((image_run.path.parent / "data/test/red").iterdir())
    plain, augmented = clf.predict_batch(files), clf.predict_batch(files, tta=True)
    bases = [clf.windows(f)[0] for f in files]
    each = [clf.base_probabilities([tta.transform(name, image=True)(b) for b in bases]) for name in TTA_IMAGE_DEFAULT]
    assert torch.allclose(torch.tensor([list(p.probs.values()) for p in augmented]), torch.stack(each).mean(0),
                          atol=1e-6)
    assert any(abs(a.prob - p.prob) > 1e-6 for a, p in zip(augmented, plain))
    assert [p.label for p in augmented] == [p.label for p in plain] == ["red"] * len(files)


# ----------------------------------------------------------------------------- predict = the test split
@pytest.mark.parametrize("kind", ["audio", "image"])
def test_predict_on_the_test_files_matches_the_test_split(kind, request):
    run = request.getfixturevalue(f"{kind}_run")
    clf = load_classifier(run.path)
    expected = split_probabilities(run, clf)
    files = sorted(expected)
    predictions = clf.predict_batch(files, batch_size=4)
    assert len(files) == {"audio": 15, "image": 24}[kind] and not any(p.windows for p in predictions)
    for path, p in zip(files, predictions):
        row = expected[path]
        assert p.label == clf.classes[int(row.argmax())], path
        assert torch.allclose(torch.tensor(list(p.probs.values())), row, atol=1e-5), path
    labels = [p.label for p in predictions]
    truth = [f.split("/")[-2] for f in files]
    assert sum(a == b for a, b in zip(labels, truth)) >= 0.8 * len(files), (labels, truth)  # the run learned


def test_arrays_predict_as_their_files(audio_run, image_run):
    clf = load_classifier(audio_run.path)
    path = audio_run.path.parent / "data/test/high/1.wav"
    samples, rate = sf.read(path, dtype="float32")
    assert rate == FILE_RATE and samples.ndim == 2  # stereo at another rate: resampled for the file
    wave = clf.decoder.mono(samples, rate)
    assert clf.predict(wave).probs == pytest.approx(clf.predict(path).probs, abs=1e-6)
    images = load_classifier(image_run.path)
    png = image_run.path.parent / "data/test/stripes/0.png"
    by_array = images.predict(np.asarray(Image.open(png)))
    assert by_array.source == "<array>" and by_array.probs == pytest.approx(images.predict(png).probs, abs=1e-6)


def test_long_recordings_give_windows_and_their_mean(audio_run):
    clf = load_classifier(audio_run.path)
    wave = np.concatenate([tone(TONES["low"], 0.5, 1), tone(TONES["high"], 0.5, 2), tone(TONES["high"], 0.25, 3)])
    p = clf.predict(clf.decoder.mono(wave.astype(np.float32), FILE_RATE))
    assert len(p.windows) == 3 and p.window_seconds == 0.5
    assert [p.window(i)["label"] for i in range(2)] == ["low", "high"]
    mean = {c: np.mean([w[c] for w in p.windows]) for c in clf.classes}
    assert p.probs == pytest.approx(mean, abs=1e-6)
    line = p.to_dict(top_k=2)
    assert [(w["start"], w["end"]) for w in line["windows"]] == [(0.0, 0.5), (0.5, 1.0), (1.0, 1.5)]
    assert len(line["probs"]) == 2 and line["prob"] == line["probs"][line["label"]]


# ----------------------------------------------------------------------------- the command
def predict_cli(capsys, *args) -> tuple[int, str, str]:
    from trainer.cli import main

    code = main(["predict", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def inbox(tmp_path, audio_run):
    """Files to predict: two tones in a folder tree, a long recording, hidden files, a text file,
    a corrupt .wav."""
    data = audio_run.path.parent / "data/test"
    (tmp_path / "in/deep/.secret").mkdir(parents=True)
    shutil.copy(data / "low/0.wav", tmp_path / "in/a.wav")
    shutil.copy(data / "high/0.wav", tmp_path / "in/deep/b.WAV")
    shutil.copy(data / "mid/0.wav", tmp_path / "in/deep/.hidden.wav")
    shutil.copy(data / "mid/0.wav", tmp_path / "in/deep/.secret/c.wav")
    sf.write(tmp_path / "in/deep/long.flac", np.concatenate([tone(TONES["mid"], 1.2, 5)]), FILE_RATE)
    (tmp_path / "in/notes.txt").write_text("not audio")
    (tmp_path / "in/deep/broken.wav").write_bytes(b"RIFF\x00\x00garbage")
    return tmp_path / "in"


def test_predict_json_lines(capsys, audio_run, inbox):
    code, out, err = predict_cli(capsys, audio_run.path, inbox, "--json", "--top-k", "2")
    lines = [json.loads(line) for line in out.splitlines()]
    assert [line["path"] for line in lines] == [str(inbox / "a.wav"), str(inbox / "deep/b.WAV"),
                                                str(inbox / "deep/broken.wav"), str(inbox / "deep/long.flac")]
    a, b, broken, long = lines
    assert (a["label"], b["label"], long["label"]) == ("low", "high", "mid")
    assert a["prob"] == a["probs"]["low"] and len(a["probs"]) == 2 and "windows" not in a
    assert broken == {"path": str(inbox / "deep/broken.wav"), "error": "cannot decode audio: Format not recognised."}
    assert len(long["windows"]) == 3 and long["windows"][2] == {**long["windows"][2], "start": 1.0, "end": 1.5}
    assert code == 1 and f"longhaul predict: {inbox / 'deep/broken.wav'}: cannot decode audio" in err


def test_predict_text_and_tta(capsys, audio_run, inbox):
    code, out, err = predict_cli(capsys, audio_run.path, inbox / "a.wav", inbox / "deep/long.flac", "--tta",
                                 "--top-k", "1")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith(f"{inbox / 'a.wav'}: low 0.") and "[" not in lines[0]
    assert lines[1].startswith(f"{inbox / 'deep/long.flac'}: mid 0.")
    assert [line.split(":")[0].strip() for line in lines[2:]] == ["0.00-0.50 s", "0.50-1.00 s", "1.00-1.50 s"]
    assert "best.pt (step" in err and "TTA: original, shift+10%" in err and "2 predicted, 0 failed" in err


def test_predict_bad_inputs_go_on(capsys, audio_run, inbox, tmp_path):
    (tmp_path / "empty").mkdir()
    code, out, err = predict_cli(capsys, audio_run.path, inbox / "notes.txt", tmp_path / "missing.wav",
                                 tmp_path / "empty", inbox / "a.wav", "--json")
    errors = [json.loads(line) for line in out.splitlines()]
    assert [e.get("error") for e in errors] == [
        "not an audio file this run takes (.wav/.flac/.ogg)", "no such file or folder",
        "no .wav/.flac/.ogg files in this folder", None]
    assert errors[3]["label"] == "low" and code == 1 and err.count("longhaul predict: ") == 3


def test_predict_refuses_a_bad_run_or_argument(capsys, audio_run, tmp_path):
    code, _, err = predict_cli(capsys, audio_run.path, tmp_path, "--top-k", "0")
    assert code == 2 and "--top-k must be at least 1" in err
    code, _, err = predict_cli(capsys, tmp_path / "norun", tmp_path)
    assert code == 2 and "norun" in err
    bare = tmp_path / "bare"
    shutil.copytree(audio_run.path, bare, ignore=shutil.ignore_patterns("best.pt"))
    code, _, err = predict_cli(capsys, bare, tmp_path)
    assert code == 2 and "best.pt does not exist: the run has no best weights yet" in err
    assert predict_cli(capsys, bare, audio_run.path.parent / "data/test/low/0.wav", "--weights", "last")[0] == 0
    with pytest.raises(ClassifierError, match="weights must be one of best, last"):
        load_classifier(audio_run.path, weights="final")
