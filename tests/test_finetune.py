"""Step-2 options of the training loop do what they say."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ffr.data.loading import TensorData
from ffr.data.manifest import DatasetCard
from ffr.train.backbones import BACKBONES, create_model
from ffr.train.finetune import StageControls
from ffr.train.loop import TrainConfig, fit
from ffr.train.objectives import create_objective

CARD = DatasetCard("t", ["a", "b"], ["x", "y"])


def tiny_data(n=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    biases = (torch.arange(n) // 2) % 2
    images = torch.randint(0, 256, (n, 3, 8, 8), generator=g, dtype=torch.uint8)
    images[labels == 1, 0] = 255  # a learnable signal
    return TensorData(images, labels, biases, torch.zeros(n, dtype=torch.long), CARD)


def snapshot(module: nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def changed(before: dict, module: nn.Module) -> set[str]:
    after = module.state_dict()
    return {k for k, v in before.items() if not torch.equal(v, after[k])}


def train(model, epochs=1, **opts):
    torch.manual_seed(0)
    cfg = TrainConfig(**{"epochs": epochs, "batch_size": 8, "lr": 1e-2, "min_steps": 0, "patience": 0, **opts})
    return fit(model, tiny_data(), tiny_data(16, 1), create_objective("erm"), cfg, torch.device("cpu"))


@pytest.mark.parametrize("backbone", BACKBONES.names())
def test_stages_cover_the_feature_extractor(backbone):
    model = create_model(backbone, 2)
    stages = model.stages()
    assert len(stages) == (5 if backbone.startswith("resnet") else 3)
    staged = {id(p) for s in stages for p in s.parameters()}
    assert staged == {id(p) for p in model.features.parameters()}


def test_freeze_stages_keeps_the_first_stages():
    model = create_model("small_cnn", 2)
    first = snapshot(model.stages()[0])
    rest = snapshot(model.stages()[2])
    train(model, freeze_stages=1)
    assert changed(first, model.stages()[0]) == set()          # weights and BN statistics
    assert changed(rest, model.stages()[2])                    # the rest trains
    with pytest.raises(ValueError, match="3 stages"):
        StageControls(create_model("small_cnn", 2), TrainConfig(freeze_stages=4))


def test_freeze_bn_keeps_statistics_and_affine():
    model = create_model("small_cnn", 2)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    before = [snapshot(b) for b in bns]
    conv = model.features[0].weight.detach().clone()
    train(model, freeze_bn=True)
    assert all(changed(b, m) == set() for b, m in zip(before, bns))
    assert not torch.equal(conv, model.features[0].weight)
    # without the option the statistics move
    model = create_model("small_cnn", 2)
    bn = model.features[1]
    mean = bn.running_mean.clone()
    train(model)
    assert not torch.equal(mean, bn.running_mean)


def test_backbone_lr_mult():
    model = create_model("small_cnn", 2)
    groups = StageControls(model, TrainConfig(lr=1e-3, backbone_lr_mult=0.1)).param_groups()
    assert [g["lr"] for g in groups] == pytest.approx([1e-4, 1e-3])
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in model.head.parameters()}
    # multiplier 0: the feature weights do not move, the head does
    model = create_model("small_cnn", 2)
    conv, head = model.features[0].weight.detach().clone(), model.head.weight.detach().clone()
    train(model, backbone_lr_mult=0.0)
    assert torch.equal(conv, model.features[0].weight)
    assert not torch.equal(head, model.head.weight)


def test_l2sp_is_zero_at_init_and_positive_after_a_step():
    model = create_model("small_cnn", 2)
    ctl = StageControls(model, TrainConfig(l2sp=0.5))
    assert float(ctl.penalty().detach()) == 0.0
    opt = torch.optim.SGD(ctl.param_groups(), lr=0.1)
    ctl.start_epoch(model, 0)
    x = torch.randn(4, 3, 8, 8)
    nn.functional.cross_entropy(model(x), torch.tensor([0, 1, 0, 1])).backward()
    opt.step()
    pen = float(ctl.penalty().detach())
    expected = 0.5 * 0.5 * sum(float(((p.detach() - r) ** 2).sum()) for p, r in zip(ctl.backbone, ctl.reference))
    assert pen > 0 and pen == pytest.approx(expected)
    assert StageControls(model, TrainConfig()).penalty() is None


def test_l2sp_pulls_toward_the_initial_weights():
    def drift(l2sp):
        model = create_model("small_cnn", 2)
        init = torch.cat([p.detach().flatten().clone() for p in model.features.parameters()])
        train(model, epochs=2, l2sp=l2sp)
        return float((torch.cat([p.detach().flatten() for p in model.features.parameters()]) - init).norm())

    assert drift(100.0) < drift(0.0)


def test_lpft_trains_the_head_first():
    model = create_model("small_cnn", 2)
    feats, head = snapshot(model.features), model.head.weight.detach().clone()
    result = train(model, epochs=1, lpft_epochs=1)
    assert changed(feats, model.features) == set()   # linear probing only: no BN statistics either
    assert not torch.equal(head, model.head.weight)
    assert all(p.requires_grad for p in result.model.parameters())
    model = create_model("small_cnn", 2)
    feats = snapshot(model.features)
    train(model, epochs=2, lpft_epochs=1)
    assert changed(feats, model.features)             # then everything


def test_select_init_keeps_the_starting_weights_when_training_only_hurts():
    val = tiny_data(16, 1)
    torch.manual_seed(0)
    good = train(create_model("small_cnn", 2), epochs=4).model   # learns the red-channel signal
    start = snapshot(good)
    # training data whose labels are swapped: every step only hurts, the starting weights must win
    d = tiny_data()
    swapped = TensorData(d.images, 1 - d.labels, d.biases, d.sources, CARD)
    cfg = TrainConfig(epochs=2, min_steps=0, patience=0, batch_size=8, lr=0.5, optimizer="sgd", momentum=0.0,
                      select_init=True)
    result = fit(good, swapped, val, create_objective("erm"), cfg, torch.device("cpu"))
    assert [h["epoch"] for h in result.history] == [-1, 0, 1]
    assert result.history[0]["val/worst_group_acc"] == 1.0 > result.history[-1]["val/worst_group_acc"]
    assert result.best_epoch == -1 and changed(start, result.model) == set()
    # without the option epoch -1 is not a candidate
    result = fit(create_model("small_cnn", 2), tiny_data(), val, create_objective("erm"),
                 TrainConfig(epochs=1, min_steps=0, batch_size=8), torch.device("cpu"))
    assert result.best_epoch == 0 and result.history[0]["epoch"] == 0
