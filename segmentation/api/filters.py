"""The one set of job filters, for the API's job list, the history page and exports."""

from datetime import UTC

import django_filters
from django import forms
from django_filters import fields

from .. import search
from ..models import Job


class _RejectBlank:
    """A present-but-empty value is an error, not "no filter": the schema says what is valid."""

    def clean(self, value):
        if value == "":
            raise forms.ValidationError("This value cannot be empty; leave the parameter out.")
        return super().clean(value)


class _DateTimeField(_RejectBlank, fields.IsoDateTimeField):
    def to_python(self, value):
        result = super().to_python(value)
        if result is not None:
            # 9999-12-31T23:59:59-23:59 parses, but is past datetime.max in UTC, where the
            # database compares it: an OverflowError (a 500) at query time otherwise.
            try:
                result.astimezone(UTC)
            except OverflowError:
                raise forms.ValidationError(
                    "Out of range: give a date and time between years 1 and 9999 in UTC."
                ) from None
        return result


class _ChoiceField(_RejectBlank, fields.ChoiceField):
    pass


class _UUIDField(_RejectBlank, forms.UUIDField):
    pass


class StrictUUIDFilter(django_filters.UUIDFilter):
    field_class = _UUIDField


class StrictIsoDateTimeFilter(django_filters.IsoDateTimeFilter):
    field_class = _DateTimeField


class StrictChoiceFilter(django_filters.ChoiceFilter):
    field_class = _ChoiceField


class UUIDInFilter(django_filters.BaseInFilter, django_filters.UUIDFilter):
    pass


class ConditionsField(forms.Field):
    """``has``: every value of the repeated parameter, parsed into search conditions."""

    widget = forms.MultipleHiddenInput

    def to_python(self, value):
        if not value:
            return []
        try:
            return search.parse_conditions(value)
        except search.SearchError as exc:
            raise forms.ValidationError(str(exc)) from None


class MinScoreField(_RejectBlank, forms.Field):
    def to_python(self, value):
        if value in (None, ""):
            return value
        try:
            return search.parse_min_score(value)
        except search.SearchError as exc:
            raise forms.ValidationError(str(exc)) from None


class ConditionsFilter(django_filters.Filter):
    field_class = ConditionsField


class MinScoreFilter(django_filters.Filter):
    field_class = MinScoreField


#: Filters that ``search.matching_rows`` results can apply without reading the jobs table.
_ON_CLASS_ROWS = {
    "id": "job_id__in",
    "created_after": "created_at__gte",
    "created_before": "created_at__lte",
    "model": "job__model",
    "collection": "job__collection_id",
}


class JobFilter(django_filters.FilterSet):
    id = UUIDInFilter(
        field_name="id",
        lookup_expr="in",
        help_text="Only these jobs: ids separated by commas (the history page polls its own).",
    )
    label = django_filters.CharFilter(
        method="filter_by_content",
        help_text="Jobs that found it (scoring at least their threshold): has=LABEL.",
    )
    has = ConditionsFilter(
        method="filter_by_content",
        help_text="LABEL or LABEL:N: jobs with at least N (default 1) instances of LABEL scoring "
        "at least their threshold. Repeat it, or separate conditions by spaces, for all of them "
        "at once: has=person:2&has=dog. Hidden jobs never match.",
    )
    min_score = MinScoreFilter(
        method="filter_by_content",
        help_text="With has or label: count only instances scoring at least this (0 to 1).",
    )
    status = StrictChoiceFilter(choices=Job.Status.choices, empty_label=None)
    model = django_filters.CharFilter(field_name="model")
    created_after = StrictIsoDateTimeFilter(field_name="created_at", lookup_expr="gte")
    created_before = StrictIsoDateTimeFilter(field_name="created_at", lookup_expr="lte")
    collection = StrictUUIDFilter(field_name="collection_id", help_text="Jobs of this collection.")

    class Meta:
        model = Job
        fields = ["id", "label", "has", "min_score", "status", "model", "created_after",
                  "created_before", "collection"]  # fmt: skip

    def __init__(self, *args, owner=None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.owner = owner if owner is not None else getattr(self.request, "user", None)

    def filter_by_content(self, queryset, name, value):
        return queryset  # all three together, in filter_queryset

    def is_valid(self) -> bool:
        if not super().is_valid():
            return False
        if self.form.cleaned_data.get("min_score") not in (None, "") and not self.conditions:
            self.form.add_error("min_score", "min_score applies to has or label: give one.")
            return False
        return True

    @property
    def conditions(self) -> list[search.Condition]:
        data = self.form.cleaned_data
        conditions = list(data.get("has") or [])
        label = data.get("label")
        if label and label not in {c.label for c in conditions}:
            conditions.append(search.Condition(label))
        return conditions

    @property
    def min_score_value(self) -> float | None:
        value = self.form.cleaned_data.get("min_score")
        return None if value in (None, "") else value

    def filter_queryset(self, queryset):
        """The jobs meeting every filter: ``has``, ``label`` and ``min_score`` by content."""
        queryset = super().filter_queryset(queryset)
        self.without_content = queryset
        if not self.conditions:
            return queryset
        return queryset.filter(pk__in=self._content_rows().values("job_id"))

    def _content_rows(self):
        return search.matching_rows(
            owner=self.owner, conditions=self.conditions, min_score=self.min_score_value
        )

    def job_page(self) -> search.JobPage:
        """The filtered jobs, newest first, for a paginator: counted and sliced on an index
        (the class rows when searching by content, else the jobs' own), only the page's jobs
        read. Call after ``is_valid``.
        """
        jobs = self.qs
        base = self.without_content
        if not self.conditions:
            return search.JobPage(base, jobs.order_by("-created_at").values_list("pk", flat=True))
        data = self.form.cleaned_data
        active = {name for name, value in data.items() if value not in (None, "", [])}
        active -= {"has", "label", "min_score"}
        if active - {"status", *_ON_CLASS_ROWS}:
            # A filter class rows cannot apply (one added later): correct, not index-only.
            return search.JobPage(base, jobs.order_by("-created_at").values_list("pk", flat=True))
        rows = self._content_rows()
        if "status" in active and data["status"] != Job.Status.SUCCEEDED:
            rows = rows.none()  # only succeeded jobs show classes
        for name in active & set(_ON_CLASS_ROWS):
            rows = rows.filter(**{_ON_CLASS_ROWS[name]: data[name]})
        ids = rows.order_by("-created_at", "-job_id").values_list("job_id", flat=True)
        return search.JobPage(base, ids)
