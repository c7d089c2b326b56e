"""Domain errors. The API's exception handler maps them to HTTP statuses in one place."""


class StencilError(Exception):
    """Base of every error a service raises on purpose."""

    status_code = 400
    code = "error"

    def __init__(self, message: str, *, field: str | None = None):
        super().__init__(message)
        self.message = message
        self.field = field

    def as_payload(self) -> dict:
        if self.field:
            return {self.field: [self.message], "code": self.code}
        return {"detail": self.message, "code": self.code}


class InvalidInput(StencilError):
    """Input that breaks a rule; names the field."""

    code = "invalid"


class LimitExceeded(StencilError):
    """An account limit would be exceeded; the field is the limit's name."""

    code = "limit_exceeded"


class TransitionConflict(StencilError):
    """The object's state does not allow the requested action."""

    status_code = 409
    code = "conflict"

    def __init__(self, obj: object, action: str, *, reason: str = ""):
        state = getattr(obj, "state", "?")
        kind = type(obj).__name__
        message = f"cannot {action} {kind} '{obj}' in state {state}"
        if reason:
            message = f"{message}: {reason}"
        super().__init__(message)
        self.state = state


class TemplateNotUsable(TransitionConflict):
    """A new VM was asked for on a template that is not ACTIVE."""

    def __init__(self, template: object):
        super().__init__(
            template, "deploy a VM from", reason="only ACTIVE templates are deployable"
        )


class NoAccount(StencilError):
    """The user belongs to no account and is not staff."""

    status_code = 403
    code = "no_account"


class InUse(StencilError):
    """A delete of something that other rows still hold (a zone with an image store, an account
    with templates); 409 naming what holds it, nothing deleted."""

    status_code = 409
    code = "in_use"
    NAMED_LIMIT = 5

    def __init__(self, obj: object, holders: list[object]):
        kind = type(obj)._meta.verbose_name if hasattr(type(obj), "_meta") else type(obj).__name__
        named = ", ".join(_describe(holder) for holder in holders[: self.NAMED_LIMIT])
        more = len(holders) - self.NAMED_LIMIT
        if more > 0:
            named = f"{named} and {more} more"
        super().__init__(f"cannot delete {kind} '{obj}': still used by {named}")
        self.holders = holders


def _describe(holder: object) -> str:
    meta = getattr(type(holder), "_meta", None)
    kind = meta.verbose_name if meta else type(holder).__name__
    return f"{kind} '{holder}'"
