"""`covidzoo.task.Task`: the loss on hard and soft targets, probabilities, and bad settings."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from covidzoo.errors import BadInputError
from covidzoo.task import Task

THREE = ("covid", "non-covid", "pneumonia")


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("pos_weight", [None, 2.5])
def test_binary_loss_on_hard_targets_is_bce(pos_weight: float | None) -> None:
    logits = torch.randn(5, 1, generator=gen(1))
    labels = torch.tensor([1, 0, 0, 1, -1])  # unknown (-1) counts as non-covid
    task = Task(pos_weight=pos_weight)
    pw = None if pos_weight is None else torch.tensor([pos_weight])
    expected = F.binary_cross_entropy_with_logits(
        logits, torch.tensor([[1.0], [0], [0], [1], [0]]), pos_weight=pw)
    torch.testing.assert_close(task.loss(logits, task.targets(labels)), expected)


def test_binary_class_weights_weight_each_class() -> None:
    # w1 * y * log(p) + w0 * (1 - y) * log(1 - p), averaged over the batch.
    logits, y = torch.tensor([[0.3], [-1.2], [2.0]]), torch.tensor([1, 0, 1])
    got = Task(class_weights=(0.5, 3.0)).loss(logits, Task().targets(y))
    expected = 0.0
    for z, t in zip(logits.view(-1).tolist(), y.tolist(), strict=True):
        p = 1 / (1 + math.exp(-z))
        expected -= 3.0 * t * math.log(p) + 0.5 * (1 - t) * math.log(1 - p)
    assert got.item() == pytest.approx(expected / 3, rel=1e-6)


def test_binary_loss_on_a_soft_target_by_hand() -> None:
    logits, target, pw = torch.tensor([[0.3], [-1.2]]), torch.tensor([0.7, 0.2]), 3.0
    got = Task(pos_weight=pw).loss(logits, target)
    expected = 0.0
    for z, t in zip(logits.view(-1).tolist(), target.tolist(), strict=True):
        p = 1 / (1 + math.exp(-z))
        expected -= pw * t * math.log(p) + (1 - t) * math.log(1 - p)
    assert got.item() == pytest.approx(expected / 2, rel=1e-6)
    # Label smoothing 0.2: the targets 0.7 and 0.2 become 0.66 and 0.26.
    smoothed = Task(label_smoothing=0.2).loss(logits, target)
    plain = Task().loss(logits, torch.tensor([0.66, 0.26]))
    assert smoothed.item() == pytest.approx(plain.item(), rel=1e-6)
    assert smoothed.item() != pytest.approx(Task().loss(logits, target).item(), rel=1e-3)


@pytest.mark.parametrize("weights", [None, (1.0, 3.0, 0.5)])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_multiclass_loss_is_cross_entropy_on_indices_and_on_one_hot(weights, smoothing) -> None:
    logits = torch.randn(6, 3, generator=gen(2))
    y = torch.tensor([0, 2, 1, 2, 2, 0])
    task = Task(THREE, class_weights=weights, label_smoothing=smoothing)
    w = None if weights is None else torch.tensor(weights)
    expected = F.cross_entropy(logits, y, weight=w, label_smoothing=smoothing)
    torch.testing.assert_close(task.loss(logits, task.targets(y)), expected)
    torch.testing.assert_close(task.loss(logits, F.one_hot(y, 3).float()), expected)


def test_multiclass_loss_on_soft_targets_by_hand() -> None:
    logits = torch.tensor([[1.0, 0.0, -1.0], [0.5, 0.5, 2.0]])
    target = torch.tensor([[0.6, 0.4, 0.0], [0.0, 0.3, 0.7]])
    w = torch.tensor([2.0, 1.0, 0.5])
    logp = logits.log_softmax(1)
    torch.testing.assert_close(Task(THREE).loss(logits, target), -(target * logp).sum() / 2)
    weighted = -(target * w * logp).sum() / (target * w).sum()
    torch.testing.assert_close(Task(THREE, class_weights=tuple(w.tolist())).loss(logits, target),
                               weighted)


def test_probabilities() -> None:
    logits = torch.tensor([[0.0], [2.0]])
    torch.testing.assert_close(Task().probs(logits), torch.sigmoid(logits[:, 0]))
    logits = torch.randn(4, 3, generator=gen(3))
    torch.testing.assert_close(Task(THREE).probs(logits), logits.softmax(1))
    assert Task().outputs == 1 and Task(THREE).outputs == 3


@pytest.mark.parametrize("kwargs, message", [
    ({"classes": ("a",)}, "two or more distinct"),
    ({"classes": ("a", "a", "b")}, "two or more distinct"),
    ({"class_weights": (1.0,)}, "1 weight"),
    ({"class_weights": (1.0, float("nan"))}, "finite numbers > 0"),
    ({"class_weights": (1.0, 0.0)}, "finite numbers > 0"),
    ({"class_weights": (1.0, 2.0), "pos_weight": 2.0}, "give one"),
    ({"classes": THREE, "pos_weight": 2.0}, "--pos-weight is for two classes"),
    ({"label_smoothing": 1.0}, "--label-smoothing"),
    ({"label_smoothing": -0.1}, "--label-smoothing"),
])
def test_bad_settings_name_the_flag(kwargs, message) -> None:
    with pytest.raises(BadInputError, match=message):
        Task(**kwargs)
