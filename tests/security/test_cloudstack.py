"""Attacks on the CloudStack facade by a second account: another account's templates, VMs and
jobs behave exactly as ids that do not exist (same status, same text), its secrets stay
hidden, and nothing is written."""

import uuid

import pytest

from agents_app.cloudstack.offerings import OFFERINGS
from agents_app.models import VirtualMachine
from templates_app.cloudstack.models import AsyncJob
from templates_app.models import Template, TemplateStoreRef
from tests.cloudstack import call, keys_for
from tests.templates_app.factories import ImageStoreFactory, ZoneFactory

pytestmark = pytest.mark.django_db

SMALL = next(o for o in OFFERINGS if o.name == "Small Instance")


@pytest.fixture
def second_zone(store):
    zone = ZoneFactory(name="zone-b")
    ImageStoreFactory(zone=zone, name="store-b", path=store.path)
    return zone


def test_another_users_job_is_unknown(user, other_user, register):
    template = register()
    status, started = call(keys_for(user), "deleteTemplate", id=str(template.uuid))
    assert status == 200

    mine = call(keys_for(user), "queryAsyncJobResult", jobid=started["jobid"])
    theirs = call(keys_for(other_user), "queryAsyncJobResult", jobid=started["jobid"])

    assert mine[0] == 200 and mine[1]["jobstatus"] == 1
    assert theirs[0] == 431
    assert theirs[1]["errortext"] == call(
        keys_for(other_user), "queryAsyncJobResult", jobid="00000000-0000-0000-0000-000000000001"
    )[1]["errortext"].replace("00000000-0000-0000-0000-000000000001", started["jobid"])


def test_another_accounts_template_behaves_as_unknown(user, other_user, register):
    secret = register(name="private-one")
    public = register(name="public-one", is_public=True)
    hostile = keys_for(other_user)
    unknown = "00000000-0000-0000-0000-0000000000aa"

    listed = call(hostile, "listTemplates", templatefilter="executable")[1]
    by_id = call(hostile, "listTemplates", templatefilter="executable", id=str(secret.uuid))[1]
    answers = {
        name: [
            call(hostile, command, id=ident, **extra)
            for ident in (str(secret.uuid), str(public.uuid), unknown)
        ]
        for name, (command, extra) in {
            "delete": ("deleteTemplate", {}),
            "update": ("updateTemplate", {"name": "pwned"}),
        }.items()
    }

    assert [r["name"] for r in listed["template"]] == ["public-one"]
    assert by_id == {}
    for results in answers.values():
        texts = [body["errortext"] for _, body in results]
        assert [status for status, _ in results] == [431, 431, 431]
        assert texts[0].replace(str(secret.uuid), unknown) == texts[2]
        assert texts[1].replace(str(public.uuid), unknown) == texts[2]
    assert set(Template.objects.values_list("state", "name")) == {
        ("ACTIVE", "private-one"),
        ("ACTIVE", "public-one"),
    }
    assert AsyncJob.objects.count() == 0


def test_others_see_a_public_template_without_its_secrets(user, other_user, register):
    template = register(
        name="pub",
        is_public=True,
        url="https://mirror.example/pub.qcow2?X-Amz-Signature=abc",
        details=[{"key": "HTTP_HEADER", "value": "Authorization:Bearer xyz"}],
    )

    [mine] = call(keys_for(user), "listTemplates", templatefilter="self")[1]["template"]
    [theirs] = call(keys_for(other_user), "listTemplates", templatefilter="community")[1][
        "template"
    ]

    assert mine["id"] == theirs["id"] == str(template.uuid)
    assert mine["details"] == {"HTTP_HEADER": "Authorization:Bearer xyz"}
    assert "X-Amz-Signature" in mine["url"]
    assert theirs["details"] == {"HTTP_HEADER": "Authorization:(hidden)"}
    assert "X-Amz-Signature" not in theirs["url"] and "abc" not in str(theirs)


def test_copies_by_others_or_to_unknown_zones_are_431_and_write_nothing(
    user, other_user, register, second_zone
):
    template = register()
    hostile = call(
        keys_for(other_user),
        "copyTemplate",
        id=str(template.uuid),
        destzoneid=str(second_zone.uuid),
    )
    nowhere = call(
        keys_for(user),
        "copyTemplate",
        id=str(template.uuid),
        destzoneid="00000000-0000-0000-0000-000000000000",
    )
    no_zone = call(keys_for(user), "copyTemplate", id=str(template.uuid))

    assert hostile[0] == nowhere[0] == no_zone[0] == 431
    assert "Invalid parameter id" in hostile[1]["errortext"]
    assert "Invalid parameter destzoneid" in nowhere[1]["errortext"]
    assert "missing parameter destzoneid" in no_zone[1]["errortext"]
    assert list(template.zones.values_list("name", flat=True)) == ["zone-a"]
    assert TemplateStoreRef.objects.filter(template=template).count() == 1
    assert not AsyncJob.objects.exists()


def test_another_accounts_vm_and_private_template_are_unknown(
    register, make_vm, zone, user, other_user
):
    template = register(name="private")
    vm = make_vm(template, name="alices")
    hostile = keys_for(other_user)
    unknown = str(uuid.uuid4())

    listed = call(hostile, "listVirtualMachines")[1]
    by_id = call(hostile, "listVirtualMachines", id=str(vm.uuid))[1]
    answers = {
        command: (call(hostile, command, id=str(vm.uuid)), call(hostile, command, id=unknown))
        for command in (
            "startVirtualMachine",
            "stopVirtualMachine",
            "destroyVirtualMachine",
            "expungeVirtualMachine",
            "recoverVirtualMachine",
            "rebootVirtualMachine",
        )
    }
    deploy = call(
        hostile,
        "deployVirtualMachine",
        templateid=str(template.uuid),
        zoneid=str(zone.uuid),
        serviceofferingid=SMALL.id,
    )

    assert listed == {} and by_id == {}
    for theirs, wrong in answers.values():
        assert theirs[0] == wrong[0] == 431
        assert theirs[1]["errortext"].replace(str(vm.uuid), unknown) == wrong[1]["errortext"]
    assert deploy[0] == 431 and "Invalid parameter templateid" in deploy[1]["errortext"]
    vm.refresh_from_db()
    assert vm.state == "STOPPED"
    assert VirtualMachine.objects.count() == 1 and not AsyncJob.objects.exists()
