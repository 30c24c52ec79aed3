"""Kubeflow's cron expressions (robfig/cron with seconds), checked before a recurring run is sent:
every field named when it is wrong, and a schedule that can never run refused."""

from __future__ import annotations

import re

from ffr.integrations.kubeflow.pipelines.run import PipelineError

_FIELDS = [  # (name, low, high, names) of the 6 fields of a Kubeflow cron expression
    ("second", 0, 59, None), ("minute", 0, 59, None), ("hour", 0, 23, None),
    ("day-of-month", 1, 31, None),
    ("month", 1, 12, ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"]),
    ("day-of-week", 0, 6, ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"]),
]
_DESCRIPTORS = {"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"}
_CRON_HELP = ("Kubeflow takes 6 fields: second minute hour day-of-month month day-of-week, "
              "e.g. '0 0 3 * * *' (every day at 03:00:00) or '0 30 2 * * MON' (Mondays at 02:30:00)")


def validate_cron(expr: str) -> str:
    """Check a Kubeflow (robfig/cron, with seconds) cron expression.

    Args:
        expr: 6 fields (second minute hour day-of-month month day-of-week), a descriptor such as
            ``@daily``, or ``@every <duration>``.

    Returns:
        The expression normalised (single spaces). A :class:`PipelineError` names the bad field otherwise.
    """
    text = " ".join(str(expr).split())
    if text in _DESCRIPTORS or re.fullmatch(r"@every ((\d+(\.\d+)?(ns|us|µs|ms|s|m|h))+)", text):
        return text
    fields = text.split(" ") if text else []
    if len(fields) != 6:
        raise PipelineError(f"bad cron expression {expr!r}: {len(fields)} field(s); {_CRON_HELP}")

    def value(tok: str, name, low, high, names) -> int:
        if names and tok.upper() in names:
            return names.index(tok.upper()) + low
        if not tok.isdigit():
            raise PipelineError(f"bad cron expression {expr!r}: {name} field has {tok!r}, not a number"
                                + (f" or one of {', '.join(names)}" if names else "") + f"; {_CRON_HELP}")
        v = int(tok)
        if not low <= v <= high:
            raise PipelineError(f"bad cron expression {expr!r}: {name} {v} is outside {low}-{high}; {_CRON_HELP}")
        return v

    allowed: dict[str, set[int] | None] = {}  # each field's values (None: any)
    for field_text, (name, low, high, names) in zip(fields, _FIELDS):
        allowed[name] = set()
        for part in field_text.split(","):
            rng, _, step = part.partition("/")
            if step and (not step.isdigit() or int(step) == 0):
                raise PipelineError(f"bad cron expression {expr!r}: {name} step {step!r} is not a positive integer")
            if rng in ("*", "?") and not step:
                if rng == "?" and name not in ("day-of-month", "day-of-week"):
                    value(rng, name, low, high, names)  # "?" only in the day fields
                allowed[name] = None
                continue
            if rng in ("*", "?"):
                a, b = low, high
            else:
                lo, dash, hi = rng.partition("-")
                a = value(lo, name, low, high, names)
                b = value(hi, name, low, high, names) if dash else (high if step else a)
                if b < a:
                    raise PipelineError(f"bad cron expression {expr!r}: {name} range {rng!r} runs backwards")
            if allowed[name] is not None:
                allowed[name] |= set(range(a, b + 1, int(step or 1)))
    days, months = allowed["day-of-month"], allowed["month"]
    if days is not None and allowed["day-of-week"] is None:  # the day of the month alone decides
        longest = max(_DAYS_IN_MONTH[m - 1] for m in (months or range(1, 13)))
        if min(days) > longest:
            when = "any month" if months is None else "month(s) " + ", ".join(str(m) for m in sorted(months))
            raise PipelineError(f"bad cron expression {expr!r}: day-of-month {min(days)} never occurs in {when} "
                                f"(at most {longest} days): the schedule would never run")
    return text


_DAYS_IN_MONTH = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)  # February: in leap years
