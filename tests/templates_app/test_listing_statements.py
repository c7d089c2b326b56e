"""The listing's compiled statements (templates_app.statements): compiled once per caller and
filters, kept per process, yet never showing a caller what another caller (or the same one,
before a change of accounts or role) could see."""

from datetime import timedelta

import pytest

LIST = "/api/v1/templates/"


@pytest.fixture(autouse=True)
def fresh_caches():
    from templates_app.api.pagination import forget_estimates, forget_statements

    forget_estimates()
    forget_statements()
    yield
    forget_estimates()
    forget_statements()


def names(client, **params) -> set[str]:
    response = client.get(LIST, {"page_size": 100, **params})
    assert response.status_code == 200, response.data
    return {row["name"] for row in response.data["results"]}


def walk_cursor(client, page_size: int = 2) -> list[str]:
    seen: list[str] = []
    body = client.get(LIST, {"page_size": page_size, "cursor": ""}).data
    while True:
        seen += [row["name"] for row in body["results"]]
        if not body["next_cursor"]:
            return seen
        body = client.get(LIST, {"page_size": page_size, "cursor": body["next_cursor"]}).data


def test_callers_of_two_accounts_alternating_each_see_only_their_own(
    api, other_api, register, other_account
):
    register(name="acme-private")
    register(name="public", is_public=True)
    register(name="globex-private", account=other_account)
    for _ in range(3):  # every answer after the first comes from a compiled statement
        assert names(api) == {"acme-private", "public"}
        assert names(other_api) == {"globex-private", "public"}
        assert sorted(walk_cursor(api)) == ["acme-private", "public"]
        assert sorted(walk_cursor(other_api)) == ["globex-private", "public"]


def test_joining_and_leaving_an_account_changes_the_listing_at_once(
    api, user, register, other_account
):
    register(name="globex-private", account=other_account)
    assert "globex-private" not in names(api)
    other_account.members.add(user)
    assert "globex-private" in names(api)
    other_account.members.remove(user)
    assert "globex-private" not in names(api)


def test_losing_staff_hides_other_accounts_private_templates_at_once(
    api, user, register, other_account
):
    register(name="globex-private", account=other_account)
    user.is_staff = True
    user.save()
    assert "globex-private" in names(api, templatefilter="all")
    user.is_staff = False
    user.save()
    assert "globex-private" not in names(api, templatefilter="all")
    assert "globex-private" not in names(api)


def test_secrets_of_a_shared_template_stay_hidden_from_the_account_it_is_shared_with(
    api, other_api, register, account, other_account, user
):
    from templates_app import launch_permissions

    template = register(
        name="signed", url="http://images.example/a.qcow2?token=s3cret", is_public=False
    )
    launch_permissions.template_permissions_update(
        template_id=template.pk, actor=user, op="add", accounts=[other_account]
    )
    for _ in range(2):
        [own] = api.get(LIST).data["results"]
        [shared] = other_api.get(LIST).data["results"]
        assert own["url"].endswith("?token=s3cret")
        assert "s3cret" not in shared["url"] and shared["name"] == "signed"


def test_a_new_template_appears_on_the_next_request(api, register):
    register(name="first")
    assert names(api) == {"first"}
    register(name="second")
    assert names(api) == {"first", "second"}
    assert walk_cursor(api, page_size=1) == ["second", "first"]


def test_a_bad_filter_is_a_400_every_time_and_compiles_nothing(api, register):
    from templates_app.api import pagination

    register(name="alpha")
    for _ in range(2):
        bad = api.get(LIST, {"kind": "FLOPPY"})
        assert bad.status_code == 400 and "kind" in bad.data
    assert len(pagination._statements) == 0
    assert names(api, kind="TEMPLATE") == {"alpha"}
    assert len(pagination._statements) == 1


def test_a_listing_that_shrinks_below_the_limit_is_exact_again_once_its_estimate_expires(
    api, register, settings, user
):
    from templates_app import services
    from templates_app.api.pagination import forget_estimates

    settings.STENCIL_LISTING_EXACT_COUNT_LIMIT = 2
    templates = [register(name=f"t{n}") for n in range(4)]
    body = api.get(LIST, {"page_size": 10}).data
    assert body["count_is_estimate"] is True and len(body["results"]) == 4
    for template in templates[1:]:
        services.template_deactivate(template_id=template.pk, actor=user)
    body = api.get(LIST, {"page_size": 10}).data
    assert [row["name"] for row in body["results"]] == ["t0"]  # the rows are always current
    forget_estimates()  # what ESTIMATE_TTL_SECONDS later looks like
    body = api.get(LIST, {"page_size": 10}).data
    assert (body["count"], body["count_is_estimate"]) == (1, False)


def test_the_listing_statement_is_prepared_once_per_connection(api, register, settings):
    from django.db import connection

    register(name="alpha")

    def prepared() -> int:
        with connection.cursor() as cursor:
            cursor.execute("SELECT COUNT(*) FROM pg_prepared_statements")
            return cursor.fetchone()[0]

    before = prepared()
    for _ in range(3):
        assert names(api) == {"alpha"}
    assert prepared() == before + 1
    settings.STENCIL_PREPARED_STATEMENTS = False
    assert names(api, kind="TEMPLATE") == {"alpha"}
    assert prepared() == before + 1


def test_compiled_statement_binds_variables_as_the_orm_would(register, account):
    from django.db.models import DateTimeField, IntegerField, Q

    from templates_app.models import Template
    from templates_app.statements import Variable, compile_values

    made = [register(name=f"t{n}") for n in range(3)]
    when = Variable("when", DateTimeField())
    pk = Variable("pk", IntegerField())
    statement = compile_values(
        Template.objects.filter(Q(created_at__lte=when), Q(pk__lt=pk))
        .order_by("pk")
        .values("pk", "name", "is_public", "uuid", "created_at")
    )
    latest = max(t.created_at for t in made)
    rows = statement.fetch(limit=10, when=latest, pk=made[2].pk)
    assert [row["name"] for row in rows] == ["t0", "t1"]
    assert rows[0] == Template.objects.values("pk", "name", "is_public", "uuid", "created_at").get(
        pk=made[0].pk
    )
    assert statement.fetch(limit=10, when=latest - timedelta(days=1), pk=made[2].pk) == []
    assert [row["name"] for row in statement.fetch(limit=1, offset=1, when=latest, pk=10**9)] == [
        "t1"
    ]


def test_compile_values_refuses_a_sliced_queryset(db):
    from templates_app.models import Template
    from templates_app.statements import compile_values

    with pytest.raises(ValueError, match="unsliced"):
        compile_values(Template.objects.values("pk")[:5])


def test_the_statement_cache_keeps_the_most_recently_used(db):
    from templates_app.models import Template
    from templates_app.statements import StatementCache

    cache = StatementCache(size=2)
    built = []

    def build(label):
        def _build():
            built.append(label)
            return Template.objects.values("pk")

        return _build

    for label in ("a", "b", "a", "c", "a", "b"):
        cache.get_or_compile(label, build(label))
    assert built == ["a", "b", "c", "b"] and len(cache) == 2

    def refuse():
        raise ValueError("a 400 while building")

    with pytest.raises(ValueError):
        cache.get_or_compile("d", refuse)
    assert len(cache) == 2


def test_the_query_log_shows_the_listing_statement_with_its_parameters(api, register):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    register(name="alpha")
    with CaptureQueriesContext(connection) as queries:
        assert names(api) == {"alpha"}
    logged = [q["sql"] for q in queries.captured_queries]
    assert all(logged), logged  # none is None
    [page] = [sql for sql in logged if "LIMIT 101 OFFSET 0" in sql]
    assert "'ACTIVE'" in page
