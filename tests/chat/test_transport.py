"""chat/transport.py against raw HTTP/1.1 servers on 127.0.0.1: the wire cases the fake LLM servers
do not produce (gzip, chunked uploads, idle connections the server closes, bodies cut short)."""

from __future__ import annotations

import contextlib
import gzip
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import httpx2
import pytest

from chat import transport as transport_module
from chat.transport import StdlibTransport, sdk_http_client

Handler = Callable[[socket.socket], None]


@contextmanager
def raw_server(handle: Handler) -> Iterator[tuple[str, list[socket.socket]]]:
    """A TCP server calling `handle` with each accepted connection (in its own thread); yields the
    base URL and the list of connections accepted so far."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []

    def serve(conn: socket.socket) -> None:
        # A client going away, or refusing the TLS handshake, is part of the scenarios.
        with contextlib.suppress(OSError):
            handle(conn)

    def accept() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            accepted.append(conn)
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}", accepted
    finally:
        listener.close()
        for conn in accepted:
            conn.close()


def read_request(conn: socket.socket) -> tuple[bytes, bytes]:
    """(head, body) of one request, the body by Content-Length or chunked encoding."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return b"", b""
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    headers = {
        line.split(b":", 1)[0].strip().lower(): line.split(b":", 1)[1].strip()
        for line in head.split(b"\r\n")[1:]
    }
    if headers.get(b"transfer-encoding") == b"chunked":
        while not rest.endswith(b"0\r\n\r\n"):
            rest += conn.recv(65536)
        body, remaining = b"", rest
        while True:
            size_line, _, remaining = remaining.partition(b"\r\n")
            size = int(size_line, 16)
            if size == 0:
                return head, body
            body, remaining = body + remaining[:size], remaining[size + 2 :]
    length = int(headers.get(b"content-length", b"0"))
    while len(rest) < length:
        rest += conn.recv(65536)
    return head, rest


def respond(conn: socket.socket, body: bytes, *, headers: str = "", close: bool = False) -> None:
    conn.sendall(
        f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n{headers}".encode()
        + (b"Connection: close\r\n" if close else b"")
        + b"\r\n"
        + body
    )


def echo_forever(conn: socket.socket) -> None:
    """Answers every request on the connection with its body's length and its request line."""
    while True:
        head, body = read_request(conn)
        if not head:
            return
        respond(conn, b"%d %s" % (len(body), head.split(b"\r\n")[0]))


@pytest.fixture
def client() -> Iterator[httpx2.Client]:
    with httpx2.Client(transport=StdlibTransport(), timeout=httpx2.Timeout(2.0)) as client:
        yield client


def test_keeps_one_connection_alive_for_sequential_requests(client):
    with raw_server(echo_forever) as (url, accepted):
        for number in range(5):
            response = client.post(f"{url}/v1/things?n={number}", content=b"hello")
            assert response.status_code == 200
            assert response.content == f"5 POST /v1/things?n={number} HTTP/1.1".encode()
        assert len(accepted) == 1


def test_a_connection_the_server_closed_while_idle_is_replaced(client):
    closed = threading.Event()

    def answer_once(conn: socket.socket) -> None:
        read_request(conn)
        respond(conn, b"ok")
        conn.close()  # without saying so in the response: the client finds out while it is idle
        closed.set()

    with raw_server(answer_once) as (url, accepted):
        assert client.get(url).content == b"ok"
        assert closed.wait(2)
        time.sleep(0.05)  # the FIN crosses the loopback
        assert client.get(url).content == b"ok"
        assert len(accepted) == 2


def test_a_connection_idle_past_the_keepalive_expiry_is_not_reused(client, monkeypatch):
    """However open the server keeps it: a NAT or load balancer may have forgotten it silently."""
    now = [1000.0]
    monkeypatch.setattr(transport_module.time, "monotonic", lambda: now[0])
    with raw_server(echo_forever) as (url, accepted):
        client.get(url)
        now[0] += transport_module.KEEPALIVE_EXPIRY_SECONDS - 1
        client.get(url)
        assert len(accepted) == 1
        now[0] += transport_module.KEEPALIVE_EXPIRY_SECONDS + 1
        client.get(url)
        assert len(accepted) == 2


def test_a_connection_left_mid_response_is_never_reused(client):
    """The server keeps the socket open and, asked again on it, sends the rest of the first response
    and then a stale one: a transport that reused the connection would read those."""
    connections = []

    def partial_then_stale(conn: socket.socket) -> None:
        connections.append(conn)
        read_request(conn)
        if len(connections) > 1:
            respond(conn, b"fresh")
            return
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 30\r\n\r\nabc")
        if read_request(conn)[0]:
            conn.sendall(b"d" * 27 + b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nstale")

    with raw_server(partial_then_stale) as (url, accepted):
        with client.stream("GET", url) as response:
            assert next(response.iter_raw()) == b"abc"  # the caller stops reading here
        assert client.get(url).content == b"fresh"
        assert len(accepted) == 2


def test_interim_responses_are_skipped(client):
    """A 103 Early Hints (or 102) before the answer is not the answer, and does not shift the next
    request's answer by one."""

    def with_early_hints(conn: socket.socket) -> None:
        for number in range(2):
            read_request(conn)
            conn.sendall(b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n")
            respond(conn, b"answer %d" % number)

    with raw_server(with_early_hints) as (url, accepted):
        first, second = client.get(url), client.get(url)
        assert (first.status_code, first.content) == (200, b"answer 0")
        assert (second.status_code, second.content) == (200, b"answer 1")
        assert len(accepted) == 1


def test_a_response_marked_connection_close_is_not_reused(client):
    def answer_and_close(conn: socket.socket) -> None:
        read_request(conn)
        respond(conn, b"bye", close=True)
        conn.close()

    with raw_server(answer_and_close) as (url, accepted):
        assert client.get(url).content == b"bye"
        assert client.get(url).content == b"bye"
        assert len(accepted) == 2


def test_an_http_1_0_answer_says_so_and_its_connection_is_not_reused(client):
    def answer_in_1_0(conn: socket.socket) -> None:
        read_request(conn)
        conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nold")
        conn.close()

    with raw_server(answer_in_1_0) as (url, accepted):
        for _ in range(2):
            response = client.get(url)
            assert (response.http_version, response.content) == ("HTTP/1.0", b"old")
        assert len(accepted) == 2  # HTTP/1.0 without keep-alive: one request per connection


def test_a_streamed_upload_is_sent_chunked(client):
    def chunked_or_not(conn: socket.socket) -> None:
        while (request := read_request(conn))[0]:
            head, body = request
            answer = b"chunked" if b"transfer-encoding: chunked" in head.lower() else b"plain"
            respond(conn, b"%s %d" % (answer, len(body)))

    with raw_server(chunked_or_not) as (url, _):
        assert client.post(url, content=iter([b"abc", b"defg", b"h"])).content == b"chunked 8"
        assert client.post(url, content=b"abcdefgh").content == b"plain 8"


def test_a_gzipped_response_is_decoded(client):
    def gzipped(conn: socket.socket) -> None:
        read_request(conn)
        respond(conn, gzip.compress(b'{"answer": 42}'), headers="Content-Encoding: gzip\r\n")

    with raw_server(gzipped) as (url, _):
        assert client.get(url).json() == {"answer": 42}


def test_a_chunked_response_streams_as_it_arrives(client):
    gate = threading.Event()

    def two_chunks(conn: socket.socket) -> None:
        read_request(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n")
        gate.wait(2)
        conn.sendall(b"6\r\nsecond\r\n0\r\n\r\n")

    with raw_server(two_chunks) as (url, _), client.stream("GET", url) as response:
        chunks = response.iter_raw()
        assert next(chunks) == b"first"  # before the server sends the rest
        gate.set()
        assert b"".join(chunks) == b"second"


def test_a_body_cut_short_is_a_protocol_error_and_the_connection_is_not_reused(client):
    def cut(conn: socket.socket) -> None:
        read_request(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part")
        conn.close()

    with raw_server(cut) as (url, accepted):
        with pytest.raises(httpx2.RemoteProtocolError):
            client.get(url)
        with pytest.raises(httpx2.RemoteProtocolError):
            client.get(url)
        assert len(accepted) == 2


def test_a_server_that_closes_without_answering_is_a_protocol_error(client):
    def hang_up(conn: socket.socket) -> None:
        read_request(conn)
        conn.close()

    with raw_server(hang_up) as (url, _), pytest.raises(httpx2.RemoteProtocolError):
        client.get(url)


def test_an_answer_sent_before_the_whole_upload_is_read_is_returned(client):
    """A server refusing a large body answers and closes before reading it: the answer, not the
    broken pipe, is what the caller gets."""

    def refuse_early(conn: socket.socket) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            data += conn.recv(65536)
        conn.sendall(
            b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 8\r\nConnection: close\r\n\r\ntoo big!"
        )
        conn.shutdown(socket.SHUT_WR)
        for _ in range(3):
            conn.recv(65536)
        conn.close()

    with raw_server(refuse_early) as (url, _):
        response = client.post(url, content=b"x" * 20_000_000)
    assert (response.status_code, response.content) == (413, b"too big!")


def test_a_slow_server_is_a_read_timeout():
    def silent(conn: socket.socket) -> None:
        read_request(conn)
        time.sleep(1)

    transport = StdlibTransport()
    with (
        raw_server(silent) as (url, _),
        httpx2.Client(transport=transport, timeout=httpx2.Timeout(0.2)) as client,
        pytest.raises(httpx2.ReadTimeout),
    ):
        client.get(url)


TRICKLED = {  # (sent at once, then a byte every 50 ms): a response of 20 x's
    "body": (b"HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\n", b"x" * 20),
    "headers": (b"", b"HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\n" + b"x" * 20),
    "chunk framing": (  # a chunk extension (ignored by readers) makes the size line long
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"14;padding=" + b"p" * 30 + b"\r\n" + b"x" * 20 + b"\r\n0\r\n\r\n",
    ),
}


@pytest.mark.parametrize("trickled", TRICKLED)
def test_a_deadline_ends_a_trickling_response_that_no_read_timeout_would(trickled):
    """Each byte comes well within the read timeout, so without a deadline the response arrives
    whole; within one, the wait for the rest is cut at the deadline, whichever part trickles
    (http.client reads headers and chunk sizes a line at a time, each line many waits)."""
    at_once, slowly = TRICKLED[trickled]
    cut_after: list[int] = []  # bytes of `slowly` sent before the client dropped the connection

    def trickle(conn: socket.socket) -> None:
        while True:
            read_request(conn)
            conn.sendall(at_once)
            for sent, byte in enumerate(slowly):
                time.sleep(0.05)
                try:
                    conn.sendall(bytes([byte]))
                except OSError:
                    cut_after.append(sent)
                    raise

    transport = StdlibTransport()
    with (
        raw_server(trickle) as (url, accepted),
        httpx2.Client(transport=transport, timeout=httpx2.Timeout(0.5)) as client,
    ):
        assert client.get(url).content == b"x" * 20
        with transport_module.deadline(time.monotonic() + 0.3), pytest.raises(httpx2.ReadTimeout):
            client.get(url)
        assert client.get(url).content == b"x" * 20  # the deadline ended with its block
    assert len(accepted) == 2  # the connection cut mid-response was not reused
    assert len(cut_after) == 1
    assert cut_after[0] < len(slowly) // 2  # given up at the deadline, not once the part was through


def test_a_deadline_bounds_the_wait_for_the_response_and_an_inner_one_cannot_extend_it():
    def silent(conn: socket.socket) -> None:
        read_request(conn)
        time.sleep(2)

    with (
        raw_server(silent) as (url, _),
        httpx2.Client(transport=StdlibTransport(), timeout=httpx2.Timeout(5)) as client,
    ):
        with transport_module.deadline(time.monotonic() + 0.2), pytest.raises(httpx2.ReadTimeout):
            client.get(url)
        with (
            transport_module.deadline(time.monotonic() - 1),
            transport_module.deadline(time.monotonic() + 60),
            pytest.raises(httpx2.ConnectTimeout, match="deadline passed before connecting"),
        ):
            client.get(url)


def test_nothing_listening_is_a_connect_error(client):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: connections are refused
        with pytest.raises(httpx2.ConnectError):
            client.get(f"http://127.0.0.1:{port}/")


def test_an_unsupported_scheme_is_refused(client):
    with pytest.raises(httpx2.UnsupportedProtocol):
        StdlibTransport().handle_request(httpx2.Request("GET", "ftp://127.0.0.1/"))


@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1 (made by the openssl command, valid for a day)."""
    directory = tmp_path_factory.mktemp("tls")
    cert, key = str(directory / "cert.pem"), str(directory / "key.pem")
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            key,
            "-out",
            cert,
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def test_https_verifies_the_server_and_keeps_the_connection(certificate):
    cert, key = certificate
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(cert, key)

    def tls_echo(conn: socket.socket) -> None:
        with server_context.wrap_socket(conn, server_side=True) as tls:
            echo_forever(tls)

    with raw_server(tls_echo) as (url, accepted):
        https_url = url.replace("http://", "https://")
        trusting = StdlibTransport(ssl_context=ssl.create_default_context(cafile=cert))
        with httpx2.Client(transport=trusting, timeout=httpx2.Timeout(2.0)) as client:
            assert client.post(https_url, content=b"secret").content.startswith(b"6 POST")
            assert client.post(https_url, content=b"again").content.startswith(b"5 POST")
        assert len(accepted) == 1
        with (
            httpx2.Client(transport=StdlibTransport(), timeout=httpx2.Timeout(2.0)) as client,
            pytest.raises(httpx2.ConnectError, match="CERTIFICATE_VERIFY_FAILED"),
        ):
            client.get(https_url)  # the default trust store does not know a self-signed certificate


def test_a_proxy_in_the_environment_leaves_the_sdks_their_own_transport(monkeypatch):
    """httpx2 applies proxies from the environment only to its own transport."""
    import openai

    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("BEHIND_TLS_PROXY", "1")  # a setting of ours, not a proxy httpx2 would apply
    client = sdk_http_client(openai.DefaultHttpxClient, "stdlib")
    assert isinstance(client._transport, StdlibTransport)
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    assert sdk_http_client(openai.DefaultHttpxClient, "stdlib") is None
    assert sdk_http_client(openai.DefaultHttpxClient, "httpx") is None
