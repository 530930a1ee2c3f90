"""covidzoo-example's aggregator, ensembler and optimizer, through covidzoo's registry."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import covidzoo
from covidzoo.ensemble import create_ensembler, load_ensembler


def test_flip_mean_weights_the_mirror():
    model = covidzoo.create_model("tiny3d", aggregator="flip-mean",
                                  aggregator_args={"weight": 0.25}, channels=[4, 8]).eval()
    assert model.num_classes == 1 and "weight=0.25" in repr(model)
    x = torch.randn(2, 1, 8, 16, 16)
    with torch.no_grad():
        plain, mirrored = model.backbone(x), model.backbone(x.flip(-1))
        torch.testing.assert_close(model(x), 0.75 * plain + 0.25 * mirrored)
        model.weight = 0.0
        torch.testing.assert_close(model(x), plain)


@pytest.mark.parametrize("weight", [-0.1, 1.5, "half", True])
def test_flip_mean_refuses_a_bad_weight(weight):
    with pytest.raises(covidzoo.BadInputError, match="flip-mean: weight must be a number in"):
        covidzoo.create_model("tiny3d", aggregator="flip-mean", aggregator_args={"weight": weight})


def test_flip_mean_wraps_3d_backbones_only():
    with pytest.raises(covidzoo.BadInputError, match="'flip-mean' wraps 3D backbones"):
        covidzoo.create_model("tiny2d", aggregator="flip-mean")


def test_geometric_mean_is_the_sigmoid_of_the_mean_logit():
    fusion = create_ensembler("geometric-mean")
    probs = np.array([[0.9, 0.5], [0.2, 0.2], [0.0, 1.0]])
    fused = fusion.fit(probs, np.array([1, 0, 1])).predict(probs)
    # logit(0.9) = ln 9, halved = ln 3: the sigmoid is 3/4. Symmetric clipping keeps 0.5.
    np.testing.assert_allclose(fused, [0.75, 0.2, 0.5], rtol=1e-9)
    with pytest.raises(covidzoo.BadInputError, match="the ensemble has 2 members"):
        fusion.predict(np.array([[0.5, 0.5, 0.5]]))


def test_geometric_mean_round_trips_through_json():
    fusion = create_ensembler("geometric-mean", eps=1e-3).fit(np.array([[0.3, 0.6, 0.9]]))
    data = json.loads(json.dumps(fusion.to_dict()))
    assert data == {"method": "geometric-mean", "n_models": 3, "eps": 1e-3}
    restored = load_ensembler(data)
    probs = np.array([[0.0, 0.6, 0.9], [0.1, 0.2, 0.3]])
    np.testing.assert_array_equal(restored.predict(probs), fusion.predict(probs))
    with pytest.raises(covidzoo.BadInputError, match="eps must be in"):
        create_ensembler("geometric-mean", eps=0.5)


def test_sgd_nodecay_keeps_weight_decay_off_norms_and_biases():
    from covidzoo.train import create_optimizer

    model = covidzoo.create_model("tiny2d", aggregator="auto", channels=[4, 8])
    optimizer = create_optimizer("sgd-nodecay", model, lr=0.1, weight_decay=0.01, momentum=0.8)
    assert isinstance(optimizer, torch.optim.SGD)
    groups = {g["weight_decay"]: g for g in optimizer.param_groups}
    assert sorted(groups) == [0.0, 0.01]
    assert groups[0.01]["param_names"] == [
        "backbone.blocks.0.conv.weight", "backbone.blocks.1.conv.weight", "backbone.head.weight"]
    assert all(n.endswith(".bias") or ".bn." in n for n in groups[0.0]["param_names"])
    assert {g["momentum"] for g in optimizer.param_groups} == {0.8}
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(model.parameters()))


def test_sgd_nodecay_takes_plain_tensors_too():
    from covidzoo_example.optim import sgd_nodecay

    weight, bias = torch.nn.Parameter(torch.ones(2, 2)), torch.nn.Parameter(torch.ones(2))
    optimizer = sgd_nodecay([weight, bias], lr=0.1, weight_decay=0.5, momentum=0.0,
                            nesterov=False)
    for p in (weight, bias):
        p.grad = torch.zeros_like(p)
    optimizer.step()
    torch.testing.assert_close(weight.detach(), torch.full((2, 2), 0.95))  # decayed
    torch.testing.assert_close(bias.detach(), torch.ones(2))  # not decayed
