"""Config loading: every error class names the file, the dotted key, the expectation and the find."""
import glob
from pathlib import Path

import pytest
import yaml

from trainer.config import ConfigError, apply_overrides, config_docs, load_config, parse_overrides

ROOT = Path(__file__).resolve().parents[1]


def write(tmp_path, data, name="run.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


def problems(tmp_path, data, **kw) -> dict:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, data), **kw)
    assert str(tmp_path / "run.yaml") in str(info.value)
    return dict(info.value.problems)


def test_minimal_config_gets_defaults(tmp_path):
    cfg = load_config(write(tmp_path, {"seed": 3}))
    assert cfg.seed == 3 and cfg.name == "run" and cfg.threads == 2 and cfg.max_steps is None
    assert cfg.phases[0].epochs == 10


def test_unknown_key_reported_with_dotted_path(tmp_path):
    found = problems(tmp_path, {"optim": {"lr": 0.1, "learning_rate": 0.1}})
    assert "unknown key" in found["optim.learning_rate"]


def test_a_top_level_variants_key_points_to_pipelines(tmp_path):
    found = problems(tmp_path, {"variants": [{"name": "a", "set": {"seed": 1}}], "data": {"variants": {}}})
    assert "did you mean `pipelines:`?" in found["variants"]
    assert "data.variants" not in found  # data.variants is a key of its own, not a misspelling


def test_wrong_type_names_expected_and_found(tmp_path):
    found = problems(tmp_path, {"optim": {"batch_size": "big"}})
    assert "integer" in found["optim.batch_size"] and "'big'" in found["optim.batch_size"]


def test_all_problems_reported_at_once(tmp_path):
    found = problems(tmp_path, {"seed": "x", "optim": {"lr": -1}, "bogus": 1, "phases": [{"epochs": 2}]})
    assert {"seed", "optim.lr", "bogus", "phases.0.name"} <= set(found)


def test_missing_data_path(tmp_path):
    found = problems(tmp_path, {"data": {"source": "audio_folder", "root": "nowhere"}})
    assert "folder not found" in found["data.root"] and "nowhere" in found["data.root"]
    found = problems(tmp_path, {"data": {"source": "csv"}})
    assert "required" in found["data.train"]


def test_unknown_model_name_suggests_close_match(tmp_path):
    found = problems(tmp_path, {"model": {"name": "efficentnet_b0"}})
    assert "efficientnet_b0" in found["model.name"]


def test_impossible_phase_plan(tmp_path):
    found = problems(tmp_path, {"phases": [{"name": "a", "epochs": 5}, {"name": "a", "epochs": 1}],
                                "schedule": {"restarts": [9]}})
    assert "unique" in " ".join(found.values())
    assert "outside" in found["schedule.restarts"]
    found = problems(tmp_path, {"optim": {"batch_size": 4000}, "phases": [{"name": "a", "epochs": 1}]})
    assert "training set has" in found["phases.0"]


def test_feature_model_mismatch(tmp_path):
    found = problems(tmp_path, {"model": {"name": "cnn1d_attention"}})
    assert "waveform" in found["features.kind"]


def test_invalid_yaml_and_non_mapping(tmp_path):
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "a: [1, 2"))
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(write(tmp_path, "- 1\n- 2\n"))


def test_overrides_are_typed_like_yaml(tmp_path):
    path = write(tmp_path, {"phases": [{"name": "a", "epochs": 3}]})
    cfg = load_config(path, ["optim.lr=0.5", "max_steps=7", "phases.0.epochs=2", "eval.ema.enabled=true",
                             "schedule.restarts=[1]"])
    assert cfg.optim.lr == 0.5 and cfg.max_steps == 7 and cfg.phases[0].epochs == 2
    assert cfg.eval.ema.enabled is True and cfg.schedule.restarts == [1]


def test_bad_overrides(tmp_path):
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_overrides(["optim.lr"])
    with pytest.raises(ConfigError, match="index"):
        apply_overrides({"phases": [{}]}, [("phases.3.epochs", 1)])
    found = problems(tmp_path, {}, overrides=["optim.lrr=1"])
    assert "optim.lrr" in found


@pytest.mark.parametrize("path", sorted(glob.glob(str(ROOT / "configs" / "*.yaml"))))
def test_presets_are_valid(path):
    cfg = load_config(path, check_paths=False)
    assert cfg.phases and cfg.name


def test_image_recipe_matches_the_card():
    cfg = load_config(ROOT / "configs" / "image_efficientnetv2_s_cpu.yaml", check_paths=False)
    assert [(p.epochs, p.trainable, p.lr_mult) for p in cfg.phases] == [
        (8, 0.0, 1.0), (12, 0.25, 0.5), (20, 0.5, 0.3), (40, 1.0, 0.1)]
    assert (cfg.optim.batch_size, cfg.optim.accum_steps) == (4, 4)
    assert (cfg.loss.name, cfg.loss.focal_gamma, cfg.loss.label_smoothing) == ("focal", 2.5, 0.12)
    assert cfg.eval.ema.decay == 0.9998 and cfg.schedule.warmup_epochs == 8
    assert cfg.schedule.restarts == [25, 50, 70]


def test_config_docs_cover_every_key():
    text = config_docs()
    for key in ("data.synthetic.snr_db", "phases[].trainable", "eval.early_stopping.patience", "checkpoint.interval_seconds"):
        assert f"`{key}`" in text
    assert (ROOT / "docs" / "CONFIG.md").read_text() == text, "regenerate: longhaul config-docs -o docs/CONFIG.md"


def test_device_field_and_mixed_precision(tmp_path):
    assert load_config(write(tmp_path, {})).device == "auto"
    for name in ("auto", "cpu", "cuda"):  # cuda without a GPU is the engine's set-up error, not the config's
        assert load_config(write(tmp_path, {"device": name})).device == name
    found = problems(tmp_path, {"device": "gpu"})
    assert "'auto', 'cpu' or 'cuda'" in found["device"] and "'gpu'" in found["device"], found
    # optim.amp next to the older optim.bf16: old configs keep their meaning, a contradiction is refused
    assert load_config(write(tmp_path, {"optim": {"bf16": True}})).optim.precision == "bf16"
    assert load_config(write(tmp_path, {})).optim.precision == "none"
    assert load_config(write(tmp_path, {"optim": {"amp": "fp16"}})).optim.precision == "fp16"
    assert "contradicts optim.bf16" in problems(tmp_path, {"optim": {"bf16": True, "amp": "fp16"}})["optim.amp"]
    assert "optim.amp" in problems(tmp_path, {"optim": {"amp": "fp8"}})
