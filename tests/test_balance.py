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
