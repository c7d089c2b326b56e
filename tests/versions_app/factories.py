"""factory_boy factories of lineages: bare version rows, for tests that do not exercise
versions_app.services.template_version_create (which numbers them under the base's lock)."""

import factory

from templates_app.models import Template
from tests.templates_app.factories import TemplateFactory


class VersionFactory(TemplateFactory):
    """Version `version_number` of `base` (give both), in the base's account."""

    class Meta:
        model = Template

    base = factory.SubFactory(TemplateFactory)
    account = factory.LazyAttribute(lambda version: version.base.account)
    version_number = 2
