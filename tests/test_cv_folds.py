"""Cross-validation folds in the data layer (data.folds): disjoint, covering the pool once,
stratified, deterministic from the seed and the same for every fold index."""
from pathlib import Path

import numpy as np
import pytest

from trainer.config import ConfigError, RunConfig, build_config
from trainer.data.folds import fold_of, split_indices
from trainer.data.sources import scan

SYNTH = {"source": "synthetic", "synthetic": {"classes": 3, "train_per_class": 10, "val_per_class": 2,
                                               "test_per_class": 2}}


def folds_cfg(k, index, seed=5, **data):
    cfg = RunConfig.model_validate({"seed": seed, "data": {**SYNTH, **data, "folds": {"k": k, "index": index}},
                                    "model": {"name": "mfcc_mlp"}, "features": {"kind": "mfcc"}})
    cfg._base_dir = Path(".")
    return cfg


def names(items):
    return [item.name for item in items]


def test_folds_are_disjoint_cover_the_pool_and_agree_across_indices():
    plain = scan(RunConfig.model_validate({"data": SYNTH}))
    pool = names(plain.splits["train"])  # the synthetic train split is the pool
    assert len(pool) == 30
    held, trained = [], []
    for index in range(3):
        found = scan(folds_cfg(3, index))
        held.append(set(names(found.splits["val"])))
        trained.append(set(names(found.splits["train"])))
        assert held[-1].isdisjoint(trained[-1])
        assert held[-1] | trained[-1] == set(pool)
        assert names(found.splits["test"]) == names(plain.splits["test"])
    assert sum(len(h) for h in held) == len(pool) == len(set().union(*held))
    for index in range(3):  # fold i's training part is exactly the other folds
        assert trained[index] == set().union(*(held[j] for j in range(3) if j != index))


def test_folds_are_stratified_and_deterministic_from_the_seed():
    labels = np.repeat([0, 1, 2], [12, 9, 30])
    folds = fold_of(labels, 3, seed=1)
    for fold in range(3):
        counts = np.bincount(labels[folds == fold], minlength=3)
        assert list(counts) == [4, 3, 10]
    assert (fold_of(labels, 3, seed=1) == folds).all()
    assert not (fold_of(labels, 3, seed=2) == folds).all()
    assert split_indices(labels, 3, 1, seed=1)[1] == [int(i) for i in np.flatnonzero(folds == 1)]


def test_max_per_class_cuts_the_pool_before_the_folds():
    held = [scan(folds_cfg(2, index, max_per_class=6)).splits["val"] for index in range(2)]
    assert [len(h) for h in held] == [9, 9]  # 3 classes x 6 kept, in two folds
    assert set(names(held[0])).isdisjoint(names(held[1]))


def test_a_class_smaller_than_k_is_a_problem_naming_it():
    found = scan(folds_cfg(3, 0, synthetic={"classes": 2, "train_per_class": 10, "val_per_class": 1},
                           max_per_class=2))
    messages = [p.reason for p in found.problems]
    assert any("class 'tone' has 2 training example(s), fewer than data.folds.k = 3" in m for m in messages)
    assert not any(p.skippable for p in found.problems)


def test_a_given_validation_split_is_not_used_and_no_hold_out(tmp_path):
    from tests.test_data_sources import write_wav

    rows = [f"{i}.wav,{'a' if i % 2 else 'b'}" for i in range(8)]
    for i in range(8):
        write_wav(tmp_path / f"{i}.wav")
    (tmp_path / "train.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "val.csv").write_text("0.wav,b\n1.wav,a\n")
    cfg = RunConfig.model_validate({"data": {"source": "csv", "train": "train.csv", "val": "val.csv",
                                             "folds": {"k": 2, "index": 1}}})
    cfg._base_dir = tmp_path
    found = scan(cfg)
    assert len(found.splits["val"]) == 4 and len(found.splits["train"]) == 4
    assert any("val.csv is not used" in w for w in found.warnings)
    assert not any("held out" in w for w in found.warnings)


@pytest.mark.parametrize("folds, key, text", [
    ({"k": 1}, "data.folds.k", "greater than or equal to 2"),
    ({"k": 3, "index": 3}, "data.folds.index", "must be < data.folds.k (3), found 3"),
    ({"k": 3, "index": -1}, "data.folds.index", "greater than or equal to 0"),
])
def test_bad_folds_are_config_errors_naming_the_key(folds, key, text):
    with pytest.raises(ConfigError) as err:
        build_config({"data": {"folds": folds}}, "cv.yaml", Path("."), check_paths=False, check_model=False)
    assert any(k == key and text in message for k, message in err.value.problems), err.value.problems


def test_folds_with_a_feature_store_are_refused():
    with pytest.raises(ConfigError) as err:
        build_config({"data": {"store": "store", "folds": {"k": 3}}}, "cv.yaml", Path("."), check_paths=False,
                     check_model=False)
    assert any(k == "data.folds.k" and "unset data.store" in m for k, m in err.value.problems)
