"""The staff-only JSON endpoint that static/stencil/progress.js polls: `?store=1,2&pool=3&vm=4`
answers the progress of those objects (templates_app.progress), one query per kind."""

from django.http import HttpRequest, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from .progress import progress_kinds, progress_of


def _ids(value: str) -> list[int]:
    return [int(part) for part in value.split(",") if part.strip().isdigit()]


@never_cache
@require_GET
def progress_view(request: HttpRequest) -> JsonResponse:
    """Progress is infrastructure (stores, pools, hosts): staff only, like the admin."""
    user = request.user
    if not (user.is_active and user.is_staff):
        return JsonResponse({"detail": "staff only"}, status=403)
    wanted = {kind: _ids(request.GET[kind]) for kind in progress_kinds() if kind in request.GET}
    answer = progress_of(wanted)
    return JsonResponse(
        {kind: {str(k): v for k, v in rows.items()} for kind, rows in answer.items()}
    )
