"""The OpenAPI schema class: every operation documents the error answers it can give.

drf-spectacular documents only the success answer of each view; the error answers come from the
permission classes, the exception handler (templates_app/api/errors.py) and DRF itself, the same
way for every view, so they are added here in one place instead of on each view:
401 (no or bad token), 403 (not allowed, or no account), 404 (an unknown id, or a page past the
end of a listing), 400 (a body or query that breaks a rule, naming the field) and 409 (a write
that the object's state refuses, or a delete of something still in use).
"""

from drf_spectacular.openapi import AutoSchema
from drf_spectacular.plumbing import ResolvedComponent

ERROR_COMPONENT = "Error"
ERROR_SCHEMA = {
    "type": "object",
    "description": (
        "`detail` (and `code`) for an error about the whole request; otherwise one key per "
        "field that breaks a rule, with its messages."
    ),
    "properties": {
        "detail": {"type": "string"},
        "code": {"type": "string"},
    },
    "additionalProperties": True,
}
ERROR_DESCRIPTIONS = {
    "400": "Bad input: the field and the rule it breaks.",
    "401": "No credentials, or an unknown token.",
    "403": "Not allowed for this user.",
    "404": "Unknown id (or a page past the end).",
    "409": "The object's state refuses this, or it is still in use.",
}
WRITE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}


class StencilAutoSchema(AutoSchema):
    def get_operation(self, *args, **kwargs):
        operation = super().get_operation(*args, **kwargs)
        if operation is None:
            return None
        component = ResolvedComponent(
            name=ERROR_COMPONENT,
            type=ResolvedComponent.SCHEMA,
            object=ERROR_COMPONENT,
            schema=ERROR_SCHEMA,
        )
        self.registry.register_on_missing(component)
        responses = operation["responses"]
        for code in self._error_codes(operation):
            responses.setdefault(
                code,
                {
                    "content": {"application/json": {"schema": component.ref}},
                    "description": ERROR_DESCRIPTIONS[code],
                },
            )
        return operation

    def _error_codes(self, operation: dict) -> list[str]:
        parameters = operation.get("parameters", [])
        in_path = any(p["in"] == "path" for p in parameters)
        in_query = any(p["in"] == "query" for p in parameters)
        codes = ["401", "403"]
        if "requestBody" in operation or in_query or self.method in WRITE_METHODS:
            codes.append("400")
        if in_path or in_query:
            codes.append("404")
        if self.method in WRITE_METHODS:
            codes.append("409")
        return sorted(codes)
