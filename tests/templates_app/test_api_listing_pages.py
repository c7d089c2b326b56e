"""The template listing's count (exact while cheap, then an estimate) and its keyset cursor."""

import pytest

LIST = "/api/v1/templates/"


@pytest.fixture(autouse=True)
def no_cached_estimates():
    """The planner's estimates and the compiled statements are kept per process: each test
    starts without any."""
    from templates_app.api.pagination import forget_estimates, forget_statements

    forget_estimates()
    forget_statements()
    yield
    forget_estimates()
    forget_statements()


@pytest.fixture
def catalogue(register, settings):
    settings.STENCIL_LISTING_EXACT_COUNT_LIMIT = 3
    return [register(name=f"t{n:02d}") for n in range(8)]


def test_count_is_exact_below_the_limit(api, register, settings):
    settings.STENCIL_LISTING_EXACT_COUNT_LIMIT = 100
    for n in range(5):
        register(name=f"t{n}")
    body = api.get(LIST, {"page_size": 2}).data
    assert (body["count"], body["count_is_estimate"]) == (5, False)
    assert body["next"] is not None and body["next_cursor"] is not None


def test_count_beyond_the_limit_is_an_estimate_and_pages_still_work(api, catalogue):
    body = api.get(LIST, {"page_size": 3}).data
    assert body["count_is_estimate"] is True
    assert body["count"] > 3  # never below what the exact part counted
    names = [row["name"] for row in body["results"]]
    page = 2
    while body["next"]:
        body = api.get(LIST, {"page_size": 3, "page": page}).data
        names += [row["name"] for row in body["results"]]
        page += 1
    assert names == [f"t{n:02d}" for n in reversed(range(8))]
    assert api.get(LIST, {"page_size": 3, "page": 40}).status_code == 404


def test_cursor_pages_have_no_duplicates_or_gaps_while_rows_are_inserted(api, catalogue, register):
    seen = []
    body = api.get(LIST, {"page_size": 3, "cursor": ""}).data
    inserted = 0
    while True:
        seen += [row["name"] for row in body["results"]]
        # A newer template appears between two pages: it is before the cursor, not in it.
        register(name=f"new{inserted}")
        inserted += 1
        if not body["next_cursor"]:
            break
        body = api.get(LIST, {"page_size": 3, "cursor": body["next_cursor"]}).data
        assert body["next"] is None or "cursor=" in body["next"]
    assert seen == [f"t{n:02d}" for n in reversed(range(8))]
    # The next listing from the top starts with the newest insert.
    assert (
        api.get(LIST, {"page_size": 1, "cursor": ""}).data["results"][0]["name"]
        == f"new{inserted - 1}"
    )


def test_a_tampered_cursor_is_a_400_naming_cursor(api, catalogue):
    cursor = api.get(LIST, {"page_size": 3}).data["next_cursor"]
    for bad in (cursor[:-2] + ("AA" if not cursor.endswith("AA") else "BB"), "garbage", "1:2"):
        response = api.get(LIST, {"page_size": 3, "cursor": bad})
        assert response.status_code == 400, bad
        assert "cursor" in response.data
    response = api.get(LIST, {"cursor": cursor, "ordering": "name"})
    assert response.status_code == 400
    assert "cursor" in response.data


def test_listing_queries_stay_bounded_with_estimates_and_cursors(
    api, catalogue, register, django_assert_max_num_queries
):
    # 4 here (force-authenticated), 5 with a token's lookup: the caller's accounts, the page's
    # statement (with the capped count), the estimate (one EXPLAIN), zones and details.
    with django_assert_max_num_queries(4):
        body = api.get(LIST, {"page_size": 3}).data
    assert body["count_is_estimate"] is True
    with django_assert_max_num_queries(4):
        body = api.get(LIST, {"page_size": 3, "cursor": body["next_cursor"]}).data
    assert len(body["results"]) == 3
    for n in range(10):
        register(name=f"more{n}", details={"k": str(n)})
    with django_assert_max_num_queries(4):
        assert len(api.get(LIST, {"page_size": 3, "cursor": ""}).data["results"]) == 3


def test_the_estimate_is_asked_once_a_minute_not_on_every_request(
    api, catalogue, django_assert_num_queries
):
    # First listing beyond the limit: the caller's accounts, the page's statement (with the
    # capped count), one EXPLAIN, zones and details in one statement. Within
    # ESTIMATE_TTL_SECONDS the next ones reuse the estimate, and the page's statement leaves
    # the capped count out.
    with django_assert_num_queries(4):
        first = api.get(LIST, {"page_size": 3}).data
    with django_assert_num_queries(3):
        again = api.get(LIST, {"page_size": 3}).data
    assert (again["count"], again["count_is_estimate"]) == (first["count"], True)
    with django_assert_num_queries(3):
        deeper = api.get(LIST, {"page_size": 3, "cursor": first["next_cursor"]}).data
    assert deeper["count"] == first["count"]
    # Another filter is another statement: it gets its own estimate.
    with django_assert_num_queries(4):
        assert api.get(LIST, {"page_size": 3, "name": "t0"}).data["count_is_estimate"] is True


def test_the_listing_fast_path_answers_what_the_serializer_fields_answer(api, register, user, rf):
    from rest_framework.request import Request

    from templates_app import selectors
    from templates_app.api.serializers import TemplateSerializer
    from versions_app import services as version_services

    base = register(name="base", details={"rootDiskController": "virtio", "password": "s3cret"})
    version_services.template_version_create(
        base_template_id=base.pk, actor=user, version_name="v2"
    )
    listed = api.get(LIST, {"all_versions": "true"}).data["results"]
    request = Request(rf.get(LIST))
    request.user = user
    rows = list(selectors.template_list(user=user).order_by("-created_at", "-id"))
    context = {"request": request}
    slow = TemplateSerializer(rows, many=True, context=context).data
    assert [dict(row) for row in listed] == [dict(row) for row in slow]
    assert [row["version"]["version_name"] for row in listed] == ["v2", ""]


def test_filters_apply_and_reject_bad_values_while_an_unfiltered_page_skips_them(api, register):
    register(name="alpha")
    register(name="beta")
    assert {row["name"] for row in api.get(LIST, {"page_size": 10}).data["results"]} == {
        "alpha",
        "beta",
    }
    assert [row["name"] for row in api.get(LIST, {"name": "alp"}).data["results"]] == ["alpha"]
    bad = api.get(LIST, {"kind": "FLOPPY"})
    assert bad.status_code == 400 and "kind" in bad.data
    bad = api.get(LIST, {"templatefilter": "nonsense"})
    assert bad.status_code == 400 and "templatefilter" in bad.data
