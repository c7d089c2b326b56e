"""Schemathesis over every /api/v1/ operation, against a live server, as staff and as a tenant.

Every answer must be a non-5xx whose status code, content type and body the OpenAPI schema
(/api/schema/) documents. Ten examples per operation (valid and invalid input, derandomized so
that a run is repeatable) keep it to about a minute and a half for both users. Each example is
sent as generated and, where the path names an object, once more with the id of a seeded object
of that kind, so that deletes and actions meet real rows (a zone that still has an image store,
an account that still owns templates) and not only 404s.

Not fuzzed: POST /api/v1/uploads/{template_id}/ takes a raw body authorised by HMAC-signed
headers (X-Metadata, X-Expires, X-Signature) that no generator can forge, so every generated
request would only be a 403; it is not in the schema, and tests/test_uploads.py covers it, with
test_upload_endpoint_answers_json_errors below for the fuzzer's kind of input.
"""

import json
import re
import time

import pytest
import requests
import schemathesis
from drf_spectacular.generators import SchemaGenerator
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from rest_framework.authtoken.models import Token
from schemathesis import GenerationMode

from agents_app import services as vm_services
from agents_app.agent import heartbeat
from agents_app.models import PrimaryPool
from templates_app import services
from tests.templates_app.factories import (
    AccountFactory,
    ImageStoreFactory,
    UserFactory,
    ZoneFactory,
)

pytestmark = [pytest.mark.xdist_group("api-fuzz")]

MAX_EXAMPLES = 10
# Per request; a hung request fails the test instead of stalling `make test`.
REQUEST_TIMEOUT = 20
# For all operations as one user: about 40 s on an idle 2-core machine; the margin is for a
# machine busy with the rest of the suite, not for growth.
TIME_BUDGET = 300

# What case.call_and_validate checks (how many cases, and which, is FUZZ_SETTINGS's part).
CONFIG = schemathesis.Config.from_dict(
    {
        "checks": {
            "enabled": False,
            "not_a_server_error": {"enabled": True},
            "status_code_conformance": {"enabled": True},
            "content_type_conformance": {"enabled": True},
            "response_schema_conformance": {"enabled": True},
        },
    }
)

# Which seeded object a path's `{id}` names, by the path's first segment under /api/v1/.
RESOURCE_OF_SEGMENT = {
    "templates": "template",
    "zones": "zone",
    "image-stores": "store",
    "accounts": "account",
    "hosts": "host",
    "primary-pools": "pool",
    "vms": "vm",
}


@pytest.fixture
def world(transactional_db, tmp_path):
    """A zone with an image store, a host and a pool; an account with a tenant; staff; and
    two templates (one per owner) and a VM; the two users each with a token to call the API with."""
    zone = ZoneFactory(name="fuzz-zone")
    store_path = tmp_path / "store"
    store_path.mkdir()
    store = ImageStoreFactory(zone=zone, name="fuzz-store", path=str(store_path))
    host = heartbeat.host_register(name="fuzz-kvm", zone=zone, libvirt_uri="test:///default")
    pool = PrimaryPool.objects.create(
        zone=zone, name="fuzz-pool", libvirt_pool_name="fuzz-pool", path=str(tmp_path / "pool")
    )
    pool.hosts.set([host])
    account = AccountFactory(name="fuzz-acme")
    tenant = UserFactory(username="fuzz-tenant")
    account.members.add(tenant)
    staff = UserFactory(username="fuzz-staff", is_staff=True, is_superuser=True)
    template = services.template_register(
        account=account,
        actor=tenant,
        name="fuzz-debian",
        image_format="QCOW2",
        url="https://mirror.example/debian.qcow2",
        zones=[zone],
    )
    public = services.template_register(
        account=account,
        actor=staff,
        name="fuzz-public",
        image_format="QCOW2",
        url="https://mirror.example/public.qcow2",
        zones=[zone],
        is_public=True,
    )
    vm = vm_services.vm_create(
        name="fuzz-vm", template_id=template.pk, zone=zone, account=account, actor=tenant
    )
    return {
        "tokens": {
            "staff": Token.objects.create(user=staff).key,
            "tenant": Token.objects.create(user=tenant).key,
        },
        "ids": {
            "zone": str(zone.uuid),
            "store": str(store.uuid),
            "host": str(host.uuid),
            "pool": str(pool.uuid),
            "account": str(account.uuid),
            "template": str(template.uuid),
            "public": str(public.uuid),
            "vm": str(vm.uuid),
        },
    }


def served_schema() -> dict:
    """The OpenAPI document /api/schema/ serves, generated in-process at import.

    schemathesis.pytest.from_fixture (load the schema from the live server in a fixture) fails
    on pytest 9.2 (it sets Function._nodeid, which pytest no longer has), so the document is
    made here and test_served_schema_is_the_fuzzed_one checks that the live server serves the
    same one."""
    return SchemaGenerator().get_schema(request=None, public=True)


SCHEMA_DICT = served_schema()
SCHEMA = schemathesis.openapi.from_dict(SCHEMA_DICT, config=CONFIG).include(path_regex="^/api/v1/")


def seeded_variant(case, ids):
    """The same request with the path's id replaced by a seeded object's, or None."""
    if "id" not in (case.path_parameters or {}):
        return None
    segment = re.match(r"^/api/v1/([^/]+)/", case.path).group(1)
    kind = RESOURCE_OF_SEGMENT.get(segment)
    if kind is None:
        return None
    return {**case.path_parameters, "id": ids[kind]}


FUZZ_SETTINGS = settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
    derandomize=True,
    database=None,
)


def body_is_documented(ctx, response, case):
    """schemathesis skips the body of a response the schema says has none; this does not."""
    documented = SCHEMA_DICT["paths"][case.path][case.method.lower()]["responses"]
    answer = documented.get(str(response.status_code), {})
    if response.content and "content" not in answer:
        raise AssertionError(
            f"{case.method} {case.path} answered {response.status_code} with a body that the "
            f"schema does not document: {response.content[:200]!r}"
        )


def call_and_validate(case, *, role, world, base_url):
    """Send the case, and again aimed at a seeded object; every answer must match the schema."""
    headers = {"Authorization": f"Token {world['tokens'][role]}"}
    variants = [case.path_parameters]
    seeded = seeded_variant(case, world["ids"])
    if seeded is not None:
        variants.append(seeded)
    failures = []
    for path_parameters in variants:
        case.path_parameters = path_parameters
        try:
            case.call_and_validate(
                base_url=base_url,
                headers=headers,
                additional_checks=[body_is_documented],
                timeout=REQUEST_TIMEOUT,
            )
        except AssertionError as exc:  # schemathesis reports its failures as AssertionErrors
            failures.append(exc)
    if failures:
        raise failures[0]


def fuzz_operation(operation, *, role, world, base_url) -> None:
    """Valid and invalid input for one operation, MAX_EXAMPLES cases, no shrinking."""
    cases = st.one_of(
        operation.as_strategy(GenerationMode.POSITIVE),
        operation.as_strategy(GenerationMode.NEGATIVE),
    )

    @FUZZ_SETTINGS
    @given(case=cases)
    def run(case):
        call_and_validate(case, role=role, world=world, base_url=base_url)

    run()


@pytest.mark.parametrize("role", ["staff", "tenant"])
def test_api_fuzz(role, world, live_server, subtests):
    """Every /api/v1/ operation in the schema, one subtest each, against one seeded world
    (a per-operation world would spend most of the run flushing the database)."""
    started = time.monotonic()
    operations = [result.ok() for result in SCHEMA.get_all_operations()]
    assert len(operations) > 50, "the fuzzer found too few operations in the schema"
    for operation in operations:
        with subtests.test(msg=operation.label):
            fuzz_operation(operation, role=role, world=world, base_url=live_server.url)
    elapsed = time.monotonic() - started
    assert elapsed < TIME_BUDGET, f"the fuzz run took {elapsed:.0f} s, over {TIME_BUDGET} s"


def test_served_schema_is_the_fuzzed_one(live_server, world):
    served = requests.get(
        f"{live_server.url}/api/schema/", params={"format": "json"}, timeout=REQUEST_TIMEOUT
    )
    assert served.status_code == 200
    assert served.json() == json.loads(json.dumps(SCHEMA_DICT, default=str))


def test_upload_endpoint_answers_json_errors(live_server, world):
    """What the fuzzer would send the upload endpoint: unsigned, malformed, wrong method."""
    url = f"{live_server.url}/api/v1/uploads/{world['ids']['template']}/"
    unsigned = requests.post(url, data=b"x" * 10, timeout=REQUEST_TIMEOUT)
    assert unsigned.status_code in (400, 403)
    assert unsigned.headers["Content-Type"].startswith("application/json")
    forged = requests.post(
        url,
        data=b"x",
        headers={"X-Metadata": "%%%", "X-Expires": "not-a-time", "X-Signature": "00"},
        timeout=REQUEST_TIMEOUT,
    )
    assert forged.status_code in (400, 403)
    assert requests.get(url, timeout=REQUEST_TIMEOUT).status_code == 405
