"""Probes that measure properties of a dataset rather than train the task model.

:func:`domain_gap` asks how easily a classifier tells real from synthetic images. FFR rests on
this gap: when it is high, mixing real and synthetic images in one training set hands the model a
new shortcut (bias × source), which is why FFR keeps them in separate training stages.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ffr.data.loading import BatchTransform, load_images
from ffr.data.manifest import Manifest, group_key
from ffr.train.backbones import create_model
from ffr.train.loop import resolve_device


def _subsample(manifest: Manifest, n: int, rng: np.random.Generator) -> Manifest:
    idx = np.sort(rng.choice(len(manifest), size=n, replace=False))
    return Manifest(manifest.frame.iloc[idx], manifest.card, manifest.root)


def domain_gap(real: Manifest, synthetic: Manifest, image_size: int = 32, seed: int = 0,
               epochs: int = 3, batch_size: int = 64, lr: float = 2e-3, test_fraction: float = 0.3,
               max_per_source: int | None = None, device: str | torch.device | None = None) -> dict:
    """Held-out accuracy of a small CNN trained to tell ``real`` from ``synthetic`` images.

    Both sources are subsampled to the same size (the smaller one, capped by ``max_per_source``),
    so chance is 0.5; ``test_fraction`` of each source is held out. Deterministic for a given
    ``seed`` on a given device, and leaves the global RNG state untouched.

    Returns ``{"accuracy", "n_train", "n_test", "per_source": {"real", "synthetic"},
    "per_group": {group_key: accuracy}}``, the last over held-out images of both sources.
    """
    n = min(len(real), len(synthetic), max_per_source or len(real))
    n_test = int(round(test_fraction * n))
    if n_test < 1 or n - n_test < 1:
        raise ValueError(f"domain_gap needs images of both sources to train and test on; got {len(real)} "
                         f"real and {len(synthetic)} synthetic with test_fraction={test_fraction}")
    device = resolve_device(device)
    rng = np.random.default_rng(seed)
    parts = [_subsample(m, n, rng) for m in (real, synthetic)]
    images = torch.cat([load_images(m, image_size) for m in parts])
    is_syn = torch.cat([torch.zeros(n, dtype=torch.long), torch.ones(n, dtype=torch.long)])
    groups = np.array([group_key(l, b) for m in parts for l, b in zip(m.frame["label"], m.frame["bias"])])
    # Hold out the same share of each source, so the test set is balanced too.
    test = np.concatenate([rng.permutation(n)[:n_test] + k * n for k in (0, 1)])
    train = np.setdiff1d(np.arange(2 * n), test)

    tf = BatchTransform("half")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = create_model("small_cnn", 2).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    x_train, y_train = images[train], is_syn[train]
    model.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(train), generator=gen).split(batch_size):
            loss = F.cross_entropy(model(tf(x_train[batch].to(device))), y_train[batch].to(device))
            opt.zero_grad()
            loss.backward()
            opt.step()

    model.eval()
    with torch.inference_mode():
        pred = torch.cat([model(tf(images[test][i:i + 512].to(device))).argmax(1).cpu()
                          for i in range(0, len(test), 512)])
    correct = (pred == is_syn[test]).numpy()
    test_groups, test_syn = groups[test], is_syn[test].numpy()
    return {
        "accuracy": float(correct.mean()),
        "n_train": int(len(train)),
        "n_test": int(len(test)),
        "per_source": {name: float(correct[test_syn == k].mean()) for k, name in enumerate(("real", "synthetic"))},
        "per_group": {g: float(correct[test_groups == g].mean())
                      for g in real.card.group_keys if (test_groups == g).any()},
    }
