"""Fake OpenAI and Anthropic servers on 127.0.0.1: real HTTP, the providers' real JSON and SSE
formats, for the real SDKs to talk to. Each server plays a script of behaviours, one per request
(then "ok" forever), so a test says exactly which faults happen in which order:

    ok | hang | 429 | 500 | 529 | 400 | 401 | malformed | cut:N (stream N deltas, then drop) | no_usage
    | reset_after_done (a whole stream, then the connection dropped before the end of the message)
    | overloaded_event (a stream that starts, then reports the provider overloaded in an error event)
    | drip (the answer trickled out over `hang_seconds`, no gap long enough for a read timeout)
    | pings (a stream that keeps its connection busy for `hang_seconds` before the first token: SSE
      comments from OpenAI, `ping` events from Anthropic, as each sends them)
    | reasoning (OpenAI-compatible: `reasoning_content` deltas for `hang_seconds` before the answer,
      as DeepSeek's and vLLM's reasoning models stream their thinking)
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

DEFAULT_ANSWER = "Paris is the capital of France."


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that gives up on a hanging or cut response resets the connection: that is the
        scenario, not an error. (Printing its traceback would also parse source in this thread, which
        Debian's Python 3.11.2 can fail with SystemError when another thread parses at the same time.)"""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class FakeLLMServer:
    def __init__(self, kind: str) -> None:
        assert kind in ("openai", "anthropic")
        self.kind = kind
        self.script: deque[str] = deque()
        self.requests: list[dict[str, Any]] = []
        self.answer = DEFAULT_ANSWER
        # (uncached input, cached input, output), or a function of the request body giving them
        self.usage: tuple[int, int, int] | Callable[[dict[str, Any]], tuple[int, int, int]] = (25, 5, 8)
        self.hang_seconds = 3.0  # of `hang`, `drip` and `pings`
        self.trickle_pieces = 15  # `drip` and `pings` send that many pieces over hang_seconds
        self.token_interval_seconds = 0.0  # a stream's pause between deltas, as a model generating
        self.truncated = (
            False  # the answer ends at max_tokens (finish_reason length / stop_reason max_tokens)
        )
        self.connections = 0  # TCP connections accepted so far (a kept-alive one serves many requests)
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body are separate writes: no 40 ms delayed ACK

            def setup(self) -> None:
                server.connections += 1
                super().setup()

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                headers = {name.lower(): value for name, value in self.headers.items()}
                server.requests.append({"path": self.path, "body": body, "headers": headers})
                behaviour = server.script.popleft() if server.script else "ok"
                server.respond(self, behaviour, body)

            def log_message(self, *args: object) -> None:
                pass

        self.http = _QuietServer(("127.0.0.1", 0), Handler)
        self.port = self.http.server_port
        self.base_url = f"http://127.0.0.1:{self.port}" + ("/v1" if kind == "openai" else "")
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.http.shutdown()
        self.http.server_close()

    def usage_for(self, body: dict[str, Any]) -> tuple[int, int, int]:
        return self.usage(body) if callable(self.usage) else self.usage

    def then(self, *behaviours: str) -> FakeLLMServer:
        self.script.extend(behaviours)
        return self

    # --- responses ------------------------------------------------------------------------------

    def respond(self, handler: BaseHTTPRequestHandler, behaviour: str, body: dict[str, Any]) -> None:
        if behaviour == "hang":
            time.sleep(self.hang_seconds)
            behaviour = "ok"
        if behaviour in ("429", "500", "529", "400", "401"):
            return self._error(handler, int(behaviour))
        if behaviour == "malformed":
            return self._raw(handler, 200, b'{"id": "x", "choices": [', "application/json")
        if handler.path.endswith("/embeddings"):
            payload = json.dumps(self._embeddings(body)).encode()
        elif body.get("stream"):
            return self._stream(handler, behaviour, body)
        else:
            payload = json.dumps(self._message(body)).encode()
        if behaviour == "drip":
            return self._drip(handler, payload)
        return self._raw(handler, 200, payload, "application/json")

    def _pause(self) -> None:
        time.sleep(self.hang_seconds / self.trickle_pieces)

    def _drip(self, handler: BaseHTTPRequestHandler, payload: bytes) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(payload)))
        handler.end_headers()
        handler.wfile.flush()
        size = -(-len(payload) // self.trickle_pieces)
        for start in range(0, len(payload), size):
            self._pause()
            handler.wfile.write(payload[start : start + size])
            handler.wfile.flush()

    def _embeddings(self, body: dict[str, Any]) -> dict[str, Any]:
        """OpenAI's embeddings response; vectors from the hashing embedder (deterministic, lexical),
        of the `dimensions` asked for, base64 or float as the client asks."""
        import base64

        from chat.embeddings import HashingEmbedder

        texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
        vectors = HashingEmbedder(int(body.get("dimensions") or 1536)).embed(texts)
        as_base64 = body.get("encoding_format") == "base64"
        data = [
            {
                "object": "embedding",
                "index": index,
                "embedding": base64.b64encode(vector.tobytes()).decode() if as_base64 else vector.tolist(),
            }
            for index, vector in enumerate(vectors)
        ]
        tokens = sum(len(text.split()) for text in texts)
        return {
            "object": "list",
            "data": data,
            "model": body.get("model"),
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    def _raw(
        self,
        handler: BaseHTTPRequestHandler,
        status: int,
        payload: bytes,
        content_type: str,
        headers: dict[str, str] | None = None,
    ) -> None:
        handler.send_response(status)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(payload)))
        for name, value in (headers or {}).items():
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(payload)

    def _error(self, handler: BaseHTTPRequestHandler, status: int) -> None:
        kinds = {
            429: "rate_limit_error",
            500: "api_error",
            529: "overloaded_error",
            400: "invalid_request_error",
            401: "authentication_error",
        }
        message = {"message": f"fake {status}", "type": kinds[status]}
        payload = {"type": "error", "error": message} if self.kind == "anthropic" else {"error": message}
        headers = (
            {"retry-after": "0", "x-should-retry": "false"} if status == 429 else {"x-should-retry": "false"}
        )
        self._raw(handler, status, json.dumps(payload).encode(), "application/json", headers)

    def _message(self, body: dict[str, Any]) -> dict[str, Any]:
        uncached, cached, output = self.usage_for(body)
        if self.kind == "openai":
            return {
                "id": "chatcmpl-fake",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body["model"],
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": self.answer},
                        "finish_reason": "length" if self.truncated else "stop",
                        "logprobs": None,
                    }
                ],
                "usage": {
                    "prompt_tokens": uncached + cached,
                    "completion_tokens": output,
                    "total_tokens": uncached + cached + output,
                    "prompt_tokens_details": {"cached_tokens": cached},
                },
            }
        return {
            "id": "msg_fake",
            "type": "message",
            "role": "assistant",
            "model": body["model"],
            "content": [{"type": "text", "text": self.answer}],
            "stop_reason": "max_tokens" if self.truncated else "end_turn",
            "stop_sequence": None,
            "usage": {
                "input_tokens": uncached,
                "output_tokens": output,
                "cache_read_input_tokens": cached,
                "cache_creation_input_tokens": 0,
            },
        }

    def _stream(self, handler: BaseHTTPRequestHandler, behaviour: str, body: dict[str, Any]) -> None:
        """Server-Sent Events in chunked transfer encoding on a kept-alive connection, as both APIs
        send them; `cut:N` drops the connection after N deltas, before the stream's last chunk."""
        handler.send_response(200)
        handler.send_header("Content-Type", "text/event-stream")
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        words = self.answer.split(" ")
        deltas = [word if index == 0 else " " + word for index, word in enumerate(words)]
        cut = int(behaviour.split(":")[1]) if behaviour.startswith("cut:") else None
        events = (
            self._openai_events(body, deltas, behaviour)
            if self.kind == "openai"
            else self._anthropic_events(body, deltas, behaviour)
        )
        if behaviour == "overloaded_event":  # HTTP 200 already sent: the error comes as an event
            events = [events[0], self._error_event()]
        if behaviour == "pings":  # after the stream's opening event, before its first token
            ping = (
                b": keep-alive\n\n" if self.kind == "openai" else b'event: ping\ndata: {"type": "ping"}\n\n'
            )
            events = [events[0], *[("ping", "", False)] * self.trickle_pieces, *events[1:]]
        if behaviour == "reasoning":
            chunk = {
                **json.loads(events[0][1]),
                "choices": [{"index": 0, "delta": {"reasoning_content": "hmm "}}],
            }
            events = [events[0], *[("think", json.dumps(chunk), False)] * self.trickle_pieces, *events[1:]]
        sent_deltas = 0
        for name, data, is_delta in events:
            if name == "think":
                self._pause()
                name = None
            if name == "ping":
                self._pause()
                handler.wfile.write(b"%x\r\n%s\r\n" % (len(ping), ping))
                handler.wfile.flush()
                continue
            if cut is not None and is_delta and sent_deltas == cut:
                handler.wfile.flush()
                handler.connection.shutdown(2)  # drop the connection mid-stream
                handler.close_connection = True
                return
            if is_delta and sent_deltas and self.token_interval_seconds:
                time.sleep(self.token_interval_seconds)
            head = f"event: {name}\n" if name else ""
            event = f"{head}data: {data}\n\n".encode()
            handler.wfile.write(b"%x\r\n%s\r\n" % (len(event), event))
            handler.wfile.flush()
            sent_deltas += is_delta
        if behaviour == "reset_after_done":
            handler.connection.shutdown(2)
            handler.close_connection = True
            return
        handler.wfile.write(b"0\r\n\r\n")

    def _error_event(self) -> tuple[str | None, str, bool]:
        if self.kind == "openai":  # a data line holding an error object, as OpenAI sends mid-stream
            error = {
                "message": "The server is overloaded.",
                "type": "server_error",
                "param": None,
                "code": None,
            }
            return None, json.dumps({"error": error}), False
        error = {"type": "overloaded_error", "message": "Overloaded"}
        return "error", json.dumps({"type": "error", "error": error}), False

    def _openai_events(
        self, body: dict[str, Any], deltas: list[str], behaviour: str
    ) -> list[tuple[str | None, str, bool]]:
        uncached, cached, output = self.usage_for(body)
        base = {
            "id": "chatcmpl-fake",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": body["model"],
        }
        events: list[tuple[str | None, str, bool]] = [
            (
                None,
                json.dumps(
                    {
                        **base,
                        "choices": [
                            {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
                        ],
                    }
                ),
                False,
            )
        ]
        events += [
            (
                None,
                json.dumps(
                    {**base, "choices": [{"index": 0, "delta": {"content": delta}, "finish_reason": None}]}
                ),
                True,
            )
            for delta in deltas
        ]
        events.append(
            (
                None,
                json.dumps(
                    {
                        **base,
                        "choices": [
                            {"index": 0, "delta": {}, "finish_reason": "length" if self.truncated else "stop"}
                        ],
                    }
                ),
                False,
            )
        )
        if behaviour != "no_usage" and (body.get("stream_options") or {}).get("include_usage"):
            usage = {
                "prompt_tokens": uncached + cached,
                "completion_tokens": output,
                "total_tokens": uncached + cached + output,
                "prompt_tokens_details": {"cached_tokens": cached},
            }
            events.append((None, json.dumps({**base, "choices": [], "usage": usage}), False))
        events.append((None, "[DONE]", False))
        return events

    def _anthropic_events(
        self, body: dict[str, Any], deltas: list[str], behaviour: str
    ) -> list[tuple[str | None, str, bool]]:
        uncached, cached, output = self.usage_for(body)
        start = {
            "type": "message_start",
            "message": {
                "id": "msg_fake",
                "type": "message",
                "role": "assistant",
                "model": body["model"],
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {"input_tokens": uncached, "output_tokens": 1, "cache_read_input_tokens": cached},
            },
        }
        events: list[tuple[str | None, str, bool]] = [
            ("message_start", json.dumps(start), False),
            (
                "content_block_start",
                json.dumps(
                    {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
                ),
                False,
            ),
        ]
        events += [
            (
                "content_block_delta",
                json.dumps(
                    {
                        "type": "content_block_delta",
                        "index": 0,
                        "delta": {"type": "text_delta", "text": delta},
                    }
                ),
                True,
            )
            for delta in deltas
        ]
        events.append(("content_block_stop", json.dumps({"type": "content_block_stop", "index": 0}), False))
        if behaviour != "no_usage":
            events.append(
                (
                    "message_delta",
                    json.dumps(
                        {
                            "type": "message_delta",
                            "delta": {
                                "stop_reason": "max_tokens" if self.truncated else "end_turn",
                                "stop_sequence": None,
                            },
                            "usage": {"output_tokens": output},
                        }
                    ),
                    False,
                )
            )
            events.append(("message_stop", json.dumps({"type": "message_stop"}), False))
        return events
