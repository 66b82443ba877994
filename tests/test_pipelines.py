"""Pipelines side by side (`pipelines:` in a config): each pipeline's config checked before
anything is made, the group and its runs made all or nothing, and one command that queues them and
ends with their comparison."""
import json
from pathlib import Path

import pytest
import yaml

from tests.daemon_helpers import wait_for
from tests.longhaul_cli import cli, cli_env, status
from tests.run_configs import DAEMON_TINY
from trainer import pipelines
from trainer.config import ConfigError
from trainer.run.errors import RunExists


def write_config(tmp_path: Path, pipes: list, **base) -> Path:
    config = tmp_path / "pipes.yaml"
    config.write_text(yaml.safe_dump({**DAEMON_TINY, "phases": [{"name": "train", "epochs": 3}], **base,
                                      "pipelines": pipes}))
    return config


def test_each_pipeline_is_the_base_config_with_its_overrides(tmp_path):
    config = write_config(tmp_path, [{"name": "mfcc"}, {"name": "wide", "set": {"model.options.hidden": [32]}}])
    members = pipelines.expand(config, ["seed=7"], "cmp")
    assert [name for name, _ in members] == ["cmp-mfcc", "cmp-wide"]
    assert [cfg.model.options["hidden"] for _, cfg in members] == [[16], [32]]
    assert {cfg.seed for _, cfg in members} == {7} and not any(cfg.pipelines for _, cfg in members)


def test_a_bad_override_names_the_pipeline_and_the_key_and_nothing_is_made(tmp_path):
    config = write_config(tmp_path, [{"name": "ok"}, {"name": "bad", "set": {"optim.batch_size": 0}}])
    with pytest.raises(ConfigError) as err:
        pipelines.expand(config, [], "cmp")
    assert "pipelines.1.set.optim.batch_size" in str(err.value)
    env = cli_env(tmp_path / "runs", tmp_path)
    result = cli(env, "start", str(config), "--name", "cmp", check=False)
    assert result.returncode != 0 and "pipelines.1.set.optim.batch_size" in result.stderr
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").iterdir())


def test_two_pipelines_of_one_name_are_refused(tmp_path):
    config = write_config(tmp_path, [{"name": "a"}, {"name": "a", "set": {"seed": 2}}])
    env = cli_env(tmp_path / "runs", tmp_path)
    result = cli(env, "start", str(config), check=False)
    assert result.returncode != 0 and "two pipelines are named 'a'" in result.stderr


def test_the_group_is_made_all_or_nothing(tmp_path):
    config = write_config(tmp_path, [{"name": "a"}, {"name": "b"}])
    members = pipelines.expand(config, [], "grp")
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "grp-b").mkdir()  # taken
    with pytest.raises(RunExists):
        pipelines.create_group(tmp_path / "runs", "grp", members, str(config))
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["grp-b"]


def test_one_command_queues_the_pipelines_and_ends_with_their_comparison(tmp_path, runtime_dir):
    config = write_config(tmp_path, [{"name": "small"}, {"name": "wide", "set": {"model.options.hidden": [32]}}])
    env = cli_env(tmp_path / "runs", runtime_dir)
    out = cli(env, "start", str(config), "--name", "cmp").stdout
    assert "queued 2 pipelines of cmp: cmp-small, cmp-wide" in out
    group = tmp_path / "runs" / "cmp"
    wait_for(lambda: (group / pipelines.COMPARE_HTML).exists(), 240, "the comparison")
    assert [status(env, name)["state"] for name in ("cmp-small", "cmp-wide")] == ["finished", "finished"]
    info = json.loads(cli(env, "status", "cmp", "--json").stdout)
    assert info["kind"] == "pipelines" and info["ended"] == 2 and info["compare"] == str(group / pipelines.COMPARE_HTML)
    comparison = json.loads((group / pipelines.COMPARE_JSON).read_text())
    assert [r["name"] for r in comparison["runs"]] == ["cmp-small", "cmp-wide"]
    assert "model.options.hidden" in comparison["config_diff"]
