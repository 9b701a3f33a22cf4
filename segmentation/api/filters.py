import django_filters

from ..models import Job


class JobFilter(django_filters.FilterSet):
    label = django_filters.CharFilter(
        method="filter_label", help_text="Jobs that found this class."
    )
    status = django_filters.ChoiceFilter(choices=Job.Status.choices)
    model = django_filters.CharFilter(field_name="model")
    created_after = django_filters.IsoDateTimeFilter(field_name="created_at", lookup_expr="gte")
    created_before = django_filters.IsoDateTimeFilter(field_name="created_at", lookup_expr="lte")

    class Meta:
        model = Job
        fields = ["label", "status", "model", "created_after", "created_before"]

    def filter_label(self, queryset, name, value):
        return queryset.with_label(value)
