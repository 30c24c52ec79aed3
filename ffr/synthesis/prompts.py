"""Prompt sets: per group (class, bias value), prompt templates whose ``{slots}`` are filled from
lists of values — e.g. ``"a photo of {big_dog} {indoor}"``.

A prompt set is a YAML file::

    name: spuco_animals
    negative_prompt: "blurry, text"          # optional, for every group
    slots:                                   # optional, shared by every group
      indoor: ["indoors", "in the kitchen"]
    groups:
      big_dog:                               # class
        indoor:                              # bias value
          templates: ["a photo of {breed} {indoor}"]
          slots: {breed: ["Beagle", "Boxer"]}    # optional, this group only
          negative_prompt: "..."                 # optional, this group only

A group may also be given as a bare list of templates. Which template and which slot values an image
gets is a pure function of its seed, so prompts are as reproducible as the images. Sets shipped with
``ffr`` (``ffr/synthesis/prompt_sets/*.yaml``) are loaded by name.
"""

from __future__ import annotations

import hashlib
import os
import string
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ffr.data.manifest import DatasetCard, ManifestError, group_key

PROMPT_SETS_DIR = Path(__file__).parent / "prompt_sets"
_TOP_KEYS = {"name", "description", "negative_prompt", "slots", "groups"}
_GROUP_KEYS = {"templates", "slots", "negative_prompt"}


class PromptSetError(ManifestError):
    """A prompt file is invalid; ``problems`` lists every problem, each naming the group and slot."""


def shipped_prompt_sets() -> list[str]:
    """Names of the prompt sets shipped with ffr."""
    return sorted(p.stem for p in PROMPT_SETS_DIR.glob("*.yaml"))


@dataclass
class GroupPrompts:
    """The templates, slot values and negative prompt of one group."""

    templates: list[str]
    slots: dict[str, list[str]] = field(default_factory=dict)
    negative_prompt: str | None = None


def _pick(seed: int, tag: str, n: int) -> int:
    # A hash, not an RNG object: stable across Python/NumPy versions and independent per slot.
    return int.from_bytes(hashlib.sha256(f"{int(seed)}|{tag}".encode()).digest()[:8], "little") % n


def template_slots(template: str) -> list[str]:
    """The slot names a template uses, in order; a ValueError for malformed braces or for
    positional/format-spec fields, which prompt templates do not support."""
    names = []
    for _, name, spec, conv in string.Formatter().parse(template):
        if name is None:
            continue
        if not name.isidentifier() or spec or conv:
            raise ValueError(f"field {{{name}{'!' + conv if conv else ''}{':' + spec if spec else ''}}} "
                             "is not a plain {slot} name")
        names.append(name)
    return names


@dataclass
class PromptSet:
    """Per-group prompt templates and slot values, loaded from a YAML file (``source``)."""

    name: str
    groups: dict[tuple[str, str], GroupPrompts]
    source: str = "<prompt set>"
    description: str = ""

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, name_or_path: str | os.PathLike) -> "PromptSet":
        """Load a prompt file, or a shipped set by name (``spuco_animals``, ``celebahq``, …).
        Every problem of the file is reported at once in a :class:`PromptSetError`. A path may be
        an ``s3://`` URI."""
        from ffr.paths import local_path

        path = local_path(name_or_path)
        if not path.is_file():
            shipped = PROMPT_SETS_DIR / f"{name_or_path}.yaml"
            if shipped.is_file():
                path = shipped
            else:
                raise FileNotFoundError(f"prompt file not found: {name_or_path} (shipped sets: "
                                        f"{', '.join(shipped_prompt_sets())})")
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise PromptSetError(str(path), [f"not valid YAML: {e}"]) from None
        return cls.from_dict(data, source=str(path))

    @classmethod
    def from_dict(cls, data, source: str = "<prompt set>") -> "PromptSet":
        """A prompt set from parsed YAML; :class:`PromptSetError` lists every problem."""
        if not isinstance(data, dict):
            raise PromptSetError(source, ["expected a mapping with a 'groups' key at the top level"])
        problems = [f"unknown top-level key {k!r} (known: {sorted(_TOP_KEYS)})" for k in data if k not in _TOP_KEYS]
        shared = _slot_lists(data.get("slots") or {}, "top-level slots", problems)
        top_negative = data.get("negative_prompt")
        groups: dict[tuple[str, str], GroupPrompts] = {}
        raw = data.get("groups")
        if not isinstance(raw, dict) or not raw:
            problems.append("missing or empty 'groups' (a mapping: class → bias value → templates)")
            raw = {}
        for label, by_bias in raw.items():
            if not isinstance(by_bias, dict) or not by_bias:
                problems.append(f"groups.{label}: expected a mapping of bias value → templates")
                continue
            for bias, spec in by_bias.items():
                g = _group(str(label), str(bias), spec, shared, top_negative, problems)
                if g is not None:
                    groups[(str(label), str(bias))] = g
        used_shared = {s for g in groups.values() for t in g.templates for s in _safe_slots(t)}
        for slot in shared:
            if slot not in used_shared:
                problems.append(f"top-level slot {slot!r} is used by no template (a typo?)")
        if problems:
            raise PromptSetError(source, problems)
        return cls(name=str(data.get("name") or Path(source).stem), groups=groups, source=source,
                   description=str(data.get("description") or ""))

    # ------------------------------------------------------------------ use
    def validate(self, card: DatasetCard) -> None:
        """Raise :class:`PromptSetError` unless every group of ``card`` has prompts. Groups the
        card lacks are allowed (a set may serve several cards, e.g. SpuCo birds and dogs)."""
        missing = [f"no prompts for group {group_key(l, b)} (class {l!r}, bias {b!r}) of card {card.name!r}; "
                   f"the file has groups {sorted(group_key(*g) for g in self.groups)}"
                   for l, b in card.groups if (l, b) not in self.groups]
        if missing:
            raise PromptSetError(self.source, missing)

    def prompt(self, label: str, bias: str, seed: int) -> str:
        """The prompt of the image with ``seed`` in group (label, bias): a template and slot values
        chosen by hashing the seed."""
        g = self._group(label, bias)
        template = g.templates[_pick(seed, "template", len(g.templates))]
        return template.format(**{s: g.slots[s][_pick(seed, s, len(g.slots[s]))]
                                  for s in template_slots(template)})

    def negative_prompt(self, label: str, bias: str) -> str | None:
        """The negative prompt of group (label, bias), if any."""
        return self._group(label, bias).negative_prompt

    def _group(self, label: str, bias: str) -> GroupPrompts:
        try:
            return self.groups[(label, bias)]
        except KeyError:
            raise KeyError(f"{self.source}: no prompts for group {group_key(label, bias)}") from None


def _safe_slots(template: str) -> list[str]:
    try:
        return template_slots(template)
    except ValueError:
        return []


def _slot_lists(raw, where: str, problems: list[str]) -> dict[str, list[str]]:
    if not isinstance(raw, dict):
        problems.append(f"{where}: expected a mapping of slot name → list of values")
        return {}
    out = {}
    for name, values in raw.items():
        values = [values] if isinstance(values, (str, int, float)) else values
        if not isinstance(values, list) or not values:
            problems.append(f"{where}: slot {name!r} has no values")
            continue
        bad = [v for v in values if not isinstance(v, (str, int, float)) or not str(v).strip()]
        if bad:
            problems.append(f"{where}: slot {name!r} has empty or non-text values {bad}")
            continue
        out[str(name)] = [str(v) for v in values]
    return out


def _group(label: str, bias: str, spec, shared: dict, top_negative, problems: list[str]) -> GroupPrompts | None:
    where = f"group {group_key(label, bias)}"
    if isinstance(spec, (str, list)):
        spec = {"templates": spec}
    if not isinstance(spec, dict):
        problems.append(f"{where}: expected templates (a list) or a mapping with 'templates'")
        return None
    problems.extend(f"{where}: unknown key {k!r} (known: {sorted(_GROUP_KEYS)})" for k in spec if k not in _GROUP_KEYS)
    templates = spec.get("templates")
    templates = [templates] if isinstance(templates, str) else templates
    if not isinstance(templates, list) or not templates:
        problems.append(f"{where}: no templates")
        return None
    own = _slot_lists(spec.get("slots") or {}, f"{where} slots", problems)
    slots = {**shared, **own}
    used = set()
    for i, t in enumerate(templates, 1):
        if not isinstance(t, str) or not t.strip():
            problems.append(f"{where}, template {i}: empty or not text")
            continue
        try:
            names = template_slots(t)
        except ValueError as e:
            problems.append(f"{where}, template {i} {t!r}: {e}")
            continue
        used.update(names)
        for s in names:
            if s not in slots:
                problems.append(f"{where}, template {i} {t!r}: slot {s!r} is not filled (define it under "
                                f"groups.{label}.{bias}.slots or the top-level slots)")
    problems.extend(f"{where}: slot {s!r} is used by no template of the group (a typo?)" for s in own if s not in used)
    negative = spec.get("negative_prompt", top_negative)
    return GroupPrompts([str(t) for t in templates], slots, None if negative is None else str(negative))
