"""Objectives: GroupDRO on a hand-computed batch, resample frequencies, DFR's C selection and
averaging, and the folded DFR head."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import ffr.train.objectives as objectives
from ffr.train.backbones import Classifier
from ffr.train.objectives import (DFR_CS, OBJECTIVES, ObjectiveContext, balanced_subsample, create_objective,
                                  dfr_fit, fold_head, training_group_names, worst_group_accuracy)


def ctx(groups, n_groups):
    return ObjectiveContext(torch.as_tensor(groups), n_groups, torch.device("cpu"))


@pytest.mark.parametrize("name", OBJECTIVES.names())
def test_every_objective_trains_a_batch(name):
    obj = create_objective(name)
    obj.setup(ctx([0, 1, 2, 3], 4))
    logits = torch.randn(4, 2, requires_grad=True)
    loss = obj.loss(logits, torch.tensor([0, 1, 0, 1]), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    assert loss.ndim == 0 and torch.isfinite(loss) and logits.grad is not None
    assert len(obj.epoch_indices(4, torch.Generator().manual_seed(0))) == 4


def test_unknown_option_is_an_error():
    with pytest.raises(ValueError, match="groupdro.*bad option"):
        create_objective("groupdro", step=0.1)
    with pytest.raises(ValueError, match="erm"):
        create_objective("erm", eta=0.1)


def test_groupdro_hand_computed_batch():
    obj = create_objective("groupdro", eta=1.0)
    obj.setup(ctx([0, 0, 1, 2], 3))
    # Cross-entropies chosen to be exact: ln 2, ln 4/3 (group 0), ln 4 (group 1); group 2 absent.
    logits = torch.tensor([[0.0, 0.0], [0.0, math.log(3.0)], [math.log(3.0), 0.0]], dtype=torch.float64)
    labels = torch.tensor([0, 1, 1])
    groups = torch.tensor([0, 0, 1])
    loss = obj.loss(logits, labels, groups)
    l0, l1 = (math.log(2) + math.log(4 / 3)) / 2, math.log(4)
    # q starts uniform; exponentiated-gradient step; the absent group's factor is exp(0) = 1.
    unnorm = [math.exp(l0) / 3, math.exp(l1) / 3, 1 / 3]
    q = [u / sum(unnorm) for u in unnorm]
    assert obj.q.tolist() == pytest.approx(q, rel=1e-9)
    assert float(loss) == pytest.approx(q[0] * l0 + q[1] * l1, rel=1e-9)
    # A batch of group 2 only: only its weight grows, the others keep their ratio.
    before = obj.q.clone()
    loss2 = obj.loss(torch.tensor([[0.0, 0.0]], dtype=torch.float64), torch.tensor([0]), torch.tensor([2]))
    assert obj.q[2] > before[2] and float(obj.q[0] / obj.q[1]) == pytest.approx(float(before[0] / before[1]))
    assert float(loss2) == pytest.approx(float(obj.q[2]) * math.log(2), rel=1e-9)
    state = obj.state()
    assert set(state) == {"groupdro/q/0", "groupdro/q/1", "groupdro/q/2"}
    assert sum(state.values()) == pytest.approx(1.0)


def test_groupdro_gradient_weights_groups():
    obj = create_objective("groupdro", eta=0.0)  # eta 0: weights stay uniform
    obj.setup(ctx([0, 1], 2))
    logits = torch.zeros(3, 2, requires_grad=True)
    obj.loss(logits, torch.tensor([0, 0, 1]), torch.tensor([0, 0, 1])).backward()
    # Group 0 has two rows: each carries half of group 0's weight; group 1's single row all of it.
    g = logits.grad[:, 0].abs()
    assert float(g[2]) == pytest.approx(2 * float(g[0]))


def test_resample_frequencies():
    sizes = [900, 90, 10]
    groups = np.repeat(np.arange(3), sizes)
    obj = create_objective("resample")
    obj.setup(ctx(groups, 3))
    gen = torch.Generator().manual_seed(0)
    draws = torch.cat([obj.epoch_indices(len(groups), gen) for _ in range(30)]).numpy()
    assert len(draws) == 30 * len(groups)
    freq = np.bincount(groups[draws], minlength=3) / len(draws)
    # 30,000 draws: the standard error of each frequency is ~0.003.
    assert freq == pytest.approx([1 / 3] * 3, abs=0.015)
    # within a group, rows are drawn uniformly: the 10 rows of group 2 each ~1/30 of all draws
    small = np.bincount(draws[groups[draws] == 2] - 990, minlength=10) / len(draws)
    assert small == pytest.approx([1 / 30] * 10, abs=0.006)
    # with replacement: some rows repeat within one epoch
    one = obj.epoch_indices(len(groups), gen)
    assert len(torch.unique(one)) < len(groups)


def test_training_group_names():
    from ffr.data.manifest import DatasetCard

    card = DatasetCard("t", ["a", "b"], ["x", "y"])
    assert training_group_names(card, 4) == ["a_x", "a_y", "b_x", "b_y"]
    assert training_group_names(card, 8)[4] == "a_x_synthetic"


def test_balanced_subsample_and_wga():
    groups = np.array([0] * 5 + [1] * 2 + [3] * 3)
    ix = balanced_subsample(groups, np.random.default_rng(0))
    assert np.bincount(groups[ix]).tolist() == [2, 2, 0, 2]
    pred = np.array([0, 0, 0, 1, 1, 1, 0, 1, 1, 1])
    labels = np.zeros(10, dtype=int)
    assert worst_group_accuracy(pred, labels, groups) == 0.0
    assert worst_group_accuracy(labels, labels, groups) == 1.0


def spurious_problem(sizes, seed, d=6):
    """Core feature (dim 0) carries the label, dim 1 the bias value; groups (y, b)."""
    rng = np.random.default_rng(seed)
    rows = []
    for (y, b), n in sizes.items():
        x = rng.normal(0, 0.3, (n, d))
        x[:, 0] += 2.0 * y - 1.0
        x[:, 1] += 4.0 * (2.0 * b - 1.0)
        x[:, 2:] += 3.0  # features of a ReLU net are positive; L2 normalisation keeps this honest
        rows.append((x, np.full(n, y), np.full(n, 2 * y + b)))
    x, y, g = (np.concatenate(a) for a in zip(*rows))
    return x, y, g


def test_dfr_on_a_separable_problem():
    x, y, g = spurious_problem({(0, 0): 60, (0, 1): 12, (1, 0): 12, (1, 1): 60}, seed=0)
    head = dfr_fit(x, y, g, n_classes=2, n_refits=5, seed=0)
    assert set(head.scores) == set(DFR_CS)
    assert head.scores[head.C] == max(head.scores.values())
    # the strongest L1 penalty removes the core feature too: it cannot be the choice
    assert head.scores[0.003] < head.scores[head.C]
    xt, yt, gt = spurious_problem({(0, 0): 50, (0, 1): 50, (1, 0): 50, (1, 1): 50}, seed=1)
    pred = head.logits(xt).argmax(0)
    assert worst_group_accuracy(pred, yt, gt) >= 0.95


class FakeLogistic:
    """Stands in for scikit-learn: its weight is the mean of the rows it was fitted on, its
    predictions are fixed per C, so the selection and the averaging can be checked exactly."""

    fits: list = []
    plan: dict = {}

    def __init__(self, C):
        self.C = C

    def fit(self, x, y):
        self.coef_ = x.mean(0, keepdims=True)
        self.intercept_ = np.array([float(len(x))])
        self.classes_ = np.unique(y)
        FakeLogistic.fits.append((self.C, self.coef_.copy(), self.intercept_.copy()))
        return self

    def predict(self, x):
        return FakeLogistic.plan[self.C](x)


def test_dfr_selects_c_by_held_out_wga_and_averages_refits(monkeypatch):
    x, y, g = spurious_problem({(0, 0): 30, (0, 1): 8, (1, 0): 8, (1, 1): 30}, seed=2)
    # C=0.1 predicts from the core feature (right on every held-out row); the other Cs predict
    # class 0 everywhere (worst-group accuracy 0).
    FakeLogistic.plan = {1.0: lambda z: np.zeros(len(z), dtype=int),
                         0.1: lambda z: (z[:, 0] > 0).astype(int),
                         0.01: lambda z: np.zeros(len(z), dtype=int)}
    FakeLogistic.fits = []
    monkeypatch.setattr(objectives, "_l1_logistic", lambda C, n, seed: FakeLogistic(C))
    head = dfr_fit(x, y, g, 2, Cs=(1.0, 0.1, 0.01), n_refits=3, seed=7)
    assert head.C == 0.1 and head.scores == {1.0: 0.0, 0.1: 1.0, 0.01: 0.0}
    selection, refits = FakeLogistic.fits[:3], FakeLogistic.fits[3:]
    # C selection fits on a group-balanced half: 4 groups x 4 rows (half of the smallest group)
    assert [float(b[0]) for _, _, b in selection] == [16.0] * 3
    assert [c for c, _, _ in refits] == [0.1] * 3
    # binary: class 1's row is the mean of the refits' weights, class 0's row is zero
    assert head.weight[1] == pytest.approx(np.mean([w[0] for _, w, _ in refits], 0))
    assert np.all(head.weight[0] == 0)
    # the refits differ (different balanced subsamples), so averaging is not a no-op
    assert not np.allclose(refits[0][1], refits[1][1])
    # every refit saw a group-balanced subsample of all rows: 4 groups x 8 rows
    assert head.bias[1] == pytest.approx(32.0)


def test_fold_head_matches_dfr_logits():
    x, y, g = spurious_problem({(0, 0): 40, (0, 1): 10, (1, 0): 10, (1, 1): 40}, seed=3)
    head = dfr_fit(x, y, g, 2, n_refits=3, seed=0)
    model = Classifier(nn.Identity(), x.shape[1], 2)
    folded = fold_head(model, head)
    assert folded.feature_norm and not model.feature_norm
    with torch.no_grad():
        out = folded(torch.as_tensor(x, dtype=torch.float32)).numpy()
    assert out == pytest.approx(head.logits(x).T, abs=1e-4)


def test_dfr_model_survives_a_checkpoint(tmp_path):
    from ffr.train.backbones import create_model
    from ffr.train.loop import load_checkpoint, save_checkpoint

    torch.manual_seed(0)
    model = create_model("small_cnn", 2)
    x = torch.randn(6, 3, 8, 8)
    with torch.no_grad():
        feats = model.eval().embed(x).numpy()
    head = dfr_fit(np.concatenate([feats] * 4), np.array([0, 1] * 12), np.array([0, 1, 2, 3] * 6), 2,
                   Cs=(1.0,), n_refits=2)
    folded = fold_head(model, head).eval()
    path = save_checkpoint(tmp_path / "dfr.pt", folded, {"backbone": "small_cnn", "classes": ["a", "b"]})
    loaded, meta = load_checkpoint(path)
    assert meta["feature_norm"] and loaded.feature_norm
    with torch.no_grad():
        assert torch.allclose(loaded.eval()(x), folded(x), atol=1e-6)
        assert torch.allclose(folded(x), torch.as_tensor(head.logits(feats).T, dtype=torch.float32), atol=1e-4)
