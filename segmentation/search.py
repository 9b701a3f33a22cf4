"""Searching a history by content, and lists whose cost does not grow with the history.

A condition is ``LABEL[:N]``: at least N (default 1) instances of LABEL scoring at least the
job's current threshold (and ``min_score``, when given). Several conditions must all hold.

What makes it fast is ``JobClass``: one row per (job, class it shows), with copies of the job's
owner, visibility and date and the job's whole class set as bits, under one index. A search
reads the rows of one class, the *driving* one, newest first, and tests the other conditions on
the same index entry (their class bit); only conditions asking for two or more instances of a
non-driving class, or for ``min_score`` beyond the best instance, look further. Counting the
matches and reading any page of them never touches the jobs table; the jobs themselves are read
only for the page shown (``JobPage``). Measured in bench/history.py.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from django.db.models import Count, Exists, F, OuterRef, QuerySet, Subquery, Value
from django.db.models.functions import Coalesce, Greatest

from .classes import bit_mask
from .inference.coco import COCO_LABELS
from .models import Detection, Job, JobClass, UserClass

MAX_CONDITIONS = 10
MAX_COUNT = 1000  # more instances than any model reports in one photo
MAX_VALUE_LENGTH = 500
_LABELS = frozenset(COCO_LABELS)
_COUNT = re.compile(r"[0-9]{1,6}")  # ASCII digits only: int() would take "٣" or "³"
_SCORE = re.compile(r"(?:0|1)?(?:\.[0-9]{1,8})?")
_SYNTAX = (
    "Write conditions as CLASS or CLASS:N, e.g. 'person:2 dog' (spaces in class names may be "
    "written as _, e.g. traffic_light); GET /api/labels/ lists the classes."
)


class SearchError(ValueError):
    """A malformed condition or min_score; the message names it (a 400)."""


@dataclass(frozen=True)
class Condition:
    label: str
    count: int = 1

    def __str__(self) -> str:
        name = self.label.replace(" ", "_")
        return name if self.count == 1 else f"{name}:{self.count}"


def parse_conditions(values: Iterable[str]) -> list[Condition]:
    """Conditions from ``has`` values: each holds one or more, separated by spaces or commas.

    ``["person:2 dog", "traffic light"]`` gives person:2, dog and traffic light: a class name
    with a space may be written with ``_`` or as is. The same class twice keeps the larger N.
    """
    values = list(values)
    if len(values) > MAX_CONDITIONS:
        raise SearchError(f"At most {MAX_CONDITIONS} has conditions.")
    tokens: list[str] = []
    for value in values:
        if len(value) > MAX_VALUE_LENGTH:
            raise SearchError(f"A has value is longer than {MAX_VALUE_LENGTH} characters.")
        tokens.extend(t for t in re.split(r"[\s,]+", value) if t)
    wanted: dict[str, int] = {}
    i = 0
    while i < len(tokens):
        for width in (3, 2, 1):  # COCO names have up to two words; the longest match wins
            group = tokens[i : i + width]
            if len(group) < width or any(":" in t for t in group[:-1]):
                continue
            found = _condition(" ".join(group))
            if found is not None:
                wanted[found.label] = max(wanted.get(found.label, 0), found.count)
                i += width
                break
        else:
            raise SearchError(_bad_term(tokens[i]))
        if len(wanted) > MAX_CONDITIONS:
            raise SearchError(f"At most {MAX_CONDITIONS} has conditions.")
    return [Condition(label, count) for label, count in wanted.items()]


def _condition(term: str) -> Condition | None:
    name, colon, count = term.rpartition(":") if ":" in term else (term, "", "1")
    label = name.replace("_", " ").strip().lower()
    if label not in _LABELS:
        return None
    if colon and not _COUNT.fullmatch(count):
        raise SearchError(f"'{_quote(term)}': the count after ':' must be a whole number.")
    n = int(count)
    if not 1 <= n <= MAX_COUNT:
        raise SearchError(f"'{_quote(term)}': the count must be from 1 to {MAX_COUNT}.")
    return Condition(label, n)


def _bad_term(token: str) -> str:
    return f"'{_quote(token)}' is not a class. {_SYNTAX}"


def _quote(text: str) -> str:
    text = "".join(ch if ch.isprintable() else "?" for ch in text)
    return text if len(text) <= 40 else text[:39] + "…"


def parse_min_score(value: str) -> float:
    """``min_score``: a plain decimal number from 0 to 1 (no exponent, no other digits)."""
    if not value or not _SCORE.fullmatch(value) or value == ".":
        raise SearchError("min_score must be a number from 0 to 1, like 0.8.")
    score = float(value)
    if not 0 <= score <= 1:
        raise SearchError("min_score must be a number from 0 to 1, like 0.8.")
    return score


def format_conditions(conditions: Iterable[Condition]) -> str:
    """The search field's text for ``conditions`` (what ``parse_conditions`` reads back)."""
    return " ".join(str(c) for c in conditions)


def matching_rows(
    *, owner, conditions: Sequence[Condition], min_score: float | None = None
) -> QuerySet[JobClass]:
    """One ``JobClass`` row per job of ``owner`` (not hidden) meeting every condition.

    The driving class is the condition asking for the most instances, then the rarest class
    in the owner's summary: its count is tested in the index, the others' presence by bits.
    """
    if not conditions:
        raise ValueError("no condition")
    jobs_with = dict(
        UserClass.objects.filter(owner=owner, label__in=[c.label for c in conditions]).values_list(
            "label", "jobs"
        )
    )
    driver = max(conditions, key=lambda c: (c.count, -jobs_with.get(c.label, 0)))
    rows = JobClass.objects.filter(
        owner=owner, visible=True, label=driver.label, count__gte=driver.count
    )
    if min_score is not None:
        rows = rows.filter(max_score__gte=min_score)
        if driver.count > 1:
            rows = _at_least_scoring(rows, driver, min_score, "_n_driver")
    for i, other in enumerate(c for c in conditions if c is not driver):
        bit = bit_mask(other.label)
        if bit is not None:  # the cheap test first, on the index entry
            column, mask = bit
            rows = rows.alias(**{f"_bit{i}": F(column).bitand(mask)}).filter(**{f"_bit{i}": mask})
        if bit is None or other.count > 1 or min_score is not None:
            shown = JobClass.objects.filter(
                job_id=OuterRef("job_id"), label=other.label, count__gte=other.count
            )
            if min_score is not None:
                shown = shown.filter(max_score__gte=min_score)
            rows = rows.filter(Exists(shown))
            if min_score is not None and other.count > 1:
                rows = _at_least_scoring(rows, other, min_score, f"_n{i}")
    return rows


def _at_least_scoring(rows, condition: Condition, min_score: float, name: str):
    # N instances at or above both the job's threshold and min_score: only the detections say.
    scoring = (
        Detection.objects.filter(job_id=OuterRef("job_id"), label=condition.label)
        .filter(score__gte=Greatest(Value(min_score), F("job__score_threshold")))
        .order_by()
        .values("job_id")
        .annotate(n=Count("pk"))
        .values("n")[:1]
    )
    return rows.alias(**{name: Coalesce(Subquery(scoring), 0)}).filter(
        **{f"{name}__gte": condition.count}
    )


class JobPage(Sequence):
    """A list of jobs for a paginator: counted and sliced through ``ids`` (an index-only
    query of job ids, newest first), with only the jobs of the page read from ``jobs``.

    Django's ``Paginator`` (the history page) and DRF's page pagination (the API) use it as
    they would a queryset.
    """

    def __init__(self, jobs: QuerySet[Job], ids: QuerySet) -> None:
        self.jobs = jobs
        self.ids = ids

    def count(self) -> int:
        return self.ids.count()

    def __len__(self) -> int:
        return self.count()

    def __getitem__(self, key):
        if not isinstance(key, slice):
            return self[key : key + 1][0]
        ids = list(self.ids[key])
        # Unordered: ordered, the planner may walk the owner's index instead of 20 lookups.
        found = {job.pk: job for job in self.jobs.order_by().filter(pk__in=ids)}
        return [found[pk] for pk in ids if pk in found]
