"""The promotion gate, pure: whether a challenger model replaces the champion.

Both models evaluated on the same test manifest (same digest), the challenger's worst-group
accuracy at least ``floor`` and at least ``margin`` above the champion's, and no group's accuracy
more than ``tolerance`` below the champion's. With no champion yet, the first model above the floor
becomes champion. A champion evaluated on other test data is a refusal, never a guess: re-evaluate
both on one test manifest (``ffr evaluate``) and register again.

The MLflow model registry that applies the decision (aliases, version tags) is
:mod:`ffr.integrations.model_registry`.
"""

from __future__ import annotations

from dataclasses import dataclass, field


# The gate's defaults: ``ffr promote``'s flags, the pipelines' run form and the register component
# read these (the component's signature holds them as literals; tests/test_defaults.py checks them).
GATE_MARGIN = 0.005
GATE_TOLERANCE = 0.02
GATE_FLOOR = 0.5


@dataclass
class GatePolicy:
    """When a challenger replaces the champion (accuracies as fractions, 0-1)."""

    margin: float = GATE_MARGIN        # the challenger's WGA must exceed the champion's by at least this
    tolerance: float = GATE_TOLERANCE  # no group may lose more accuracy than this
    floor: float = GATE_FLOOR          # absolute WGA every champion must reach (the first one included)

    def check(self, names: dict[str, str] | None = None) -> "GatePolicy":
        """This policy, or a :class:`~ffr.rules.ConfigError` naming each value that is not a
        fraction (``names``: the entry point's names of ``margin``, ``tolerance``, ``floor``)."""
        from ffr.rules import check, refuse

        names = names or {}
        refuse([p for f in ("margin", "tolerance", "floor")
                for p in check("fraction", getattr(self, f), names.get(f, f))], "promotion gate")
        return self


@dataclass
class Evaluation:
    """A model's test numbers as the gate sees them."""

    worst_group_acc: float
    groups: dict[str, float | None]
    test_digest: str

    @classmethod
    def from_metrics(cls, metrics: dict) -> "Evaluation":
        """From :func:`ffr.steps.evaluate_step`'s output (``data_digest`` names the test rows)."""
        if metrics.get("worst_group_acc") is None:
            raise ValueError("the evaluation has no worst-group accuracy (no test images?)")
        if not metrics.get("data_digest"):
            raise ValueError("the evaluation does not name its test data ('data_digest' is missing)")
        return cls(float(metrics["worst_group_acc"]), {g: v["acc"] for g, v in metrics["groups"].items()},
                   str(metrics["data_digest"]))

    def tags(self, prefix: str) -> dict[str, str]:
        out = {f"{prefix}.worst_group_acc": repr(self.worst_group_acc), f"{prefix}.test_digest": self.test_digest}
        out.update({f"{prefix}.group.{g}.acc": "" if a is None else repr(a) for g, a in self.groups.items()})
        return out

    @classmethod
    def from_tags(cls, tags: dict[str, str], prefix: str) -> "Evaluation":
        head = f"{prefix}.group."
        groups = {k[len(head):-len(".acc")]: (float(v) if v else None)
                  for k, v in tags.items() if k.startswith(head) and k.endswith(".acc")}
        try:
            return cls(float(tags[f"{prefix}.worst_group_acc"]), groups, tags[f"{prefix}.test_digest"])
        except KeyError as e:
            raise ValueError(f"model version tags lack {e.args[0]!r}: not registered by ffr") from None


@dataclass
class Decision:
    """The gate's verdict and why."""

    promote: bool
    reasons: list[str] = field(default_factory=list)
    refused: bool = False     # the comparison itself was impossible (different test data)

    @property
    def summary(self) -> str:
        verdict = "refused" if self.refused else ("promote" if self.promote else "keep champion")
        return f"{verdict}: " + "; ".join(self.reasons)


def decide(challenger: Evaluation, champion: Evaluation | None, policy: GatePolicy) -> Decision:
    """The promotion gate: see the module docstring."""
    c = challenger.worst_group_acc
    if champion is None:
        ok = c >= policy.floor
        return Decision(ok, [f"no champion yet; worst-group accuracy {c:.4f} "
                             f"{'reaches' if ok else 'is below'} the floor {policy.floor:.4f}"])
    if challenger.test_digest != champion.test_digest:
        return Decision(False, [f"the champion was evaluated on other test data (digest {champion.test_digest[:12]}, "
                                f"challenger {challenger.test_digest[:12]}): evaluate both on one test manifest"],
                        refused=True)
    reasons, ok = [], True
    gain = c - champion.worst_group_acc
    if c < policy.floor:
        ok = False
        reasons.append(f"worst-group accuracy {c:.4f} is below the floor {policy.floor:.4f}")
    if gain < policy.margin or gain <= 0:
        ok = False
        reasons.append(f"worst-group accuracy {c:.4f} vs champion {champion.worst_group_acc:.4f} "
                       f"(gain {gain:+.4f} < margin {policy.margin:.4f})")
    else:
        reasons.append(f"worst-group accuracy {c:.4f} vs champion {champion.worst_group_acc:.4f} (gain {gain:+.4f})")
    for g, old in champion.groups.items():
        if old is None:
            continue
        new = challenger.groups.get(g)
        if new is None or old - new > policy.tolerance:
            ok = False
            shown = "absent" if new is None else f"{new:.4f}"
            reasons.append(f"group {g} falls from {old:.4f} to {shown} (tolerance {policy.tolerance:.4f})")
    return Decision(ok, reasons)
