"""CloudStack's error shape: the HTTP status is the `errorcode`; `cserrorcode` names the
exception class CloudStack would have thrown (its CSExceptionErrorCode)."""

from templates_app.errors import StencilError

PARAM_ERROR = 431
AUTH_ERROR = 401
UNKNOWN_COMMAND = 432
INTERNAL_ERROR = 530
INSUFFICIENT_CAPACITY = 533
RESOURCE_ALLOCATION = 535

# CloudStack's CSExceptionErrorCode of the exception behind each answer.
SERVER_API_EXCEPTION = 9999
INVALID_PARAMETER_VALUE_EXCEPTION = 4350
CLOUD_RUNTIME_EXCEPTION = 4250
INSUFFICIENT_CAPACITY_EXCEPTION = 4010
RESOURCE_ALLOCATION_EXCEPTION = 4370

REASONS = {
    PARAM_ERROR: "Invalid Parameter",
    UNKNOWN_COMMAND: "Unsupported Command",
    INTERNAL_ERROR: "Internal Error",
    INSUFFICIENT_CAPACITY: "Insufficient Capacity",
    RESOURCE_ALLOCATION: "Resource Allocation Error",
}

AUTH_TEXT = "unable to verify user credentials and/or request signature"


class CloudStackError(Exception):
    """An answer other than 200, in CloudStack's shape."""

    def __init__(self, text: str, *, code: int = PARAM_ERROR, cs_code: int = SERVER_API_EXCEPTION):
        super().__init__(text)
        self.text, self.code, self.cs_code = text, code, cs_code

    def body(self) -> dict:
        return {
            "uuidList": [],
            "errorcode": self.code,
            "cserrorcode": self.cs_code,
            "errortext": self.text,
        }


def auth_failed() -> CloudStackError:
    """Every credential or signature problem gets the same answer: nothing to probe with."""
    return CloudStackError(AUTH_TEXT, code=AUTH_ERROR)


def missing_parameter(command: str, name: str) -> CloudStackError:
    return CloudStackError(
        f"Unable to execute API command {command.lower()} due to missing parameter {name}"
    )


def invalid_parameter(command: str, name: str, value: str, rule: str = "") -> CloudStackError:
    """A malformed value, and an id that does not exist or that the caller may not see: the
    same text, so another account's id cannot be told from a wrong one. It is CloudStack's own
    text (ParamProcessWorker's, cserrorcode 9999): clients match it to tell "gone" from a
    failure (Terraform's provider and cloudstack-go look for "incorrect long value format, or
    entity does not exist")."""
    why = rule or (
        "incorrect long value format, or entity does not exist or due to incorrect parameter "
        "annotation for the field in api cmd class"
    )
    return CloudStackError(
        f"Unable to execute API command {command.lower()} due to invalid value. "
        f"Invalid parameter {name} value={value} due to {why}."
    )


# Stencil's error codes (templates_app.errors and the layers above) -> CloudStack's.
STENCIL_CODES = {
    "limit_exceeded": (RESOURCE_ALLOCATION, RESOURCE_ALLOCATION_EXCEPTION),
    "no_host": (INSUFFICIENT_CAPACITY, INSUFFICIENT_CAPACITY_EXCEPTION),
}


def from_stencil_error(exc: StencilError, *, fields: dict[str, str]) -> CloudStackError:
    """A service's refusal, naming the CloudStack parameter (`fields`: Stencil field name ->
    parameter name) and the rule."""
    code, cs_code = STENCIL_CODES.get(exc.code, (PARAM_ERROR, INVALID_PARAMETER_VALUE_EXCEPTION))
    text = exc.message
    if exc.field:
        text = f"{fields.get(exc.field, exc.field)}: {text}"
    return CloudStackError(text, code=code, cs_code=cs_code)
