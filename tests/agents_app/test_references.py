"""The catalogue's reference registry, as compute fills it: VMs, pinned pool copies and VM pools
keep a template's bytes; the sweep, the delete response and references/ all ask the registry."""

import pytest

from agents_app.models import VmPool
from templates_app import services
from templates_app.choices import TemplateState
from templates_app.fsm import UndeclaredSource, bulk_transition
from templates_app.models import Template, TemplateStoreRef
from templates_app.references import reference_providers
from tests.agents_app.factories import VmPoolFactory
from versions_app.services import template_version_create

pytestmark = pytest.mark.django_db


def vm_pool_on(template, zone, account, *, latest=False, name="pool-a") -> VmPool:
    """A VM pool row with no VM left in it: only the pool itself holds the template."""
    return VmPoolFactory(
        name=name,
        template=template,
        zone=zone,
        account=account,
        follow_channel="latest" if latest else "",
    )


def test_compute_registers_its_three_kinds_of_reference():
    kinds = {p.kind for p in reference_providers()}
    assert {"vm", "pinned_pool_copy", "vm_pool"} <= kinds
    assert kinds - {"vm", "pinned_pool_copy", "vm_pool"} == {"channel"}, "versions_app's own"


def test_a_vm_pool_keeps_its_template_from_the_sweep(register, zone, account, user, api):
    template = register(name="pooled")
    vm_pool_on(template, zone, account)

    deleted = api.delete(f"/api/v1/templates/{template.uuid}/")
    assert deleted.status_code == 200
    assert deleted.data["references"] == 1, "the delete response counts the pool"
    result = services.gc_sweep()

    template.refresh_from_db()
    assert template.state == TemplateState.INACTIVE
    assert result.held[0]["references"]["vm_pool"] == 1
    rows = api.get(f"/api/v1/templates/{template.uuid}/references/").data["references"]
    assert [(row["kind"], row["name"]) for row in rows] == [("vm_pool", "pool-a")]


def test_without_its_pool_the_template_goes(register, zone, account, user):
    template = register(name="pooled")
    pool = vm_pool_on(template, zone, account)
    services.template_deactivate(template_id=template.pk, actor=user)
    pool.delete()

    services.gc_sweep()

    template.refresh_from_db()
    assert template.state == TemplateState.REMOVED


def test_a_pool_on_latest_keeps_the_newest_version_of_its_lineage(register, zone, account, user):
    base = register(name="ubuntu")
    v2 = template_version_create(base_template_id=base.pk, actor=user)
    v3 = template_version_create(base_template_id=base.pk, actor=user)
    vm_pool_on(base, zone, account, latest=True)
    services.template_deactivate(template_id=base.pk, actor=user)  # the whole lineage

    services.gc_sweep()

    states = dict(Template.objects.values_list("version_number", "state"))
    assert states == {
        1: TemplateState.INACTIVE,  # the pool names it
        2: TemplateState.REMOVED,  # neither named nor the newest: nothing needs it
        3: TemplateState.INACTIVE,  # what the pool's VMs would be rebuilt onto
    }
    assert v2.pk != v3.pk


def test_bulk_transition_refuses_a_source_the_transition_does_not_declare(register):
    template = register()
    with pytest.raises(UndeclaredSource, match="does not move state from ACTIVE"):
        bulk_transition(
            Template.objects.filter(pk=template.pk),
            Template.remove,
            sources=[TemplateState.ACTIVE],
        )
    template.refresh_from_db()
    assert template.state == TemplateState.ACTIVE


def test_bulk_transition_moves_only_rows_in_a_declared_source(register, user):
    active, inactive = register(name="a"), register(name="b")
    services.template_deactivate(template_id=inactive.pk, actor=user)

    moved = bulk_transition(
        Template.objects.filter(pk__in=[active.pk, inactive.pk]), Template.remove
    )

    assert moved == 1
    assert dict(Template.objects.values_list("name", "state")) == {
        "a": TemplateState.ACTIVE,
        "b": TemplateState.REMOVED,
    }


def test_a_store_copy_moves_both_state_fields_in_one_step(register):
    ref = register().store_refs.get()
    ref.step("start_download")
    assert (ref.download_state, ref.state) == ("DOWNLOAD_IN_PROGRESS", "CREATING")
    ref.step("fail_download")
    assert (ref.download_state, ref.state) == ("DOWNLOAD_ERROR", "ALLOCATED")
    assert TemplateStoreRef.objects.get(pk=ref.pk).download_state == "NOT_DOWNLOADED"


def test_a_kind_registered_later_counts_in_the_listing(register, api):
    """The listing's sum of counts is built once; registering a kind rebuilds it."""
    from django.db.models import OuterRef

    from templates_app import references
    from templates_app.models import TemplateDetail

    register(name="detailed", details={"a": "1", "b": "2"})
    listed = api.get("/api/v1/templates/").data["results"]
    assert [row["references"] for row in listed if row["name"] == "detailed"] == [0]
    saved = dict(references._providers)
    try:
        references.register_reference(
            references.ReferenceProvider(
                kind="detail",
                label="detail",
                live=lambda: TemplateDetail.objects.filter(template_id=OuterRef("pk")),
                rows_for=lambda t: [],
            )
        )
        listed = api.get("/api/v1/templates/").data["results"]
        assert [row["references"] for row in listed if row["name"] == "detailed"] == [2]
    finally:
        references._providers.clear()
        references._providers.update(saved)
        references._reference_total = None
    listed = api.get("/api/v1/templates/").data["results"]
    assert [row["references"] for row in listed if row["name"] == "detailed"] == [0]
