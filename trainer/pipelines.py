"""Pipelines side by side: a config that lists `pipelines:` (each a name and config overrides)
becomes one queued run per pipeline and, once they have all ended, a comparison of them.

    ROOT/NAME/pipelines.json   the group (not a run): its members and where the comparison goes
    ROOT/NAME/compare.json     `longhaul compare --json` of the members, when the last one ended
    ROOT/NAME/compare.html     `longhaul report --compare` of them
    ROOT/NAME-<pipeline>       ordinary runs (config: the base with the pipeline's overrides and
                               no `pipelines`), queued in the listed order; their state.json names
                               the group (`pipeline_of`)

`expand` checks every pipeline's config before anything is made (a bad override names the
pipeline and the key); `create_group` makes the group and its runs all or nothing; `finish_group` is what a
member's daemon calls when its run ends. No torch at import (the comparison imports matplotlib
when it is drawn).
"""
from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Optional

from trainer.config import ConfigError, RunConfig, apply_overrides, build_config, dump_config, read_yaml, parse_overrides
from trainer.run import registry
from trainer.run.locate import check_run_name, create_run_dir
from trainer.run.rundir import RunDir, atomic_write_bytes, atomic_write_json
from trainer.run.state import FINAL_STATES, StateFile, effective_state, read_state

log = logging.getLogger(__name__)

GROUP_FILE = "pipelines.json"
COMPARE_JSON = "compare.json"
COMPARE_HTML = "compare.html"


def expand(config_path: Path, overrides: list[str], name: str) -> list[tuple[str, RunConfig]]:
    """(run name, config) of each pipeline of the config at `config_path` (with the command line's
    `--set` overrides under every pipeline's own). ConfigError naming the pipeline and the key."""
    raw = apply_overrides(read_yaml(config_path), parse_overrides(list(overrides)))
    pipelines = raw.pop("pipelines", None) or []
    members = []
    for index, pipeline in enumerate(pipelines):
        label = f"pipelines.{index} ({pipeline.get('name')})"
        pairs = list((pipeline.get("set") or {}).items())
        try:
            cfg = build_config(apply_overrides(raw, pairs), f"{config_path} {label}", config_path.resolve().parent)
        except ConfigError as exc:
            raise ConfigError(str(config_path), [(f"pipelines.{index}.set.{key}" if key else f"pipelines.{index}", problem)
                                                 for key, problem in exc.problems]) from None
        run_name = f"{name}-{pipeline['name']}"
        cfg.name = run_name
        members.append((run_name, cfg))
    return members


def create_group(root: Path, name: str, members: list[tuple[str, RunConfig]], source: str) -> tuple[Path, list[Path]]:
    """The group directory ROOT/name and one run directory per member (configs written, not
    started); pipelines.json last. Everything made is removed when a step fails."""
    for run_name, _ in members:
        check_run_name(run_name)
    made: list[Path] = []
    try:
        made.append(create_run_dir(root, name))
        for run_name, cfg in members:
            run_dir = create_run_dir(root, run_name)
            made.append(run_dir)
            atomic_write_bytes(RunDir(run_dir).config, dump_config(cfg).encode())
            registry.register(run_dir)
        atomic_write_json(made[0] / GROUP_FILE, {"name": name, "source": source, "created": time.time(),
                                                 "runs": [str(p) for p in made[1:]]})
    except BaseException:
        for path in reversed(made):
            shutil.rmtree(path, ignore_errors=True)
            registry.unregister(path)
        raise
    return made[0], made[1:]


def is_group(path: Path) -> bool:
    return (Path(path) / GROUP_FILE).is_file()


def read_group(group: Path) -> dict:
    return json.loads((Path(group) / GROUP_FILE).read_text())


def mark_member(run_dir: Path, group: Path) -> None:
    StateFile(run_dir).update(pipeline_of=str(group))


def group_status(group: Path) -> dict:
    """What `status NAME` of a group says: each member's state, and the comparison when made."""
    doc = read_group(group)
    runs = [{"name": Path(p).name, "dir": p, "state": effective_state(p)} for p in doc["runs"]]
    compared = Path(group) / COMPARE_HTML
    return {"name": doc["name"], "kind": "pipelines", "dir": str(group), "runs": runs,
            "ended": sum(r["state"] in FINAL_STATES for r in runs),
            "compare": str(compared) if compared.exists() else None}


def finish_group(run_dir: Path) -> Optional[Path]:
    """A member's run ended: once every member has, the comparison (json and html) is written into
    the group directory (again, when a stopped member was resumed to its end since). Returns the
    page when this call wrote it."""
    group = read_state(run_dir).get("pipeline_of")
    if not group or not is_group(Path(group)):
        return None
    runs = [Path(p) for p in read_group(Path(group))["runs"]]
    if any(effective_state(p) not in FINAL_STATES for p in runs):
        return None
    return write_comparison(Path(group), runs)


def write_comparison(group: Path, runs: list[Path]) -> Path:
    from trainer.posthoc.report_compare import write_compare_report
    from trainer.run.compare import compare_runs

    comparison = compare_runs(runs)
    atomic_write_json(group / COMPARE_JSON, comparison)
    page = write_compare_report(runs, group / COMPARE_HTML)
    log.info("pipelines %s: all %d runs ended; comparison in %s", group.name, len(runs), page)
    return page
