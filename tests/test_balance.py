"""Class balance: data.max_per_class (a deterministic, stable subset) and the balanced epoch order."""
from __future__ import annotations

import numpy as np
import pytest

from trainer.data.balance import balanced_order, cap_per_class, expected_draws
from trainer.data.sampler import EpochSampler, epoch_order


def _names(label: str, n: int, start: int = 0) -> list[str]:
    return [f"/data/{label}/{i}.wav" for i in range(start, start + n)]


# ----------------------------------------------------------------------------- max_per_class
def test_cap_keeps_at_most_k_per_class_in_original_order():
    names = _names("a", 50) + _names("b", 3) + _names("c", 20)
    labels = [0] * 50 + [1] * 3 + [2] * 20
    kept = cap_per_class(names, labels, 10, seed=1)
    assert kept == sorted(kept)
    counts = np.bincount(np.asarray(labels)[kept])
    assert counts.tolist() == [10, 3, 10]


def test_cap_same_seed_same_subset_other_seed_another():
    names, labels = _names("a", 100), [0] * 100
    assert cap_per_class(names, labels, 10, seed=7) == cap_per_class(names, labels, 10, seed=7)
    assert cap_per_class(names, labels, 10, seed=7) != cap_per_class(names, labels, 10, seed=8)


def test_cap_does_not_depend_on_scan_order():
    names, labels = _names("a", 60), [0] * 60
    kept = {names[i] for i in cap_per_class(names, labels, 10, seed=3)}
    rev_names = names[::-1]
    assert {rev_names[i] for i in cap_per_class(rev_names, labels, 10, seed=3)} == kept


def test_adding_files_to_one_class_leaves_the_others_alone():
    names = _names("a", 40) + _names("b", 40)
    labels = [0] * 40 + [1] * 40
    before = [names[i] for i in cap_per_class(names, labels, 10, seed=5)]
    # new files of class a arrive (at the start and at the end of the scan)
    grown = _names("a", 30, start=100) + names + _names("a", 30, start=200)
    grown_labels = [0] * 30 + labels + [0] * 30
    after = [grown[i] for i in cap_per_class(grown, grown_labels, 10, seed=5)]
    assert [n for n in after if "/b/" in n] == [n for n in before if "/b/" in n]
    # a kept example of class a stays kept unless one of the new files ranks before it
    kept_a_before = {n for n in before if "/a/" in n}
    kept_a_after = {n for n in after if "/a/" in n}
    assert len(kept_a_after) == 10
    assert kept_a_after - kept_a_before <= set(_names("a", 30, 100) + _names("a", 30, 200))


def test_cap_refuses_mismatched_lengths():
    with pytest.raises(ValueError, match="2 items but 1 labels"):
        cap_per_class(["x", "y"], [0], 1, 0)


# ----------------------------------------------------------------------------- balanced order
LABELS = np.asarray([0] * 200 + [1] * 7 + [2] * 40 + [3] * 1)


@pytest.mark.parametrize("n", [len(LABELS), 13, 1001])
def test_balanced_counts_within_one_of_an_even_share(n):
    order = balanced_order(LABELS, n, seed=1, epoch=0)
    assert len(order) == n and order.min() >= 0 and order.max() < len(LABELS)
    counts = np.bincount(LABELS[order], minlength=4)
    assert counts.max() - counts.min() <= 1
    assert abs(counts - n / 4).max() <= 1


def test_balanced_draws_without_replacement_as_far_as_possible():
    order = balanced_order(LABELS, len(LABELS), seed=2, epoch=0)
    drawn = LABELS[order]
    big = order[drawn == 0]  # 62 draws from 200 examples: none repeated
    assert len(set(big.tolist())) == len(big)
    small = np.bincount(order[drawn == 1], minlength=len(LABELS))[200:207]  # 62 draws from 7
    assert small.max() - small.min() <= 1  # each example once per cycle


def test_balanced_is_deterministic_and_new_each_epoch():
    a = balanced_order(LABELS, 100, seed=3, epoch=4)
    assert np.array_equal(a, balanced_order(LABELS.tolist(), 100, seed=3, epoch=4))
    assert not np.array_equal(a, balanced_order(LABELS, 100, seed=3, epoch=5))
    assert not np.array_equal(a, balanced_order(LABELS, 100, seed=4, epoch=4))


def test_balanced_ignores_classes_with_no_examples_and_handles_empty():
    labels = [0, 0, 2, 2, 2]  # class 1 has no training examples
    counts = np.bincount(np.asarray(labels)[balanced_order(labels, 10, 0, 0)], minlength=3)
    assert counts.tolist() == [5, 0, 5]
    assert balanced_order([], 0, 0, 0).size == 0
    assert expected_draws([2, 0, 3], 10) == [5.0, 0.0, 5.0]


def test_epoch_sampler_balanced_and_resumed_mid_epoch():
    labels = LABELS.tolist()
    full = list(EpochSampler(len(labels), seed=9, epoch=2, length=240, labels=labels))
    assert [i for _, i in full] == epoch_order(len(labels), 9, 2, labels)[:240].tolist()
    rest = list(EpochSampler(len(labels), seed=9, epoch=2, start=96, length=240, labels=labels))
    assert rest == full[96:]
    plain = [i for _, i in EpochSampler(len(labels), seed=9, epoch=2)]
    assert sorted(plain) == list(range(len(labels)))  # without labels: the plain permutation


def test_epoch_sampler_refuses_labels_of_another_size():
    with pytest.raises(ValueError, match="3 labels for 4 examples"):
        EpochSampler(4, 0, 0, labels=[0, 1, 1])


# ----------------------------------------------------------------------------- in the data layer
def _synthetic(**data):
    from tests.run_configs import MFCC_TINY, run_config

    return run_config(MFCC_TINY, **{"data.synthetic": {"classes": 3, "train_per_class": 10, "val_per_class": 2},
                                    **{f"data.{k}": v for k, v in data.items()}})


def test_scan_caps_training_only_and_keeps_scan_order():
    from trainer.data.sources import scan

    found = scan(_synthetic(max_per_class=4))
    assert found.before_cap == [10, 10, 10]
    train = found.splits["train"]
    assert np.bincount([item.label for item in train]).tolist() == [4, 4, 4]
    assert [item.index for item in train] == sorted(item.index for item in train)
    assert len(found.splits["val"]) == 6  # never cut
    again = scan(_synthetic(max_per_class=4))
    assert [item.index for item in again.splits["train"]] == [item.index for item in train]
    assert scan(_synthetic()).before_cap is None


def test_cap_comes_after_the_validation_hold_out(tmp_path):
    from trainer.config import RunConfig
    from trainer.data.sources import scan
    from tests.audio_folders import write_audio_folders

    write_audio_folders(tmp_path, per_class=8)  # train/ and val/; use train/ alone as the root
    cfg = RunConfig.model_validate({"seed": 3, "data": {"source": "audio_folder", "root": str(tmp_path / "train"),
                                                        "sample_rate": 8000, "val_fraction": 0.25}})
    uncapped = scan(cfg)
    capped = scan(RunConfig.model_validate({**cfg.model_dump(), "data": {**cfg.data.model_dump(), "max_per_class": 3}}))
    assert [i.where for i in capped.splits["val"]] == [i.where for i in uncapped.splits["val"]]
    assert capped.before_cap == [7, 6]  # bird: 9 files (one broken), insect: 8; 2 of each held out
    assert np.bincount([i.label for i in capped.splits["train"]]).tolist() == [3, 3]
    kept = {i.where for i in capped.splits["train"]}
    assert kept <= {i.where for i in uncapped.splits["train"]}


def test_cap_keeps_one_subset_however_the_root_is_spelled(tmp_path):
    """`longhaul prepare CONFIG` scans data.root as written ('configs/../data', a link); the run's
    copy of the config names it resolved: both must keep the same files."""
    from trainer.config import RunConfig
    from trainer.data.sources import scan

    for label in ("a", "b"):
        (tmp_path / "data" / label).mkdir(parents=True)
        for i in range(20):
            (tmp_path / "data" / label / f"{label}{i:02d}.wav").touch()
    (tmp_path / "configs").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "data")
    kept = []
    for root in (tmp_path / "data", tmp_path / "configs" / ".." / "data", tmp_path / "link"):
        cfg = RunConfig.model_validate({"seed": 3, "data": {"source": "audio_folder", "root": str(root),
                                                            "sample_rate": 8000, "max_per_class": 5}})
        kept.append([item.where for item in scan(cfg).splits["train"]])
    assert kept[0] == kept[1] == kept[2] and len(kept[0]) == 10
    assert all(where.startswith(str(tmp_path.resolve() / "data")) for where in kept[0])


def test_check_data_shows_counts_before_the_cap_and_the_balanced_draws():
    from trainer.data import check_data

    report = check_data(_synthetic(max_per_class=4, balanced_sampler=True))
    assert report.counts["train"] == [4, 4, 4] and report.before_cap == [10, 10, 10]
    text = report.to_text()
    header = next(line for line in text.splitlines() if line.strip().startswith("class"))
    assert "before cap" in header and "drawn/epoch" in header
    assert "30 training examples found, 12 kept" in text
    plain = check_data(_synthetic()).to_text()
    assert "before cap" not in plain and "drawn/epoch" not in plain


def test_engine_epoch_batches_follow_the_balanced_order():
    from trainer.engine import LoopState, epoch_batches
    from trainer.schedule import Plan

    class Labelled:
        labels = [0] * 20 + [1] * 4

        def __len__(self):
            return len(self.labels)

        def __getitem__(self, key):
            return np.float32(key[1]), self.labels[key[1]]

    cfg = _synthetic(balanced_sampler=True)
    plan = Plan.from_config(cfg, n_train=24)
    seen = [int(i) for group in epoch_batches(cfg, Labelled(), plan, LoopState()) for x, _, _ in group for i in x]
    expected = balanced_order(Labelled.labels, 24, cfg.seed, 0)[:len(seen)].tolist()
    assert seen == expected and len(seen) >= 16


class _StopAfter:
    """A publisher that asks the run to stop once it logged `steps` train records (a resume
    then starts mid-epoch)."""

    def __init__(self, controls, steps: int):
        from trainer.engine import NullPublisher

        self.controls, self.steps, self.sent = controls, steps, False
        self._null = NullPublisher()

    def record(self, record: dict) -> None:
        if record.get("kind") == "train" and record["step"] >= self.steps and not self.sent:
            self.sent = True
            self.controls.put((1, "stop"))

    def __getattr__(self, name):
        return getattr(self._null, name)


def test_balanced_run_stopped_mid_epoch_resumes_bit_identically(tmp_path):
    import queue

    import torch

    from tests.run_configs import MFCC_MLP, RESNET_TINY, changed, run_config
    from trainer.engine import Trainer
    from trainer.history import read_history

    raw = changed(RESNET_TINY, **MFCC_MLP)
    raw["data"]["synthetic"].update(classes=3, train_per_class=20)
    raw["data"]["balanced_sampler"] = True
    raw["data"]["max_per_class"] = 16  # 48 examples: 3 steps of 16 per epoch, 12 in all
    raw["checkpoint"]["interval_seconds"] = 3600
    cfg = run_config(raw)
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    whole.mkdir()
    cut.mkdir()
    assert Trainer(cfg, whole).run() == "finished"
    controls = queue.SimpleQueue()
    assert Trainer(cfg, cut, _StopAfter(controls, 1), controls).run() == "stopped"

    def losses(run):
        return {r["step"]: r["train_loss"] for r in read_history(run / "history.msgpack") if r["kind"] == "train"}

    assert max(losses(cut)) % 3 != 0  # stopped inside an epoch
    assert Trainer(cfg, cut).run() == "finished"

    assert losses(cut) == losses(tmp_path / "whole") and len(losses(cut)) > 2
    want = torch.load(tmp_path / "whole" / "last.pt", map_location="cpu", weights_only=False)["model"]
    got = torch.load(cut / "last.pt", map_location="cpu", weights_only=False)["model"]
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_balanced_sampler_with_balanced_class_weights_is_a_warning():
    from trainer.config import RunConfig, config_warnings

    both = RunConfig.model_validate({"data": {"balanced_sampler": True}, "loss": {"class_weights": "balanced"}})
    assert "corrects the imbalance twice" in dict(config_warnings(both))["loss.class_weights"]
    one = RunConfig.model_validate({"data": {"balanced_sampler": True}})
    assert "loss.class_weights" not in dict(config_warnings(one))
