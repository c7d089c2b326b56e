"""Template versions (seed 002): numbering, the REST shape, listings, deletion, admin, races."""

import pytest
from django.urls import reverse

from templates_app import services
from templates_app.choices import TemplateState
from templates_app.errors import InvalidInput, LimitExceeded, TransitionConflict
from templates_app.models import Account, Event, Template, TemplateStoreRef
from tests.templates_app.test_races import run_together
from versions_app import selectors as version_selectors
from versions_app import services as version_services

pytestmark = pytest.mark.django_db

LIST = "/api/v1/templates/"
CHECKSUM = "{SHA-256}" + "ab" * 32


def detail_url(template) -> str:
    return f"/api/v1/templates/{template.uuid}/"


@pytest.fixture
def base(register):
    return register(
        name="debian-12",
        checksum=CHECKSUM,
        os_type="Debian 12",
        details={"HTTP_HEADER": "X-Token:abc"},
    )


@pytest.fixture
def add_version(user):
    def _add_version(base, **fields):
        fields.setdefault("actor", user)
        return version_services.template_version_create(base_template_id=base.pk, **fields)

    return _add_version


def post_version(client, base, **fields):
    version = {"base_template": str(base.uuid), **fields.pop("version", {})}
    return client.post(LIST, {"version": version, **fields}, format="json")


# Numbering and registration ------------------------------------------------------------------


def test_a_base_is_version_one_and_each_version_gets_the_next_number(base, add_version, account):
    versions = [add_version(base, version_name=f"update {n}") for n in range(3)]

    base.refresh_from_db()
    assert (base.base_id, base.version_number) == (None, 1)
    assert [(v.base_id, v.version_number) for v in versions] == [(base.pk, n) for n in (2, 3, 4)]
    assert [v.version_name for v in versions] == ["update 0", "update 1", "update 2"]
    assert len({base.unique_name, *(v.unique_name for v in versions)}) == 4
    assert {v.account_id for v in versions} == {base.account_id}
    account.refresh_from_db()
    assert account.used_templates == 4, "a version is a template of its own for the limits"


def test_a_version_is_registered_like_any_template_and_starts_as_its_base(
    base, add_version, store, other_account
):
    base.shared_with.add(other_account)

    version = add_version(base, url="https://mirror.example/debian-12.1.qcow2")

    assert (version.name, version.format, version.os_type) == ("debian-12", "QCOW2", "Debian 12")
    assert version.url == "https://mirror.example/debian-12.1.qcow2"
    assert version.checksum == CHECKSUM, "what was not sent is the base's"
    assert list(version.zones.all()) == [store.zone]
    assert [(d.key, d.value) for d in version.details.all()] == [("HTTP_HEADER", "X-Token:abc")]
    assert list(version.shared_with.all()) == [other_account]
    ref = TemplateStoreRef.objects.get(template=version)
    assert (ref.store, ref.download_state) == (store, "NOT_DOWNLOADED")
    assert Event.objects.filter(object_id=version.pk, to_state="ACTIVE").exists()


def test_a_refused_version_leaves_nothing_behind(base, add_version, account):
    Account.objects.filter(pk=account.pk).update(max_templates=1)

    with pytest.raises(LimitExceeded):
        add_version(base)

    assert list(Template.objects.values_list("pk", flat=True)) == [base.pk]


def test_a_version_of_a_version_is_refused(base, add_version):
    second = add_version(base)

    with pytest.raises(InvalidInput, match="version of a version") as refused:
        add_version(second)
    assert refused.value.field == "version.base_template"


def test_an_inactive_base_gets_no_new_version(base, add_version, user):
    services.template_deactivate(template_id=base.pk, actor=user)

    with pytest.raises(TransitionConflict, match="only an ACTIVE template gets new versions"):
        add_version(base)


def test_a_version_keeps_the_kind_and_account_of_its_base(base, add_version, other_account):
    with pytest.raises(InvalidInput) as refused:
        add_version(base, kind="ISO", image_format="ISO")
    assert refused.value.field == "kind"
    with pytest.raises(InvalidInput) as refused:
        add_version(base, account=other_account)
    assert refused.value.field == "account"


# Races ------------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_concurrent_versions_get_2_to_13_without_gap_or_duplicate(register, user):
    base = register(name="raced")

    results = run_together(
        *[
            lambda n=n: version_services.template_version_create(
                base_template_id=base.pk, actor=user, version_name=f"v{n}"
            )
            for n in range(12)
        ]
    )

    assert all(isinstance(result, Template) for result in results), results
    numbers = sorted(Template.objects.filter(base=base).values_list("version_number", flat=True))
    assert numbers == list(range(2, 14))
    assert sorted(result.version_number for result in results) == numbers


@pytest.mark.django_db(transaction=True)
def test_deleting_the_base_while_versions_are_added_leaves_no_active_version(register, user):
    for i in range(10):
        base = register(name=f"lineage-{i}")
        version_services.template_version_create(base_template_id=base.pk, actor=user)

        run_together(
            lambda b=base: version_services.template_version_create(
                base_template_id=b.pk, actor=user
            ),
            lambda b=base: services.template_deactivate(template_id=b.pk, actor=user),
        )

        states = set(Template.objects.filter(base=base).values_list("state", flat=True))
        assert states == {TemplateState.INACTIVE}, f"an ACTIVE version under a deleted base: {i}"


# REST: creating ---------------------------------------------------------------------------


def test_post_with_a_version_section_creates_the_next_version(api, base):
    response = post_version(api, base, version={"version_name": "with updates"})

    assert response.status_code == 201, response.data
    assert response.data["version"] == {
        "base_template": str(base.uuid),
        "version_name": "with updates",
        "version_number": 2,
    }
    assert response.data["name"] == "debian-12"
    assert response.data["checksum"] == CHECKSUM
    assert len(response.data["copies"]) == 1
    base_body = api.get(detail_url(base)).data
    assert base_body["version"] == {"base_template": None, "version_name": "", "version_number": 1}


def test_what_a_version_post_sends_overrides_the_base(api, base):
    response = post_version(
        api,
        base,
        url="https://mirror.example/debian-12.2.qcow2",
        checksum="",
        os_type="Debian 12.2",
    )

    assert response.status_code == 201, response.data
    body = response.data
    assert (body["url"], body["checksum"], body["os_type"]) == (
        "https://mirror.example/debian-12.2.qcow2",
        "",
        "Debian 12.2",
    )
    assert body["name"] == "debian-12"


def test_a_client_sent_version_number_is_ignored(api, base, add_version):
    add_version(base)

    response = post_version(api, base, version={"version_number": 99})

    assert response.status_code == 201, response.data
    assert response.data["version"]["version_number"] == 3


@pytest.mark.parametrize(
    ("version", "rule"),
    [
        ({}, "This field is required."),
        ({"base_template": None}, "This field may not be null."),
        ({"base_template": "00000000-0000-0000-0000-000000000000"}, "unknown template id"),
        ({"base_template": "not-a-uuid"}, "must be a UUID"),
    ],
)
def test_a_missing_or_unknown_base_is_a_400_naming_it(api, base, version, rule):
    response = api.post(LIST, {"version": version}, format="json")

    assert response.status_code == 400
    assert rule in str(response.data["version.base_template"]), response.data
    assert Template.objects.count() == 1


def test_without_a_version_section_name_format_and_url_are_required(api, zone, store):
    response = api.post(LIST, {"zones": [str(zone.uuid)]}, format="json")

    assert response.status_code == 400
    assert set(response.data) == {"name", "format", "url"}


def test_a_version_of_a_version_is_a_400_naming_the_base(api, base, add_version):
    second = add_version(base)

    response = post_version(api, second)

    assert response.status_code == 400
    assert "version of a version" in str(response.data["version.base_template"])


def test_a_version_of_an_inactive_base_is_409(api, base):
    api.delete(detail_url(base))

    response = post_version(api, base)

    assert response.status_code == 409
    assert "INACTIVE" in response.data["detail"]


def test_another_account_cannot_version_a_private_template(other_api, base):
    response = post_version(other_api, base)

    assert response.status_code == 400
    assert "unknown template id" in str(response.data["version.base_template"])
    assert Template.objects.count() == 1


def test_another_account_cannot_version_a_public_template(other_api, register):
    public = register(name="public", is_public=True)

    response = post_version(other_api, public)

    assert response.status_code == 400
    assert "only members of the base template's account" in str(
        response.data["version.base_template"]
    )


def test_staff_versions_any_template_into_the_base_account(admin_api, base, other_account):
    response = post_version(admin_api, base)
    assert response.status_code == 201, response.data
    assert response.data["account"] == str(base.account.uuid)

    response = post_version(admin_api, base, account=str(other_account.uuid))
    assert response.status_code == 400
    assert "base template's account" in str(response.data["account"])


# REST: editing ----------------------------------------------------------------------------


def test_patch_changes_the_version_name_only(api, base, add_version):
    version = add_version(base)

    response = api.patch(detail_url(version), {"version": {"version_name": "patched"}}, "json")
    assert response.status_code == 200, response.data
    assert response.data["version"]["version_name"] == "patched"

    unchanged = {"base_template": str(base.uuid), "version_number": 2, "version_name": "again"}
    response = api.patch(detail_url(version), {"version": unchanged}, format="json")
    assert response.status_code == 200, "sending back the same base and number is no change"


@pytest.mark.parametrize(
    ("version", "field"),
    [
        ({"base_template": None}, "version.base_template"),
        ({"base_template": "00000000-0000-0000-0000-000000000000"}, "version.base_template"),
        ({"version_number": 7}, "version.version_number"),
        ({"version_nmae": "typo"}, "version.version_nmae"),
        ({"version_name": "x" * 129}, "version.version_name"),
    ],
)
def test_patch_refuses_other_version_changes_naming_the_field(
    api, base, add_version, version, field
):
    target = add_version(base)

    response = api.patch(detail_url(target), {"version": version}, format="json")

    assert response.status_code == 400
    assert field in response.data, response.data
    target.refresh_from_db()
    assert (target.base_id, target.version_number, target.version_name) == (base.pk, 2, "")


def test_patch_cannot_make_a_base_a_version(api, base, register):
    other = register(name="other")

    response = api.patch(
        detail_url(base), {"version": {"base_template": str(other.uuid)}}, format="json"
    )

    assert response.status_code == 400
    assert "stays in its lineage" in str(response.data["version.base_template"])


# REST: listing ----------------------------------------------------------------------------


def listed(client, **params) -> list[tuple[str, int]]:
    results = client.get(LIST, params).data["results"]
    return sorted((row["name"], row["version"]["version_number"]) for row in results)


def test_the_listing_shows_the_latest_active_version_of_each_lineage(
    api, base, add_version, register, user
):
    add_version(base)
    third = add_version(base)
    register(name="alone")

    assert listed(api) == [("alone", 1), ("debian-12", 3)]
    assert listed(api, all_versions="true") == [
        ("alone", 1),
        ("debian-12", 1),
        ("debian-12", 2),
        ("debian-12", 3),
    ]

    services.template_deactivate(template_id=third.pk, actor=user)
    assert listed(api) == [("alone", 1), ("debian-12", 2)], "an INACTIVE version is skipped"


def test_an_active_version_of_an_inactive_base_is_still_listed(api, base, add_version):
    add_version(base)
    # Not reachable through the services (deleting a base deletes its versions): made directly.
    Template.objects.filter(pk=base.pk).update(state=TemplateState.INACTIVE)

    assert listed(api) == [("debian-12", 2)]


def test_the_latest_version_decides_before_the_listing_filters(api, base, add_version):
    add_version(base, name="debian-12 renamed")

    assert listed(api, name="renamed") == [("debian-12 renamed", 2)]
    assert listed(api, name="debian-12") == [("debian-12 renamed", 2)]
    assert listed(api, name="debian-12", all_versions="true") == [
        ("debian-12", 1),
        ("debian-12 renamed", 2),
    ]


def test_staff_state_listing_shows_the_newest_version_in_those_states(
    admin_api, base, add_version, user
):
    second = add_version(base)
    services.template_deactivate(template_id=second.pk, actor=user)

    inactive = listed(admin_api, state="INACTIVE", templatefilter="all")
    assert inactive == [("debian-12", 2)]


def test_listing_costs_the_same_queries_with_versions(
    api, register, add_version, django_assert_max_num_queries
):
    first = register(name="first")
    add_version(first)
    with django_assert_max_num_queries(6):
        assert len(api.get(LIST).data["results"]) == 1
    for n in range(10):
        lineage = register(name=f"t{n}", details={"k": str(n)})
        add_version(lineage, version_name=f"v{n}")
        add_version(lineage)
    with django_assert_max_num_queries(6):
        assert len(api.get(LIST).data["results"]) == 11
    with django_assert_max_num_queries(6):
        assert len(api.get(LIST, {"all_versions": "true"}).data["results"]) == 32


# REST: the lineage endpoint ---------------------------------------------------------------


def test_versions_lists_the_lineage_oldest_first_from_any_member(api, base, add_version, user):
    second = add_version(base, version_name="second")
    third = add_version(base, version_name="third")
    services.template_deactivate(template_id=third.pk, actor=user)

    for member in (base, second):
        response = api.get(detail_url(member) + "versions/")
        assert response.status_code == 200
        assert [(r["version"]["version_number"], r["state"]) for r in response.data] == [
            (1, "ACTIVE"),
            (2, "ACTIVE"),
            (3, "INACTIVE"),
        ]


def test_versions_of_a_private_lineage_are_404_for_another_account(
    other_api, base, add_version, register
):
    add_version(base)
    public = register(name="public", is_public=True)
    add_version(public)

    assert other_api.get(detail_url(base) + "versions/").status_code == 404
    response = other_api.get(detail_url(public) + "versions/")
    assert response.status_code == 200
    assert [r["version"]["version_number"] for r in response.data] == [1, 2]


# Deletion and 'latest' ---------------------------------------------------------------------


def test_deleting_the_base_deactivates_every_active_version(
    api, base, add_version, make_vm, account, user
):
    held = add_version(base)
    free = add_version(base)
    make_vm(held)

    response = api.delete(detail_url(base))

    assert response.status_code == 200
    states = dict(Template.objects.values_list("pk", "state"))
    assert states == {base.pk: "INACTIVE", held.pk: "INACTIVE", free.pk: "INACTIVE"}
    assert Event.objects.get(object_id=free.pk, to_state="INACTIVE").reason == (
        "base template 'debian-12' deleted"
    )
    account.refresh_from_db()
    assert account.used_templates == 0

    services.gc_sweep()
    states = dict(Template.objects.values_list("pk", "state"))
    assert states == {base.pk: "REMOVED", held.pk: "INACTIVE", free.pk: "REMOVED"}, (
        "each version then follows its own life cycle"
    )


def test_deleting_a_version_deactivates_only_it(api, base, add_version):
    second = add_version(base)
    third = add_version(base)

    assert api.delete(detail_url(second)).status_code == 200

    states = dict(Template.objects.values_list("pk", "state"))
    assert states == {base.pk: "ACTIVE", second.pk: "INACTIVE", third.pk: "ACTIVE"}


def test_latest_is_the_newest_active_version_of_the_lineage(base, add_version, user):
    second = add_version(base)
    third = add_version(base)
    assert version_selectors.latest_version(base.pk) == third
    assert version_selectors.latest_version(second.pk) == third, "a version stands for its lineage"

    services.template_deactivate(template_id=third.pk, actor=user)
    assert version_selectors.latest_version(base.pk) == second

    services.template_deactivate(template_id=second.pk, actor=user)
    assert version_selectors.latest_version(base.pk) == base

    services.template_deactivate(template_id=base.pk, actor=user)
    assert version_selectors.latest_version(base.pk) is None
    assert version_selectors.latest_version(0) is None


def test_a_version_under_an_inactive_base_cannot_be_reactivated(admin_api, base, add_version, user):
    version = add_version(base)
    services.template_deactivate(template_id=base.pk, actor=user)

    response = admin_api.post(detail_url(version) + "reactivate/")

    assert response.status_code == 409
    assert "base template 'debian-12' is INACTIVE" in response.data["detail"]
    assert admin_api.post(detail_url(base) + "reactivate/").status_code == 200
    response = admin_api.post(detail_url(version) + "reactivate/")
    assert response.status_code == 200
    assert response.data["state"] == "ACTIVE"
    assert Account.objects.get(pk=base.account_id).used_templates == 2


# Admin ------------------------------------------------------------------------------------


@pytest.fixture
def staff(client, admin_user):
    client.force_login(admin_user)
    return client


def admin_url(name: str, *args) -> str:
    return reverse(f"admin:templates_app_template_{name}", args=args)


def change_form_data(response, **changes) -> dict:
    form = response.context["adminform"].form
    data = {name: form[name].value() for name in form.fields if form[name].value() is not None}
    for inline in response.context["inline_admin_formsets"]:
        management = inline.formset.management_form
        data.update({management.add_prefix(k): v for k, v in management.initial.items()})
    data.update(changes)
    return data


def test_the_base_page_lists_its_versions_and_offers_save_as_new_version(staff, base, add_version):
    second = add_version(base, version_name="patched")

    response = staff.get(admin_url("change", base.pk))

    html = response.content.decode()
    assert "Versions of this template" in html
    assert admin_url("change", second.pk) in html and "patched" in html
    assert 'name="_saveasversion"' in html

    version_page = staff.get(admin_url("change", second.pk)).content.decode()
    assert "Versions of this template" not in version_page
    assert admin_url("change", base.pk) in version_page, "a version links to its base"


def test_save_as_new_version_registers_the_page_values_and_leaves_the_base(staff, base, admin_user):
    page = staff.get(admin_url("change", base.pk))
    data = change_form_data(
        page,
        os_type="Debian 12.5",
        version_name="12.5",
        url="https://mirror.example/debian-12.5.qcow2",
        _saveasversion="Save as new version",
    )

    response = staff.post(admin_url("change", base.pk), data, follow=True)

    version = Template.objects.get(base=base)
    assert response.redirect_chain[-1][0] == admin_url("change", version.pk)
    assert "Created version 2 of “debian-12”" in response.content.decode()
    assert (version.version_number, version.version_name, version.os_type) == (
        2,
        "12.5",
        "Debian 12.5",
    )
    assert version.url == "https://mirror.example/debian-12.5.qcow2"
    assert (version.format, version.checksum) == ("QCOW2", CHECKSUM)
    base.refresh_from_db()
    assert (base.os_type, base.url) == ("Debian 12", "https://mirror.example/debian-12.qcow2")


def test_save_as_new_version_on_a_version_adds_to_its_base(staff, base, add_version):
    second = add_version(base, url="https://mirror.example/debian-12.1.qcow2")
    page = staff.get(admin_url("change", second.pk))

    staff.post(
        admin_url("change", second.pk),
        change_form_data(page, _saveasversion="Save as new version"),
    )

    third = Template.objects.get(base=base, version_number=3)
    assert third.url == "https://mirror.example/debian-12.1.qcow2", "the page's values"


def test_plain_save_refuses_a_new_image_and_points_to_save_as_new_version(staff, base):
    page = staff.get(admin_url("change", base.pk))
    data = change_form_data(page, url="https://mirror.example/other.qcow2")

    response = staff.post(admin_url("change", base.pk), data)

    assert response.status_code == 200
    assert "Save as new version" in response.context["adminform"].form.errors["url"][0]
    base.refresh_from_db()
    assert base.url == "https://mirror.example/debian-12.qcow2"
    assert not Template.objects.filter(base=base).exists()


def test_the_change_form_edits_the_version_name(staff, base, add_version):
    second = add_version(base)
    page = staff.get(admin_url("change", second.pk))

    response = staff.post(admin_url("change", second.pk), change_form_data(page, version_name="x"))

    assert response.status_code == 302
    second.refresh_from_db()
    assert (second.version_name, second.version_number) == ("x", 2)


def test_a_base_with_versions_is_still_edited_by_a_plain_save(staff, base, add_version):
    add_version(base)
    add_version(base)
    page = staff.get(admin_url("change", base.pk))

    response = staff.post(admin_url("change", base.pk), change_form_data(page, name="renamed"))

    assert response.status_code == 302
    names = dict(Template.objects.values_list("version_number", "name"))
    assert names == {1: "renamed", 2: "debian-12", 3: "debian-12"}
