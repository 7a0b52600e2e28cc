"""The HTTP transport under the provider SDKs' clients: httpx2's transport interface on the standard
library's http.client.

Both SDKs send every call through an httpx2 client. Its default transport (httpcore2 over h11)
spends more CPU per call than the call's own work on a gateway that waits on a local model, and at
concurrency 1 the gateway's latency is mostly its CPU (bench/bench_gateway_compare.py). Everything
above the transport stays the SDKs' and httpx2's own: building requests, auth, timeouts, errors and
streaming.

HTTP/1.1 only, one request per connection at a time, idle connections kept per origin for
KEEPALIVE_EXPIRY_SECONDS (httpx2's default) and dropped sooner when the server has closed them.
Timeouts come from the request, as httpx2 sets them: `connect` for the TCP and TLS handshake,
`write` for sending, `read` for each wait for bytes. Those bound each wait, not the whole exchange: a
server dripping a byte at a time would never trip them. So a caller may also set a deadline for
everything it sends and reads in a block (`deadline`): each wait is cut short to what is left of it,
and a wait past it fails as that phase's timeout. Failures surface as httpx2's exceptions, which
the SDKs turn into their connection and timeout errors. Proxies are not handled here: httpx2 reads
them from the environment only for its own transport, so chat/providers.py uses that one when the
environment names a proxy (and only per-wait timeouts hold there).
"""

from __future__ import annotations

import contextlib
import http.client
import io
import socket
import ssl
import threading
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import httpx2

from tenants.sockets import readable_now

Origin = tuple[str, str, int]

READ_CHUNK_BYTES = 64 * 1024
KEEPALIVE_EXPIRY_SECONDS = 5.0  # a NAT or load balancer may forget an idle flow without a word


def _timeouts(request: httpx2.Request) -> tuple[float | None, float | None, float | None]:
    timeout: dict[str, float | None] = request.extensions.get("timeout", {})
    return timeout.get("connect"), timeout.get("write"), timeout.get("read")


_deadlines = threading.local()


@contextlib.contextmanager
def deadline(at: float) -> Iterator[None]:
    """Every wait of this thread's requests in the block (connecting, sending, reading) ends by `at`
    (time.monotonic()) at the latest, and one that would go past it fails as that phase's timeout.
    Within an outer block the earlier deadline holds. The block must not span a `yield`: the
    deadline belongs to the thread, and would hold for whatever else it ran in between."""
    outer: float | None = getattr(_deadlines, "at", None)
    _deadlines.at = at if outer is None else min(at, outer)
    try:
        yield
    finally:
        _deadlines.at = outer


def _bounded(timeout: float | None, expired: type[httpx2.TimeoutException], phase: str) -> float | None:
    """`timeout` for the next wait, cut to what is left of the thread's deadline; raises `expired`
    if nothing is."""
    at: float | None = getattr(_deadlines, "at", None)
    if at is None:
        return timeout
    left = at - time.monotonic()
    if left <= 0:
        raise expired(f"the deadline passed {phase}")
    return left if timeout is None else min(timeout, left)


def _is_dropped(connection: http.client.HTTPConnection) -> bool:
    """An idle connection that is readable has been closed by the server (or sent something it
    should not have): either way it cannot carry another request."""
    sock = connection.sock
    if sock is None:
        return True
    try:
        return readable_now(sock)
    except (OSError, ValueError):  # already closed
        return True


class _DeadlineReader(io.RawIOBase):
    """The socket under a response, each wait for bytes bounded by the read timeout in force when
    the response began and cut to the thread's deadline: http.client reads the headers and a chunked
    body's framing a line at a time, so one of its calls can wait many times."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.raw = sock.makefile("rb", buffering=0)
        self.wait_seconds = sock.gettimeout()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int | None:
        self.sock.settimeout(_bounded(self.wait_seconds, httpx2.ReadTimeout, "while reading the response"))
        return self.raw.readinto(buffer)

    def close(self) -> None:
        if not self.closed:
            self.raw.close()
        super().close()


class _FinalResponse(http.client.HTTPResponse):
    """Read through a _DeadlineReader. http.client skips a `100 Continue` before the response; this
    skips every interim (1xx) response, as httpcore2 does. Otherwise a `103 Early Hints` would pass
    for the answer and the real one would be read by the next request on the connection."""

    def __init__(self, sock: socket.socket, *args: Any, **kwargs: Any) -> None:
        super().__init__(sock, *args, **kwargs)
        self.fp.close()  # the plain file http.client made
        self.fp = io.BufferedReader(_DeadlineReader(sock))

    def _read_status(self) -> tuple[str, int, str]:
        while True:
            version, status, reason = super()._read_status()  # type: ignore[misc]
            if not 100 < status < 200:
                return version, status, reason
            http.client._read_headers(self.fp)  # type: ignore[attr-defined]  # the interim's headers


def _keep_alive_probes(sock: socket.socket) -> None:
    """TCP keep-alive probes after a minute of silence, as the anthropic SDK sets on its own
    transport: a long stream whose peer vanished is noticed instead of waited on."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for option, value in (("TCP_KEEPIDLE", 60), ("TCP_KEEPINTVL", 60), ("TCP_KEEPCNT", 5)):
        if hasattr(socket, option):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)


class _ResponseStream(httpx2.SyncByteStream):
    def __init__(
        self,
        transport: StdlibTransport,
        origin: Origin,
        connection: http.client.HTTPConnection,
        response: http.client.HTTPResponse,
    ) -> None:
        self.transport, self.origin = transport, origin
        self.connection, self.response = connection, response
        self.failed = False
        self.closed = False

    def __iter__(self) -> Iterator[bytes]:
        # Each wait is cut to the deadline of the block the caller reads in (_DeadlineReader): a
        # stream's body is read after the block of its request has ended.
        try:
            while chunk := self.response.read1(READ_CHUNK_BYTES):
                yield chunk
            if self.response.length:  # http.client ends a Content-Length body at EOF without a word
                raise http.client.IncompleteRead(b"", self.response.length)
        except BaseException as exc:
            self.failed = True
            if isinstance(exc, TimeoutError):
                raise httpx2.ReadTimeout(str(exc) or "timed out reading the response") from exc
            if isinstance(exc, http.client.IncompleteRead):
                raise httpx2.RemoteProtocolError("the server closed the connection mid-response") from exc
            if isinstance(exc, (OSError, http.client.HTTPException)):
                raise httpx2.ReadError(str(exc) or type(exc).__name__) from exc
            raise

    def close(self) -> None:
        if self.closed:  # the connection must go back once, or two requests would share it
            return
        self.closed = True
        # Read to its end without a failure and not marked for closing: the connection can carry the
        # next request. (http.client drops its file at the end of a chunked body; a Content-Length
        # body is at its end when none of it is left.)
        finished = self.response.isclosed() or self.response.length == 0
        reusable = not self.failed and finished and not self.response.will_close
        self.response.close()
        self.transport.release(self.origin, self.connection, reusable=reusable)


class StdlibTransport(httpx2.BaseTransport):
    def __init__(self, *, max_idle_per_origin: int = 32, ssl_context: ssl.SSLContext | None = None) -> None:
        self.max_idle_per_origin = max_idle_per_origin
        self.ssl_context = ssl_context or httpx2.create_ssl_context()
        self.ssl_context.set_alpn_protocols(["http/1.1"])  # as httpcore2 offers without HTTP/2
        self._idle: dict[Origin, list[tuple[float, http.client.HTTPConnection]]] = {}  # oldest first
        self._lock = threading.Lock()
        self._closed = False

    def _checkout(self, origin: Origin) -> http.client.HTTPConnection | None:
        """The most recently used idle connection to `origin` that has neither expired nor been
        closed by the server, or None. Expired ones are closed on the way."""
        expired_before = time.monotonic() - KEEPALIVE_EXPIRY_SECONDS
        with self._lock:
            idle = self._idle.get(origin, [])
            expired = [connection for idle_since, connection in idle if idle_since < expired_before]
            del idle[: len(expired)]
        for connection in expired:
            connection.close()
        while True:
            with self._lock:
                found = idle.pop()[1] if idle else None
            if found is None or not _is_dropped(found):
                return found
            found.close()

    def _connect(self, origin: Origin, timeout: float | None) -> http.client.HTTPConnection:
        scheme, host, port = origin
        connection: http.client.HTTPConnection
        if scheme == "https":
            connection = http.client.HTTPSConnection(host, port, timeout=timeout, context=self.ssl_context)
        elif scheme == "http":
            connection = http.client.HTTPConnection(host, port, timeout=timeout)
        else:
            raise httpx2.UnsupportedProtocol(f"Request URL has an unsupported protocol '{scheme}://'.")
        connection.response_class = _FinalResponse
        try:
            connection.connect()  # TCP_NODELAY included
            _keep_alive_probes(connection.sock)
        except TimeoutError as exc:
            connection.close()
            raise httpx2.ConnectTimeout(str(exc) or "timed out connecting") from exc
        except OSError as exc:
            connection.close()
            raise httpx2.ConnectError(str(exc) or type(exc).__name__) from exc
        return connection

    def release(self, origin: Origin, connection: http.client.HTTPConnection, *, reusable: bool) -> None:
        if reusable:
            with self._lock:
                idle = self._idle.setdefault(origin, [])
                if not self._closed and len(idle) < self.max_idle_per_origin:
                    idle.append((time.monotonic(), connection))
                    return
        connection.close()

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        url = request.url
        origin: Origin = (url.scheme, url.host, url.port or (443 if url.scheme == "https" else 80))
        connect_timeout, write_timeout, read_timeout = _timeouts(request)
        connection = self._checkout(origin) or self._connect(
            origin, _bounded(connect_timeout, httpx2.ConnectTimeout, "before connecting")
        )
        try:
            response = self._exchange(connection, request, write_timeout, read_timeout)
        except BaseException:
            connection.close()
            raise
        headers = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in response.getheaders()]
        return httpx2.Response(
            response.status,
            headers=headers,
            stream=_ResponseStream(self, origin, connection, response),
            extensions={
                "http_version": b"HTTP/1.0" if response.version == 10 else b"HTTP/1.1",
                "reason_phrase": response.reason.encode("latin-1"),
            },
        )

    @staticmethod
    def _exchange(
        connection: http.client.HTTPConnection,
        request: httpx2.Request,
        write_timeout: float | None,
        read_timeout: float | None,
    ) -> http.client.HTTPResponse:
        sock: Any = connection.sock
        target = request.url.raw_path.decode("ascii")
        chunked = request.headers.get("Transfer-Encoding", "").lower() == "chunked"
        try:
            sock.settimeout(_bounded(write_timeout, httpx2.WriteTimeout, "before sending the request"))
            connection.putrequest(request.method, target, skip_host=True, skip_accept_encoding=True)
            for name, value in request.headers.raw:  # httpx2's own, Host and Content-Length included
                connection.putheader(name, value)
            body: Any = request.stream if chunked else request.read() or None
            connection.endheaders(body, encode_chunked=chunked)
        except TimeoutError as exc:
            raise httpx2.WriteTimeout(str(exc) or "timed out sending the request") from exc
        except OSError as exc:
            # A server may answer (413, 400) and close before taking the whole body: its answer,
            # when it can still be read, says more than the broken pipe (httpcore2 does the same).
            try:
                sock.settimeout(read_timeout)  # each wait of the response: _DeadlineReader
                early = connection.getresponse()
            except (OSError, http.client.HTTPException, httpx2.TimeoutException):
                raise httpx2.WriteError(str(exc) or type(exc).__name__) from exc
            early.will_close = True  # the body was cut short: the connection can carry nothing else
            return early
        except (http.client.HTTPException, ValueError) as exc:  # a header or target http.client refuses
            raise httpx2.LocalProtocolError(str(exc) or type(exc).__name__) from exc
        try:
            sock.settimeout(read_timeout)  # each wait of the response: _DeadlineReader
            return connection.getresponse()
        except TimeoutError as exc:
            raise httpx2.ReadTimeout(str(exc) or "timed out waiting for the response") from exc
        except http.client.RemoteDisconnected as exc:
            raise httpx2.RemoteProtocolError("Server disconnected without sending a response.") from exc
        except (OSError, http.client.HTTPException) as exc:
            raise httpx2.ReadError(str(exc) or type(exc).__name__) from exc

    def close(self) -> None:
        with self._lock:
            self._closed = True
            connections = [connection for idle in self._idle.values() for _, connection in idle]
            self._idle.clear()
        for connection in connections:
            connection.close()


def sdk_http_client(default_client: type[httpx2.Client], transport: str) -> httpx2.Client | None:
    """The `http_client` for an SDK (`openai.DefaultHttpxClient`, `anthropic.DefaultHttpxClient`):
    the SDK's own client class on this transport for PROVIDER_HTTP_TRANSPORT=stdlib; None (the
    SDK's default client, untouched) for `httpx`, or when the environment names a proxy: httpx2
    reads proxies from the environment only for its own transport.

    Only the proxies httpx2 applies count (HTTP_PROXY, HTTPS_PROXY, ALL_PROXY): the standard library
    reads any variable ending in _PROXY as one, our own BEHIND_TLS_PROXY setting included."""
    proxies = urllib.request.getproxies()
    if transport != "stdlib" or any(proxies.get(scheme) for scheme in ("http", "https", "all")):
        return None
    return default_client(transport=StdlibTransport())
