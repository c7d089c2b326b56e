"""Querysets compiled once and then run as SQL, for the template listing's hot path.

Building and compiling the listing's queryset (the visibility rule four times, a subquery per
reference kind, the capped count) cost more CPU than PostgreSQL spends running it, on every
request. Its SQL is a pure function of what decides it (the caller, the filters, the page's
shape), so it is compiled once per such key and kept per process; what changes from request
to request (a cursor's position, the page's LIMIT and OFFSET) is bound when it runs.

Rows come back as dicts, converted by the backend's converters exactly as `values()` would
convert them (SQLite's text UUIDs and integer booleans included): no model per row.
"""

import functools
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import connection
from django.db.models import Expression, Field, QuerySet

STATEMENT_CACHE_SIZE = 256


class Variable(Expression):
    """A value bound when a compiled statement runs: `%s` in its SQL, this marker in its
    params. A queryset holding one is only run through `CompiledStatement.fetch`."""

    def __init__(self, name: str, output_field: Field):
        super().__init__(output_field=output_field)
        self.name = name

    def as_sql(self, compiler, connection):
        return "%s", [self]

    def bind(self, value: Any) -> Any:
        """The value as the ORM would send it for this field (SQLite: datetimes as text)."""
        return self.output_field.get_db_prep_value(value, connection, prepared=False)


@dataclass(frozen=True)
class CompiledStatement:
    """A values() queryset's SELECT, without LIMIT and OFFSET (added when it runs)."""

    sql: str
    params: tuple
    names: tuple[str, ...]
    columns: tuple  # each column's expression, for the backend's converters

    def fetch(self, *, limit: int, offset: int = 0, **values: Any) -> list[dict[str, Any]]:
        params = [
            param.bind(values[param.name]) if isinstance(param, Variable) else param
            for param in self.params
        ]
        with _cursor() as cursor:
            cursor.execute(f"{self.sql} LIMIT %s OFFSET %s", [*params, limit, offset])
            rows = cursor.fetchall()
        converters = _converters(self.columns)
        names = self.names
        if not converters:
            return [dict(zip(names, row, strict=True)) for row in rows]
        converted = []
        for row in rows:
            values_ = list(row)
            for position, (functions, expression) in converters:
                value = values_[position]
                for function in functions:
                    value = function(value, expression, connection)
                values_[position] = value
            converted.append(dict(zip(names, values_, strict=True)))
        return converted


def _cursor():
    """A cursor of the default connection; on PostgreSQL with STENCIL_PREPARED_STATEMENTS,
    one whose statements the server prepares once per connection, with a generic plan
    (project/settings.py): planning the listing's statement cost PostgreSQL more than
    running it. Django's other statements stay unprepared (client-side binding)."""
    if connection.vendor != "postgresql" or not settings.STENCIL_PREPARED_STATEMENTS:
        return connection.cursor()
    # What connection.cursor() does, with Django's server-binding cursor class (the one of
    # OPTIONS server_side_binding) preparing its statements.
    connection.close_if_health_check_failed()
    connection.ensure_connection()
    with connection.wrap_database_errors:
        return connection._prepare_cursor(_prepared_cursor_class()(connection.connection))


@functools.cache
def _prepared_cursor_class():
    from django.db.backends.postgresql.base import ServerBindingCursor
    from psycopg.types.datetime import TimestamptzLoader

    class PreparedCursor(ServerBindingCursor):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            # psycopg's own loader (C, with psycopg[binary]) instead of Django's subclass in
            # Python, which parsed two timestamps a row: the same instants, in the session's
            # time zone (UTC, which Django sets on every connection).
            self.adapters.register_loader("timestamptz", TimestamptzLoader)

        def execute(self, query, params=None, **kwargs):
            result = super().execute(query, params, prepare=True)
            self._query = _LoggedQuery(self.connection, query, params)
            return result

    return PreparedCursor


class _LoggedQuery:
    """What Django's query log reads of a cursor's last statement (`cursor._query.query`,
    DatabaseOperations.last_executed_query): psycopg keeps nothing there for a server-binding
    cursor, so connection.queries and the debug tools showed None for the listing. The SQL
    with its parameters is composed only when read."""

    def __init__(self, connection, sql: str, params):
        self._connection, self._sql, self._params = connection, sql, params

    @functools.cached_property
    def query(self) -> bytes:
        import psycopg

        return psycopg.ClientCursor(self._connection).mogrify(self._sql, self._params).encode()


def compile_values(queryset: QuerySet) -> CompiledStatement:
    """Compile an unsliced values() queryset (the names as values() would give them)."""
    query = queryset.query
    if query.low_mark or query.high_mark is not None:
        raise ValueError("compile_values takes an unsliced queryset (LIMIT is bound later)")
    compiler = query.get_compiler(using=queryset.db)
    sql, params = compiler.as_sql()
    if query.selected:
        names = tuple(query.selected)
    else:
        names = (*query.extra_select, *query.values_select, *query.annotation_select)
    columns = tuple(column for column, _sql, _alias in compiler.select[: compiler.col_count])
    if len(names) != len(columns):
        raise ValueError(f"{len(names)} names for {len(columns)} columns")
    return CompiledStatement(sql=sql, params=tuple(params), names=names, columns=columns)


def _converters(columns: tuple) -> list[tuple[int, tuple[list, Any]]]:
    """SQLCompiler.get_converters for this connection (converters take it as an argument)."""
    found = []
    for position, column in enumerate(columns):
        functions = connection.ops.get_db_converters(column) + column.get_db_converters(connection)
        if functions:
            found.append((position, (functions, column)))
    return found


class StatementCache:
    """Compiled statements per key, least recently used dropped beyond `size`. A key must
    hold everything the SQL depends on; the statement of a key never goes stale."""

    def __init__(self, size: int = STATEMENT_CACHE_SIZE):
        self.size = size
        self._statements: OrderedDict[Hashable, CompiledStatement] = OrderedDict()
        self._lock = threading.Lock()

    def get_or_compile(self, key: Hashable, build: Callable[[], QuerySet]) -> CompiledStatement:
        with self._lock:
            statement = self._statements.get(key)
            if statement is not None:
                self._statements.move_to_end(key)
                return statement
        statement = compile_values(build())  # outside the lock: building may raise a 400
        with self._lock:
            self._statements[key] = statement
            while len(self._statements) > self.size:
                self._statements.popitem(last=False)
        return statement

    def clear(self) -> None:
        with self._lock:
            self._statements.clear()

    def __len__(self) -> int:
        return len(self._statements)
