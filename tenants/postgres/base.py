"""Django's PostgreSQL backend with two additions for the chat hot path.

A health check that needs no round trip when nothing is wrong. With CONN_HEALTH_CHECKS Django
checks a persistent connection before its first query in each request, and the stock check is a
SELECT 1: a round trip on every request (about 0.2 ms on the chat path, bench/bench_gateway.py). An
idle connection has nothing to read, while a server that restarted, failed over or terminated the
backend has sent its FATAL notice and closed the socket, which makes it readable. So a connection
psycopg knows as open and idle, whose socket has nothing to read, is taken as healthy without a
query; anything else gets the stock SELECT 1. What neither check sees is a peer that vanished
without closing (a network partition): the next query then fails and Django drops the connection
at the end of that request.

`prepared_cursor()`: a cursor that binds parameters on the server, so psycopg prepares a statement
it has run `prepare_threshold` (5, settings.py) times on the connection and PostgreSQL stops
planning it. For the few statements run on every chat request (budget reserve and settle, the trace
insert), whose planning cost about as much as their execution. Everything else keeps Django's
client-side binding, which psycopg never prepares. Integers are sent as int8 by the prepared
cursor: psycopg would otherwise pick int2, int4 or int8 by value, and every combination would be a
statement of its own to prepare.
"""

from __future__ import annotations

import psycopg
from django.db.backends.postgresql import base
from django.db.backends.utils import CursorWrapper
from psycopg import pq
from psycopg.types.numeric import Int8Dumper

from tenants.sockets import readable_now


class DatabaseWrapper(base.DatabaseWrapper):
    health_check_enabled: bool  # set by Django's BaseDatabaseWrapper (django-stubs leaves both out)
    health_check_done: bool
    _bind_on_server = False

    def prepared_cursor(self) -> CursorWrapper:
        self._bind_on_server = True
        try:
            return self.cursor()
        finally:
            self._bind_on_server = False

    def create_cursor(self, name: str | None = None) -> psycopg.Cursor:
        if name is not None or not self._bind_on_server:
            return super().create_cursor(name)
        factory = self.connection.cursor_factory
        self.connection.cursor_factory = base.ServerBindingCursor
        try:
            cursor = super().create_cursor(name)
        finally:
            self.connection.cursor_factory = factory
        cursor.adapters.register_dumper(int, Int8Dumper)
        return cursor

    def close_if_health_check_failed(self) -> None:
        if self.health_check_enabled and not self.health_check_done and self._idle_and_quiet():
            self.health_check_done = True
            return
        super().close_if_health_check_failed()

    def _idle_and_quiet(self) -> bool:
        connection = self.connection
        if connection is None or self.pool:
            return False
        pgconn = connection.pgconn
        if pgconn.status != pq.ConnStatus.OK or pgconn.transaction_status != pq.TransactionStatus.IDLE:
            return False
        try:
            return not readable_now(pgconn.socket)
        except (OSError, ValueError):  # the socket is already closed
            return False
