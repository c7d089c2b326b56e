"""The upload endpoint: a plain Django view so the body streams to disk, never into memory.

Authentication is the signed metadata (headers X-Signature, X-Metadata, X-Expires), not a
user session, so it is exempt from CSRF.
"""

import logging

from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from templates_app.errors import StencilError
from templates_app.uploads import template_upload_receive

logger = logging.getLogger(__name__)


@csrf_exempt
@require_POST
def upload_template_bytes(request: HttpRequest, template_id: str) -> JsonResponse:
    """POST the image as the raw request body to the post_url from upload-params."""
    try:
        ref = template_upload_receive(
            template_uuid=str(template_id),
            post_url=request.build_absolute_uri(request.path),
            metadata=request.headers.get("X-Metadata", ""),
            expires=request.headers.get("X-Expires", ""),
            signature=request.headers.get("X-Signature", ""),
            body=request,
        )
    except StencilError as exc:
        # Never log the signature; the message names the rule only.
        logger.info("upload for %s refused: %s", template_id, exc.message)
        return JsonResponse(exc.as_payload(), status=exc.status_code)
    return JsonResponse(
        {
            "id": str(ref.template.uuid),
            "download_state": ref.download_state,
            "state": ref.state,
            "size": ref.size,
            "physical_size": ref.physical_size,
            "sha256": ref.sha256,
        },
        status=201,
    )
