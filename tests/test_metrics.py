"""Classification metrics against answers worked out by hand (see the comments)."""
from __future__ import annotations

import warnings

import msgpack
import numpy as np
import pytest

from trainer.metrics import classification_metrics


def one_hot_probs(pred: list[int], k: int) -> np.ndarray:
    """Probabilities whose argmax is ``pred`` (0.6 on the predicted class, the rest shared)."""
    probs = np.full((len(pred), k), 0.4 / (k - 1))
    probs[np.arange(len(pred)), pred] = 0.6
    return probs


def binary_probs(p1: list[float]) -> np.ndarray:
    p1 = np.asarray(p1)
    return np.stack([1 - p1, p1], axis=1)


def assert_plain(value) -> None:
    """Only builtin types (not numpy scalars, which subclass float/int) all the way down."""
    if isinstance(value, dict):
        for k, v in value.items():
            assert type(k) is str
            assert_plain(v)
    elif isinstance(value, list):
        for v in value:
            assert_plain(v)
    else:
        assert value is None or type(value) in (int, float, str), (value, type(value))


@pytest.fixture(autouse=True)
def no_warnings():
    """Zero divisions and single-class inputs are handled, not warned about."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


def test_three_classes():
    y_true = [0, 0, 0, 1, 1, 2, 2, 2]
    pred = [0, 0, 1, 1, 2, 2, 2, 0]
    # confusion (rows true, columns predicted):
    #   true 0 -> predicted 0,0,1 : [2, 1, 0]
    #   true 1 -> predicted 1,2   : [0, 1, 1]
    #   true 2 -> predicted 2,2,0 : [1, 0, 2]
    # accuracy = (2 + 1 + 2) / 8 = 5/8
    # class 0: precision 2/3 (column sum 3), recall 2/3, f1 2/3
    # class 1: precision 1/2 (column sum 2), recall 1/2, f1 1/2
    # class 2: precision 2/3 (column sum 3), recall 2/3, f1 2/3
    # macro f1 = (2/3 + 1/2 + 2/3) / 3 = 11/18; weighted f1 = (3*2/3 + 2*1/2 + 3*2/3) / 8 = 5/8
    m = classification_metrics(np.array(y_true), one_hot_probs(pred, 3), ["a", "b", "c"], loss=0.75)
    assert m["val_loss"] == 0.75
    assert m["val_accuracy"] == pytest.approx(5 / 8)
    assert m["val_f1_macro"] == pytest.approx(11 / 18)
    assert m["val_f1_weighted"] == pytest.approx(5 / 8)
    assert m["val_precision_macro"] == pytest.approx(11 / 18)
    assert m["val_recall_macro"] == pytest.approx(11 / 18)
    assert m["per_class"]["precision"] == pytest.approx([2 / 3, 1 / 2, 2 / 3])
    assert m["per_class"]["recall"] == pytest.approx([2 / 3, 1 / 2, 2 / 3])
    assert m["per_class"]["f1"] == pytest.approx([2 / 3, 1 / 2, 2 / 3])
    assert m["per_class"]["support"] == [3, 2, 3]
    assert m["confusion"] == [[2, 1, 0], [0, 1, 1], [1, 0, 2]]
    assert m["classes"] == ["a", "b", "c"]
    assert "val_auc_roc" not in m and "val_sensitivity" not in m
    assert_plain(m)
    assert msgpack.unpackb(msgpack.packb(m)) == m


def test_binary():
    y_true = [0, 0, 0, 0, 0, 1, 1, 1]
    p1 = [0.1, 0.2, 0.45, 0.7, 0.6, 0.4, 0.8, 0.9]
    # predicted (p1 > 0.5):   0, 0, 0, 1, 1, 0, 1, 1
    # TN = 3 (0.1, 0.2, 0.45), FP = 2 (0.7, 0.6), FN = 1 (0.4), TP = 2 (0.8, 0.9)
    # sensitivity = TP/(TP+FN) = 2/3, specificity = TN/(TN+FP) = 3/5
    # PPV = TP/(TP+FP) = 2/4, NPV = TN/(TN+FN) = 3/4, accuracy = 5/8
    # f1: class 1 = 2*(1/2)*(2/3)/(1/2+2/3) = 4/7; class 0 = 2*(3/4)*(3/5)/(3/4+3/5) = 2/3
    # macro f1 = (2/3 + 4/7)/2 = 13/21; weighted = (5*2/3 + 3*4/7)/8 = 53/84
    # ROC AUC = share of (positive, negative) pairs ranked right:
    #   0.4 beats 0.1, 0.2 -> 2; 0.8 beats all 5; 0.9 beats all 5 -> 12/15 = 0.8
    # average precision, scores descending: 0.9+ 0.8+ 0.7- 0.6- 0.45- 0.4+ ...
    #   precision at each positive: 1/1, 2/2, 3/6 -> (1 + 1 + 1/2) / 3 = 5/6
    m = classification_metrics(np.array(y_true), binary_probs(p1), ["neg", "pos"])
    assert "val_loss" not in m
    assert m["confusion"] == [[3, 2], [1, 2]]
    assert m["val_accuracy"] == pytest.approx(5 / 8)
    assert m["val_sensitivity"] == pytest.approx(2 / 3)
    assert m["val_specificity"] == pytest.approx(3 / 5)
    assert m["val_ppv"] == pytest.approx(1 / 2)
    assert m["val_npv"] == pytest.approx(3 / 4)
    assert m["val_f1_macro"] == pytest.approx(13 / 21)
    assert m["val_f1_weighted"] == pytest.approx(53 / 84)
    assert m["val_auc_roc"] == pytest.approx(0.8)
    assert m["val_auc_pr"] == pytest.approx(5 / 6)
    assert_plain(m)


def test_binary_single_class_has_no_auc():
    # all positive; predicted 0, 1, 1 -> TP = 2, FN = 1, no negatives at all
    # sensitivity 2/3, PPV 2/2 = 1; specificity 0/0 -> 0.0, NPV 0/(0+1) = 0
    m = classification_metrics(np.array([1, 1, 1]), binary_probs([0.2, 0.7, 0.9]), ["neg", "pos"])
    assert m["val_auc_roc"] is None and m["val_auc_pr"] is None
    assert m["val_sensitivity"] == pytest.approx(2 / 3)
    assert m["val_ppv"] == 1.0
    assert m["val_specificity"] == 0.0 and m["val_npv"] == 0.0
    assert m["per_class"]["support"] == [0, 3]
    assert_plain(m)


def test_class_never_predicted_scores_zero():
    # class 1 is never predicted: precision 0/0 -> 0.0, recall 0/1 = 0, f1 0
    # class 0: precision 1/2 (predicted twice, right once), recall 1/1, f1 2/3
    # class 2: precision 2/2, recall 2/2, f1 1
    m = classification_metrics(np.array([0, 1, 2, 2]), one_hot_probs([0, 0, 2, 2], 3), ["a", "b", "c"])
    assert m["per_class"]["precision"] == pytest.approx([1 / 2, 0.0, 1.0])
    assert m["per_class"]["recall"] == pytest.approx([1.0, 0.0, 1.0])
    assert m["per_class"]["f1"] == pytest.approx([2 / 3, 0.0, 1.0])
    assert m["val_f1_macro"] == pytest.approx((2 / 3 + 0 + 1) / 3)


def test_class_absent_from_truth_and_predictions_is_left_out_of_macro_averages():
    # class 2 never occurs: per_class lists it with zeros, the macro average covers classes 0, 1
    # class 0: precision 1/1, recall 1/2, f1 2/3; class 1: precision 2/3, recall 2/2, f1 4/5
    # macro f1 = (2/3 + 4/5)/2 = 11/15
    m = classification_metrics(np.array([0, 0, 1, 1]), one_hot_probs([0, 1, 1, 1], 3), ["a", "b", "c"])
    assert m["per_class"]["f1"] == pytest.approx([2 / 3, 4 / 5, 0.0])
    assert m["per_class"]["support"] == [2, 2, 0]
    assert m["val_f1_macro"] == pytest.approx(11 / 15)
    assert m["confusion"] == [[1, 1, 0], [0, 2, 0], [0, 0, 0]]


@pytest.mark.parametrize(
    "y_true, probs, classes, message",
    [
        ([0, 1], np.ones((3, 2)), ["a", "b"], r"probs must have shape \(N, K\) = \(2, K\)"),
        ([0, 1], np.ones((2, 3)), ["a", "b"], "3 columns but there are 2 classes"),
        ([0, 2], np.ones((2, 2)), ["a", "b"], "class index 2, outside 0..1"),
        ([0.0, 1.0], np.ones((2, 2)), ["a", "b"], "integer class indices"),
        ([], np.ones((0, 2)), ["a", "b"], "empty"),
        ([0, 1], np.array([[0.5, np.nan], [0.5, 0.5]]), ["a", "b"], "NaN"),
    ],
)
def test_bad_input_is_named(y_true, probs, classes, message):
    with pytest.raises(ValueError, match=message):
        classification_metrics(np.array(y_true), probs, classes)
