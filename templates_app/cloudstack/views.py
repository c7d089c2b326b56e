"""GET and POST /client/api: authenticate, find the command, parse its parameters, call it,
and answer in CloudStack's envelope (`{"<command>response": {...}}`, HTTP status = errorcode)."""

import logging

from django.db import transaction
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods

from templates_app.errors import StencilError

from . import errors, keys, registry
from .jobs import AsyncStart, job_create, job_refresh
from .responses import without_nulls, xml_document
from .signing import check_signature

logger = logging.getLogger(__name__)


def _params_of(request: HttpRequest) -> dict[str, str]:
    """Query and form parameters (a form field wins), keys lower-cased: CloudStack's names are
    case-insensitive (signatureVersion and signatureversion alike)."""
    params = {key.lower(): value for key, value in request.GET.items()}
    if request.method == "POST":
        params.update({key.lower(): value for key, value in request.POST.items()})
    return params


def _authenticate(params: dict[str, str]):
    found = keys.user_and_secret_of(params.get("apikey", ""))
    if found is None:
        raise errors.auth_failed()
    user, secret = found
    check_signature(params, secret)
    return user


def _run(request: HttpRequest, params: dict[str, str], name: str) -> dict:
    user = _authenticate(params)
    command = registry.command_for(name, user)
    if command is None:
        raise errors.CloudStackError(
            f"The given command {name or '(none)'} does not exist or it is not available for "
            "the user",
            code=errors.UNKNOWN_COMMAND,
        )
    arguments = registry.parse_params(command, params)
    call = registry.Call(user=user, command=command.name, base_url=request.build_absolute_uri("/"))
    try:
        if not command.is_async:
            return command.handler(call, **arguments)
        # The state change and its job commit together (async handlers never wait on a host).
        with transaction.atomic():
            start: AsyncStart = command.handler(call, **arguments)
            job = job_create(user=user, command=command.name, start=start)
        job_refresh(job)
        return {"jobid": str(job.uuid), "id": str(start.target.uuid)}
    except StencilError as exc:
        raise errors.from_stencil_error(exc, fields=command.fields) from exc


@csrf_exempt
@require_http_methods(["GET", "POST"])
def client_api(request: HttpRequest) -> HttpResponse:
    params = _params_of(request)
    name = params.get("command", "")
    envelope = f"{name.lower()}response" if name else "errorresponse"
    try:
        body, status = _run(request, params, name), 200
    except errors.CloudStackError as exc:
        body, status = exc.body(), exc.code
    except Exception:
        logger.exception("CloudStack API command %s failed", name)
        failure = errors.CloudStackError(
            "Internal error executing command, please contact your system administrator",
            code=errors.INTERNAL_ERROR,
        )
        body, status = failure.body(), failure.code
    body = without_nulls(body)
    # XML unless JSON is asked for, as CloudStack answers (every client sends response=json).
    if params.get("response", "xml").lower() == "json":
        response: HttpResponse = JsonResponse({envelope: body}, status=status)
    else:
        response = HttpResponse(
            xml_document(envelope, body),
            status=status,
            content_type="text/xml; charset=UTF-8",
        )
    if status in errors.REASONS:  # HTTP's own phrase for 431 would say "header fields"
        response.reason_phrase = errors.REASONS[status]
    return response
