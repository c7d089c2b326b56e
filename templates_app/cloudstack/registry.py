"""The command registry: each layer registers the commands it serves (name, parameters with
types, handler). The transport parses and checks the parameters before calling a handler, and
`listApis` describes the registry, so cloudmonkey-style clients can sync."""

import re
import uuid as uuid_lib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from django.contrib.auth.models import AbstractBaseUser

from templates_app.selectors import account_of

from .errors import invalid_parameter, missing_parameter

TRUE_WORDS, FALSE_WORDS = ("true", "1", "yes"), ("false", "0", "no")
MAP_KEY = re.compile(r"^(?P<name>[a-z]+)\[(?P<index>\d+)\]\.(?P<key>.+)$")


@dataclass(frozen=True)
class Param:
    """One parameter: `type` is CloudStack's (uuid, string, boolean, integer, long, list, map)."""

    name: str
    type: str = "string"
    required: bool = False
    description: str = ""
    length: int = 255


@dataclass
class Call:
    """One API call as a handler sees it: who asks, and the command's name."""

    user: AbstractBaseUser
    command: str
    base_url: str = ""
    _account: Any = None

    @property
    def account(self):
        """The account the caller acts for (NoAccount: a 431 naming the rule)."""
        if self._account is None:
            self._account = account_of(self.user)
        return self._account

    def invalid(self, name: str, value: Any, rule: str = ""):
        """The error of a malformed value or an id the caller may not see."""
        return invalid_parameter(self.command, name, str(value), rule)


# A handler gets the Call and the parsed parameters by name; it answers the response's inner
# object, or (async commands) an AsyncStart the transport turns into a job.
Handler = Callable[..., Any]


@dataclass(frozen=True)
class Command:
    name: str
    handler: Handler
    params: tuple[Param, ...] = ()
    description: str = ""
    is_async: bool = False
    entity: str = ""
    # For administrators only (CloudStack's root admin APIs): others are told it does not exist.
    staff_only: bool = False
    # Stencil field name -> CloudStack parameter name, for the text of a service's refusal.
    fields: dict[str, str] = field(default_factory=dict)


_COMMANDS: dict[str, Command] = {}
LIST_PARAMS = (
    Param("keyword", description="List by keyword"),
    Param("page", "integer", description="Page number (1 first)"),
    Param("pagesize", "integer", description="Rows per page"),
)


def register(command: Command) -> None:
    """Called from an AppConfig.ready(); registering a name twice is a programming error."""
    key = command.name.lower()
    if key in _COMMANDS and _COMMANDS[key].handler is not command.handler:
        raise RuntimeError(f"CloudStack command {command.name} registered twice")
    _COMMANDS[key] = command


def command_for(name: str, user: AbstractBaseUser) -> Command | None:
    """The command `name` as `user` may call it; a staff-only one is unknown to others."""
    command = _COMMANDS.get(name.lower())
    if command is None or (command.staff_only and not user.is_staff):
        return None
    return command


def all_commands(user: AbstractBaseUser) -> list[Command]:
    """The commands `user` may call, by name."""
    visible = (command_for(command.name, user) for command in _COMMANDS.values())
    return sorted((c for c in visible if c is not None), key=lambda command: command.name)


def _parse_value(command: str, param: Param, raw: str) -> Any:
    value = raw.strip()
    if param.type == "boolean":
        if value.lower() in TRUE_WORDS:
            return True
        if value.lower() in FALSE_WORDS:
            return False
        raise invalid_parameter(command, param.name, raw, "it not being true or false")
    if param.type in ("integer", "long"):
        try:
            return int(value)
        except ValueError:
            raise invalid_parameter(
                command, param.name, raw, "incorrect long value format"
            ) from None
    if param.type == "uuid":
        return _uuid(command, param.name, value)
    if param.type == "list":
        return [item.strip() for item in value.split(",") if item.strip()]
    if len(raw) > param.length:
        raise invalid_parameter(
            command, param.name, raw[:40] + "...", f"it being longer than {param.length} characters"
        )
    return raw


def _uuid(command: str, name: str, value: str) -> uuid_lib.UUID:
    try:
        return uuid_lib.UUID(value)
    except ValueError:
        raise invalid_parameter(command, name, value) from None


def _map_values(name: str, params: dict[str, str]) -> list[dict[str, str]]:
    """`details[0].key=K&details[0].value=V` -> [{"key": "K", "value": "V"}] (by index)."""
    groups: dict[int, dict[str, str]] = {}
    for key, value in params.items():
        match = MAP_KEY.match(key)
        if match and match["name"] == name:
            groups.setdefault(int(match["index"]), {})[match["key"]] = value
    return [groups[index] for index in sorted(groups)]


def parse_params(command: Command, params: dict[str, str]) -> dict[str, Any]:
    """The declared parameters of `command` from `params` (lower-cased keys), typed; a missing
    required one or a malformed value is a 431 naming it. Undeclared parameters are ignored,
    as CloudStack ignores them."""
    parsed: dict[str, Any] = {}
    for param in command.params:
        key = param.name.lower()
        if param.type == "map":
            groups = _map_values(key, params)
            if groups:
                parsed[param.name] = groups
            elif param.required:
                raise missing_parameter(command.name, param.name)
            continue
        raw = params.get(key)
        if raw is None or (raw.strip() == "" and param.type != "string"):
            if param.required:
                raise missing_parameter(command.name, param.name)
            continue
        parsed[param.name] = _parse_value(command.name, param, raw)
        if param.type == "list" and param.name.endswith("ids"):
            parsed[param.name] = [
                value if value == "-1" else _uuid(command.name, param.name, value)
                for value in parsed[param.name]
            ]
    return parsed
