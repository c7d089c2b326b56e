"""The listing's newest-per-lineage rule, on bare rows (versions_app.selectors.template_list)."""

import pytest

from templates_app.choices import TemplateState
from tests.templates_app.factories import TemplateFactory
from tests.versions_app.factories import VersionFactory
from versions_app import selectors

pytestmark = pytest.mark.django_db


def names(queryset) -> list[str]:
    return sorted(queryset.values_list("name", flat=True))


def test_one_row_per_lineage_its_newest_active_version(admin_user):
    base = TemplateFactory(name="v1", is_public=True)
    VersionFactory(base=base, version_number=2, name="v2", is_public=True)
    VersionFactory(
        base=base, version_number=3, name="v3", is_public=True, state=TemplateState.INACTIVE
    )
    lonely = TemplateFactory(name="other", is_public=True)

    assert names(selectors.template_list(user=admin_user)) == ["other", "v2"]
    assert names(selectors.template_list(user=admin_user, all_versions=True)) == [
        "other",
        "v1",
        "v2",
    ]
    assert lonely.version_number == 1
