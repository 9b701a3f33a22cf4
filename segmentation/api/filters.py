import django_filters
from django import forms
from django_filters import fields

from ..models import Job


class _RejectBlank:
    """A present-but-empty value is an error, not "no filter": the schema says what is valid."""

    def clean(self, value):
        if value == "":
            raise forms.ValidationError("This value cannot be empty; leave the parameter out.")
        return super().clean(value)


class _DateTimeField(_RejectBlank, fields.IsoDateTimeField):
    pass


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


class JobFilter(django_filters.FilterSet):
    id = UUIDInFilter(
        field_name="id",
        lookup_expr="in",
        help_text="Only these jobs: ids separated by commas (the history page polls its own).",
    )
    label = django_filters.CharFilter(
        method="filter_label", help_text="Jobs that found it (scoring at least their threshold)."
    )
    status = StrictChoiceFilter(choices=Job.Status.choices, empty_label=None)
    model = django_filters.CharFilter(field_name="model")
    created_after = StrictIsoDateTimeFilter(field_name="created_at", lookup_expr="gte")
    created_before = StrictIsoDateTimeFilter(field_name="created_at", lookup_expr="lte")
    collection = StrictUUIDFilter(field_name="collection_id", help_text="Jobs of this collection.")

    class Meta:
        model = Job
        fields = ["id", "label", "status", "model", "created_after", "created_before", "collection"]

    def filter_label(self, queryset, name, value):
        return queryset.with_label(value)
