"""Query filters of the template and event listings."""

import django_filters
from django.db.models import Exists, OuterRef, Q

from .choices import Hypervisor, TemplateFilter, TemplateFormat, TemplateKind, TemplateState
from .models import Event, Template


class TemplateFilterSet(django_filters.FilterSet):
    """`templatefilter`, `state` and `all_versions` are applied by the view's selector (they
    decide which rows exist for this user); the others narrow further."""

    templatefilter = django_filters.ChoiceFilter(
        choices=TemplateFilter.choices,
        method="ignore",
        help_text="CloudStack's templatefilter; default executable. See docs/api.md.",
    )
    state = django_filters.MultipleChoiceFilter(
        choices=TemplateState.choices,
        method="ignore",
        help_text="Administrators only; others always see ACTIVE templates.",
    )
    all_versions = django_filters.BooleanFilter(
        method="ignore",
        help_text="true: every version of each lineage; default: its newest ACTIVE one only.",
    )
    zone = django_filters.UUIDFilter(method="filter_zone", help_text="Zone id.")
    kind = django_filters.ChoiceFilter(choices=TemplateKind.choices)
    format = django_filters.ChoiceFilter(choices=TemplateFormat.choices)
    hypervisor = django_filters.ChoiceFilter(choices=Hypervisor.choices)
    name = django_filters.CharFilter(lookup_expr="icontains")
    is_public = django_filters.BooleanFilter()
    is_featured = django_filters.BooleanFilter()

    class Meta:
        model = Template
        fields = ["kind", "format", "hypervisor", "is_public", "is_featured"]

    def ignore(self, queryset, name, value):
        return queryset

    def filter_zone(self, queryset, name, value):
        in_zone = Template.zones.through.objects.filter(
            template_id=OuterRef("pk"), zone__uuid=value
        )
        return queryset.filter(Q(cross_zones=True) | Exists(in_zone))


class EventFilterSet(django_filters.FilterSet):
    object_id = django_filters.UUIDFilter(field_name="object_uuid")
    object_type = django_filters.CharFilter(field_name="content_type__model")

    class Meta:
        model = Event
        fields = ["object_id", "object_type", "to_state"]
