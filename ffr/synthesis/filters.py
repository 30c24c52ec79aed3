"""Image filters: reject generated images before they join the synthetic set.

A filter is called on a batch of images with their requests and returns, per image, ``None``
(accepted) or the reason it was rejected. Its ``spec`` names it and its settings; the spec is stored
with every image so a resumed run refuses to mix images accepted by different filters.

- ``grayscale`` — the paper's filter: Stable Diffusion now and then returns black-and-white photos
  (and black images when its safety checker blanks one); they are discarded.
- ``clip`` — image–prompt similarity (CLIP score = 100 × cosine of the embeddings) from a CLIP model
  in a local directory; images scoring below ``min_score`` are discarded.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ffr.plugins import Registry

FILTERS: Registry = Registry("image filter")


def spec_options(spec) -> dict | None:
    """A filter spec as ``{"name": ..., **options}``: from ``"name"``, ``"name:key=value,..."``
    (values parsed as YAML scalars) or a mapping; None for a filter object."""
    if isinstance(spec, dict):
        return dict(spec)
    if not isinstance(spec, str):
        return None
    from ffr.config import parse_set

    name, _, rest = spec.partition(":")
    return {"name": name.strip(), **dict(parse_set(item) for item in filter(None, (s.strip() for s in rest.split(","))))}


def option_problem(spec) -> str | None:
    """What is wrong with the options of a registered filter's ``spec`` (an option its
    constructor does not take), or None. A filter's ``resolved_options`` are options that are
    made concrete before it is built (``harmful``'s ``class_quantile``)."""
    import inspect

    opts = spec_options(spec)
    if not opts or opts.get("name") not in FILTERS:
        return None
    cls = FILTERS.get(opts.pop("name"))
    for key in getattr(cls, "resolved_options", ()):
        opts.pop(key, None)
    try:
        inspect.signature(cls).bind(**opts)
    except TypeError as e:
        return f"filter {spec!r}: {e}"
    return None


def make_filter(spec):
    """A filter from a spec: a filter object (returned as is), ``"name"``,
    ``"name:key=value,key=value"`` (values parsed as YAML scalars) or ``{"name": ..., **options}``."""
    if callable(spec) and hasattr(spec, "spec"):
        return spec
    opts = spec_options(spec)
    name = opts.pop("name", None)
    if name is None:
        raise ValueError(f"filter spec {spec!r} has no 'name'")
    return FILTERS.get(name)(**opts)


@FILTERS.register("grayscale")
class GrayscaleFilter:
    """Reject images whose colour channels are (nearly) identical: the mean over pixels of
    max(R, G, B) − min(R, G, B), on the 0–255 scale, is at most ``tolerance``.

    (The reference code compares whole-image channel sums against a resolution-dependent
    constant; the per-pixel spread is independent of the image size and also catches images
    whose channels have equal sums but differ pixel by pixel.)"""

    def __init__(self, tolerance: float = 3.0):
        self.tolerance = float(tolerance)
        self.spec = f"grayscale(tolerance={self.tolerance:g})"

    @staticmethod
    def spread(image) -> float:
        """Mean per-pixel channel spread of ``image`` on the 0–255 scale (0 for a gray image)."""
        arr = np.asarray(image.convert("RGB"), dtype=np.int16)
        return float((arr.max(axis=-1) - arr.min(axis=-1)).mean())

    def __call__(self, images, requests) -> list[str | None]:
        out = []
        for img in images:
            s = self.spread(img)
            out.append(f"grayscale: mean channel spread {s:.2f} <= {self.tolerance:g}" if s <= self.tolerance else None)
        return out


@FILTERS.register("clip")
class ClipScoreFilter:
    """Reject images whose CLIP score against their own prompt is below ``min_score``.

    ``model`` must be a local directory holding a ``transformers`` CLIPModel and CLIPProcessor
    (``save_pretrained`` output); nothing is downloaded. Scores are 100 × cosine similarity."""

    def __init__(self, model: str, min_score: float = 20.0, device: str = "auto", batch_size: int = 32):
        from ffr.synthesis.fingerprint import fingerprint_dir

        path = Path(model)
        if not path.is_dir():
            raise FileNotFoundError(f"CLIP filter: model directory not found: {path} (the filter loads "
                                    "CLIP weights from a local directory only)")
        import torch
        from transformers import CLIPModel, CLIPProcessor

        from ffr.train.runtime import resolve_device

        self.device = resolve_device(device)
        self.model = CLIPModel.from_pretrained(path, local_files_only=True).eval().to(self.device)
        self.processor = CLIPProcessor.from_pretrained(path, local_files_only=True)
        self.min_score = float(min_score)
        self.batch_size = int(batch_size)
        self._torch = torch
        self.spec = f"clip(model={path.name}@{fingerprint_dir(path)},min_score={self.min_score:g})"

    def scores(self, images, prompts: list[str]) -> np.ndarray:
        """CLIP score of each image against its prompt."""
        torch = self._torch
        out = []
        for s in range(0, len(images), self.batch_size):
            ims, txt = images[s:s + self.batch_size], prompts[s:s + self.batch_size]
            inputs = self.processor(text=txt, images=[im.convert("RGB") for im in ims], return_tensors="pt",
                                    padding=True, truncation=True)
            with torch.inference_mode():
                res = self.model(**{k: v.to(self.device) for k, v in inputs.items()})
                cos = torch.nn.functional.cosine_similarity(res.image_embeds.float(), res.text_embeds.float(), dim=-1)
            out.append((100 * cos).cpu().numpy())
        return np.concatenate(out) if out else np.zeros(0)

    def __call__(self, images, requests) -> list[str | None]:
        prompts = [r.prompt or "" for r in requests]
        return [None if s >= self.min_score else f"clip: score {s:.2f} < {self.min_score:g}"
                for s in self.scores(images, prompts)]
