"""Harmful-sample pruning: drop generated images that models of the *real* data say are harmful.

The idea is Diffusion Driven Balancing's (Yazdani et al., ICCV 2025), which prunes generated
samples by the predictions (and attributions) of a model trained on the real data. ffr has no
object masks to attribute over, so it asks two scorers, both trained on the real training split
with group-balanced sampling (the ``resample`` objective: the least shortcut-prone model the real
data gives) and selected on the real validation rows:

- the **class scorer** (image → class): an image whose requested class gets a lower probability
  than ``min_class_prob`` *does not show its class*. A model of the real data reads generated
  images through the domain gap (on the digits benchmark the real-data scorer calls every
  synthetic brick digit "high", whatever its digit), so an absolute floor would drop whole
  groups. The floor is therefore set per group from a calibration sample of the generator's own
  images (``class_quantile``, default 0.1: the 10% of a group's images the scorer finds least
  like their class are pruned) — DDB's rule is relative too (below the class's mean probability);
- the **bias scorer** (image → bias value, e.g. the background): an image whose requested bias
  value is not its top prediction (or is below ``min_bias_prob``) shows another group's bias —
  a "small dog indoors" rendered outdoors is a majority image under a minority label, and
  *teaches the very shortcut* the synthetic set is there to break.

A rejected image is re-rendered with its next attempt's seed (:mod:`ffr.synthesis.generation`),
so every group still gets its full count: the synthetic budget stays equal across strategies,
and the run's ``rejections.csv`` counts what was pruned per group.

Where the scorers come from (the ``harmful`` filter's options):

- ``scorers=FILE``: the ``harmful.json`` ``ffr synthesize scorers`` writes (both scorers and the
  calibrated floors; a path or an ``s3://`` URI: what a pipeline's ``synthesis_filters`` takes);
- ``model=CKPT[,bias_model=CKPT]``: checkpoints trained before (any ffr checkpoint of the card's
  classes serves as the class scorer);
- ``data=DIR``: a prepared dataset (real ``train`` and ``val`` rows); the scorers are trained on
  it and kept in ffr's cache (``$FFR_CACHE/scorers``), so a second run reuses them;
- nothing: ``ffr compare`` / ``ffr sweep`` train them on the grid's real data (the first bias
  rate's split) and ``ffr synthesize --real DIR`` on ``DIR``.

:func:`resolve` turns a spec into the concrete one (scorers trained, the class floors calibrated
on ``CALIBRATION_PER_GROUP`` images per group rendered with seeds no pool image uses); the
concrete spec is what every image's record stores, so a resumed run cannot mix two prunings.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import numpy as np

from ffr.synthesis.filters import FILTERS, option_problem, spec_options

NAME = "harmful"
SCORER_OBJECTIVE = "resample"   # group-balanced: the class scorer must not lean on the shortcut itself
CLASS_QUANTILE = 0.1            # the share of each group's images the class test prunes (calibrated)
CALIBRATION_PER_GROUP = 64      # images per group the class floors are calibrated on
CALIBRATION_SEED_OFFSET = 1_000_003  # calibration images' base seed = the pool's + this: never a pool image


def bias_view(manifest):
    """``manifest`` with class and bias swapped (the bias scorer's task: image → bias value)."""
    from ffr.data.manifest import DatasetCard, Manifest

    card = manifest.card
    swapped = DatasetCard(name=f"{card.name}-bias", classes=list(card.bias_values), bias_values=list(card.classes),
                          bias_name="class", description=f"{card.name}: its bias attribute as the label",
                          root=card.root)
    frame = manifest.frame.copy()
    frame["label"], frame["bias"] = manifest.frame["bias"].to_numpy(), manifest.frame["label"].to_numpy()
    return Manifest(frame, swapped, manifest.root)


def train_scorers(real, cfg=None, cache_dir: str | os.PathLike | None = None, seed: int = 0,
                  echo=None) -> dict[str, str]:
    """Train the class and bias scorers on ``real``'s real ``train`` rows, each checkpoint selected
    by worst-group accuracy on its real ``val`` rows, with ``cfg``'s model and ``train`` settings
    (an :class:`~ffr.config.ExperimentConfig`; default: ffr's defaults) and the ``resample``
    objective. Stages live in the stage cache ``cache_dir`` (default ``$FFR_CACHE/scorers``), so
    the same data and settings train once.

    Returns:
        The filter options ``{"model": class scorer, "bias_model": bias scorer}`` (no
        ``bias_model`` when the card has a single bias value: there is no shortcut to teach).
    """
    from ffr.balance import stage_plan
    from ffr.config import ExperimentConfig
    from ffr.paths import cache_home
    from ffr.train.request import StageRequest
    from ffr.train.stage import StageSpec, run_stage

    cfg = cfg or ExperimentConfig()
    train = real.select(split="train", source="real")
    val = real.select(split="val", source="real")
    if len(train) == 0 or len(val) == 0:
        raise ValueError(f"harmful-sample scorers need real train and val rows; the data has {len(train)} real "
                         f"train and {len(val)} real val rows (prepare it with `ffr prepare` first)")
    request = StageRequest.for_stage(cfg, stage_plan("train", "none"), seed, "none")
    request = replace(request, objective=SCORER_OBJECTIVE,
                      objective_options=dict(cfg.objective_options.get(SCORER_OBJECTIVE) or {}))
    cache = Path(cache_dir) if cache_dir is not None else cache_home() / "scorers"
    out = {}
    views = [("model", train, val)]
    if len(real.card.bias_values) > 1:
        views.append(("bias_model", bias_view(train), bias_view(val)))
    for option, t, v in views:
        request = replace(request, stage=f"scorer-{'class' if option == 'model' else 'bias'}")
        result = run_stage(StageSpec(request, t, v), cache_dir=cache, echo=echo)
        out[option] = str(result.checkpoint)
    return out


def resolve(filters, real=None, cfg=None, cache_dir: str | os.PathLike | None = None, echo=None,
            backend=None, seed: int = 0) -> list:
    """``filters`` with every ``harmful`` spec made concrete; other specs pass unchanged.

    Args:
        filters: Filter specs (strings or mappings).
        real: A :class:`~ffr.data.manifest.Manifest` with real train and val rows: a ``harmful``
            spec with neither ``model`` nor ``data`` gets scorers trained on it.
        cfg: The model and training settings of the scorers (:func:`train_scorers`).
        cache_dir: Their stage cache.
        echo: Receives the scorers' training lines.
        backend: The synthesis backend the pool is rendered with: the class floors are
            calibrated on its images (``class_quantile``, default :data:`CLASS_QUANTILE`, unless
            the spec gives ``min_class_prob``). Without it only an explicit ``min_class_prob``
            applies (a pipeline's synthesis step: give the spec :func:`resolve` made).
        seed: The pool's base seed (calibration images use other seeds).
    """
    out = []
    for spec in filters or ():
        opts = spec_options(spec)
        if opts is None or opts.get("name") != NAME:
            out.append(spec)
            continue
        problem = option_problem(spec)
        if problem:
            raise ValueError(problem)
        quantile = opts.pop("class_quantile", None)
        if "model" not in opts and "scorers" not in opts:
            data = opts.pop("data", None)
            if data is not None:
                from ffr.data.manifest import Manifest

                source = Manifest.load(data)
            elif real is not None:
                source = real
            else:
                raise ValueError("synthesis filter 'harmful' needs its scorers: model=CKPT[,bias_model=CKPT] "
                                 "(`ffr synthesize scorers` trains them) or data=DIR (a prepared dataset to train "
                                 "them on); `ffr synthesize --real DIR`, compare and sweep train them themselves")
            opts.update(train_scorers(source, cfg, cache_dir, echo=echo))
        if quantile is None and "min_class_prob" not in opts and "scorers" not in opts and backend is not None:
            quantile = CLASS_QUANTILE
        if quantile is not None:
            if backend is None:
                raise ValueError("synthesis filter 'harmful': class_quantile calibrates on the generator's images; "
                                 "give min_class_prob instead where no backend is at hand")
            scorer = HarmfulFilter(**{k: v for k, v in opts.items() if k != "name"})
            opts["min_class_prob"] = calibrate(scorer, backend, quantile, seed)
        out.append(opts)
    return out


def calibrate(scorer: "HarmfulFilter", backend, quantile: float, seed: int = 0,
              per_group: int = CALIBRATION_PER_GROUP) -> dict[str, float]:
    """Per group (``label_bias``), the ``quantile`` of the class scorer's probability of the
    group's class over ``per_group`` images ``backend`` renders for it (seeds no pool image of
    base seed ``seed`` uses): the floor below which the class test prunes."""
    from ffr.data.manifest import group_key
    from ffr.synthesis.generation import plan_requests

    if not isinstance(quantile, (int, float)) or isinstance(quantile, bool) or not 0 <= quantile < 1:
        raise ValueError(f"harmful filter: class_quantile must be in [0, 1), got {quantile!r}")
    floors = {}
    for label, bias in backend.card.groups:
        requests = plan_requests(backend, {(label, bias): per_group}, seed + CALIBRATION_SEED_OFFSET)
        names, probs = scorer.probabilities("class", backend.generate(requests))
        p = probs[:, names.index(label)] if label in names else np.zeros(len(requests))
        floors[group_key(label, bias)] = round(float(np.quantile(p, quantile)), 6) if quantile > 0 else 0.0
    return floors


SCORERS_FILE = "harmful.json"


def write_scorers(out_dir: str | os.PathLike, options: dict) -> Path:
    """Write a concrete ``harmful`` spec (scorers and class floors) to ``out_dir/harmful.json``,
    the checkpoints named relative to that folder, so the folder can move (to S3: a pipeline's
    ``harmful:scorers=s3://.../harmful.json``)."""
    from ffr.paths import write_json

    out_dir = Path(out_dir).resolve()
    saved = {k: v for k, v in options.items() if k != "name"}
    for key in ("model", "bias_model"):
        if key in saved and Path(saved[key]).resolve().is_relative_to(out_dir):
            saved[key] = Path(saved[key]).resolve().relative_to(out_dir).as_posix()
    path = out_dir / SCORERS_FILE
    write_json(path, saved)
    return path


def read_scorers(uri: str) -> dict:
    """The spec :func:`write_scorers` wrote at ``uri`` (a path or ``s3://`` URI), its checkpoints
    resolved against the file's folder."""
    import json
    import posixpath

    from ffr.paths import local_path

    try:
        saved = json.loads(local_path(uri).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"harmful filter: scorers={uri}: not a readable {SCORERS_FILE} ({e})") from None
    if not isinstance(saved, dict) or "model" not in saved:
        raise ValueError(f"harmful filter: scorers={uri}: no 'model' (write it with `ffr synthesize scorers`)")
    base = posixpath.dirname(str(uri)) if str(uri).startswith("s3://") else str(Path(uri).parent)
    for key in ("model", "bias_model"):
        if saved.get(key) and not (str(saved[key]).startswith("s3://") or Path(saved[key]).is_absolute()):
            saved[key] = posixpath.join(base, saved[key]) if base.startswith("s3://") else str(Path(base) / saved[key])
    return saved


def pipeline_problem(spec) -> str | None:
    """Why ``spec`` cannot run in a pipeline's synthesis steps (None when it can or is not a
    ``harmful`` spec): each shard would train and calibrate its own scorers, so the spec must
    name them: ``scorers=`` (``ffr synthesize scorers``'s file) or ``model=``."""
    opts = spec_options(spec)
    if not opts or opts.get("name") != NAME:
        return None
    if "model" not in opts and "scorers" not in opts:
        return ("'harmful' needs its scorers in a pipeline: train them with `ffr synthesize scorers --real DIR "
                "--out DIR` and give harmful:scorers=<DIR/harmful.json, a path or s3:// URI every pod reads>")
    extra = sorted({"data", "class_quantile"} & set(opts))
    if extra:
        return (f"'harmful' in a pipeline takes the scorers' file as made, not {', '.join(extra)} (each synthesis "
                "shard would compute its own): `ffr synthesize scorers --class-quantile Q` calibrates once")
    return None


@FILTERS.register(NAME)
class HarmfulFilter:
    """Reject generated images that scorers trained on the real data say do not show their class
    or show another group's bias (see the module docstring).

    Args:
        model: The class scorer: an ffr checkpoint (path or ``s3://`` URI) whose classes are the
            card's.
        bias_model: The bias scorer: an ffr checkpoint whose classes are the card's bias values
            (``ffr synthesize scorers`` writes one); None: the class test alone.
        min_class_prob: Reject an image whose requested class has a lower probability than this:
            one number, or one per group (``{"label_bias": p}``, what ``class_quantile``
            calibrates); 0: no class test.
        min_bias_prob: Reject an image whose requested bias value is its top prediction at a
            lower probability than this (one whose bias value is not the top one is always
            rejected).
        data: Train the scorers on this prepared dataset instead (:func:`resolve`).
        scorers: A ``harmful.json`` from ``ffr synthesize scorers`` (path or ``s3://`` URI): its
            scorers and calibrated class floors (options given beside it win).
        device: Where the scorers run.
        batch_size: Images scored at once.
    """

    resolved_options = ("class_quantile",)   # :func:`resolve` turns it into per-group floors

    def __init__(self, model: str | None = None, bias_model: str | None = None, min_class_prob: float | dict | None = None,
                 min_bias_prob: float = 0.0, data: str | None = None, device: str = "cpu", batch_size: int = 256,
                 scorers: str | None = None):
        from ffr.paths import file_digest, local_path
        from ffr.rules import require
        from ffr.train.loop import load_checkpoint
        from ffr.train.runtime import resolve_device

        if scorers is not None:
            saved = read_scorers(scorers)
            model, bias_model = model or saved["model"], bias_model or saved.get("bias_model")
            min_class_prob = saved.get("min_class_prob") if min_class_prob is None else min_class_prob
        if model is None:
            resolved = resolve([{"name": NAME, "data": data, "min_class_prob": min_class_prob or 0.0,
                                 "min_bias_prob": min_bias_prob}])[0]
            model, bias_model = resolved["model"], resolved.get("bias_model")
        min_class_prob = 0.0 if min_class_prob is None else min_class_prob
        floors = min_class_prob if isinstance(min_class_prob, dict) else {"*": min_class_prob}
        for name, value in [*((f"min_class_prob[{g}]", v) for g, v in floors.items()), ("min_bias_prob", min_bias_prob)]:
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value <= 1:
                raise ValueError(f"harmful filter: {name} must be a probability in [0, 1], got {value!r}")
        require("count", batch_size, "harmful filter: batch_size")
        self.device = resolve_device(device)
        self.class_floors = {str(g): float(v) for g, v in floors.items()}
        self.min_bias_prob, self.batch_size = float(min_bias_prob), batch_size
        self.scorers = []
        names = []
        for what, path in (("class", model), ("bias", bias_model)):
            if path is None:
                continue
            net, meta = load_checkpoint(path, self.device)
            self.scorers.append((what, net.eval(), meta))
            names.append(f"{'model' if what == 'class' else 'bias_model'}={Path(str(path)).name}@"
                         f"{file_digest(local_path(path))[:12]}")
        floors = ";".join(f"{g}:{v:g}" for g, v in sorted(self.class_floors.items()))
        self.spec = f"harmful({','.join(names)},min_class_prob={floors},min_bias_prob={self.min_bias_prob:g})"

    def class_floor(self, label: str, bias: str) -> float:
        """The class test's floor for group (``label``, ``bias``)."""
        from ffr.data.manifest import group_key

        return self.class_floors.get(group_key(label, bias), self.class_floors.get("*", 0.0))

    def probabilities(self, what: str, images) -> tuple[list[str], np.ndarray]:
        """The ``what`` (``class`` or ``bias``) scorer's names and softmax probabilities, (N, K)."""
        import torch

        from ffr.data.loading import BatchTransform, to_rgb
        from PIL import Image

        _, net, meta = next(s for s in self.scorers if s[0] == what)
        size = int(meta["image_size"])
        transform = BatchTransform(meta.get("normalize", "imagenet"))
        out = []
        for start in range(0, len(images), self.batch_size):
            arr = np.stack([np.asarray(to_rgb(im).resize((size, size), Image.BILINEAR) if im.size != (size, size)
                                       else to_rgb(im), dtype=np.uint8) for im in images[start:start + self.batch_size]])
            x = torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous().to(self.device)
            with torch.inference_mode():
                out.append(torch.softmax(net(transform(x)).float(), dim=1).cpu().numpy())
        return list(meta["classes"]), (np.concatenate(out) if out else np.zeros((0, len(meta["classes"]))))

    def __call__(self, images, requests) -> list[str | None]:
        reasons: list[str | None] = [None] * len(images)
        for what, _, _ in self.scorers:
            names, probs = self.probabilities(what, images)
            for i, req in enumerate(requests):
                if reasons[i] is not None:
                    continue
                wanted = req.label if what == "class" else req.bias
                if wanted not in names:
                    raise ValueError(f"harmful filter: the {what} scorer knows {names}, not {wanted!r} "
                                     "(it was trained on another dataset)")
                p = float(probs[i][names.index(wanted)])
                if what == "class":
                    floor = self.class_floor(req.label, req.bias)
                    if p < floor:
                        reasons[i] = f"harmful: does not show its class ({wanted!r} at {p:.3f} < {floor:g})"
                    continue
                top = int(probs[i].argmax())
                if names[top] != wanted:
                    reasons[i] = (f"harmful: would teach the shortcut (shows {names[top]!r} at {probs[i][top]:.2f}, "
                                  f"not {wanted!r})")
                elif p < self.min_bias_prob:
                    reasons[i] = f"harmful: bias {wanted!r} at {p:.3f} < min_bias_prob {self.min_bias_prob:g}"
        return reasons


__all__ = ["HarmfulFilter", "bias_view", "calibrate", "pipeline_problem", "read_scorers", "resolve", "train_scorers",
           "write_scorers"]
