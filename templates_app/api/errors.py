"""One place that turns domain errors into HTTP answers: 400 naming the field, 409 for state."""

from django.core.exceptions import ObjectDoesNotExist
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db.models import ProtectedError, RestrictedError
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.defaults import page_not_found
from rest_framework import status
from rest_framework.response import Response
from rest_framework.views import exception_handler

from templates_app.errors import InUse, StencilError


def stencil_exception_handler(exc, context):
    if isinstance(exc, StencilError):
        return Response(exc.as_payload(), status=exc.status_code)
    if isinstance(exc, ProtectedError | RestrictedError):
        # A delete that no service checked first: still a 409 naming the holders, never a 500.
        held_by = getattr(exc, "protected_objects", None) or exc.restricted_objects
        obj = next(iter(held_by))
        return Response(InUse(obj, list(held_by)).as_payload(), status=status.HTTP_409_CONFLICT)
    if isinstance(exc, DjangoValidationError):
        payload = exc.message_dict if hasattr(exc, "error_dict") else {"detail": exc.messages}
        return Response(payload, status=status.HTTP_400_BAD_REQUEST)
    if isinstance(exc, ObjectDoesNotExist):
        return Response({"detail": "Not found."}, status=status.HTTP_404_NOT_FOUND)
    response = exception_handler(exc, context)
    if response is not None and isinstance(response.data, list):
        # A ValidationError not about one field (e.g. a NUL in ?search=): still an object.
        response.data = {"detail": " ".join(str(m) for m in response.data), "code": "invalid"}
    return response


def not_found(request: HttpRequest, exception: Exception) -> HttpResponse:
    """project.urls.handler404: a URL that no route matches (e.g. `/api/v1/events/1.5/`)
    answers JSON under /api/, as every API error does; the admin keeps its HTML page."""
    if request.path.startswith("/api/"):
        return JsonResponse({"detail": "Not found.", "code": "not_found"}, status=404)
    return page_not_found(request, exception)
