"""LLM providers behind one small interface: `openai` and `anthropic` through their official SDKs,
and `local`, offline and deterministic.

The SDKs' own retries are off (max_retries=0): the fallback chain (chat/fallback.py) retries, so
every attempt is counted, traced and fed to the circuit breaker. Base URLs and keys come from
settings, so any OpenAI-compatible server works.

Each attempt has a deadline, not only the SDKs' timeouts, which bound each wait for bytes (a server
trickling bytes, or a stream sending only pings, would never trip them): an answer within
CHAT_REQUEST_TIMEOUT_SECONDS; a stream's first token within CHAT_FIRST_TOKEN_TIMEOUT_SECONDS and all
of it within CHAT_STREAM_TIMEOUT_SECONDS. The stdlib transport (chat/transport.py, the default) cuts
each wait short to the deadline; on httpx2's own (PROVIDER_HTTP_TRANSPORT=httpx, or a proxy) a
stream's event that arrives late is a timeout, and each wait ends only at the per-read timeout.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import anthropic
import httpx2
import openai
from django.conf import settings

from chat.embeddings import words
from chat.tokens import CHARS_PER_TOKEN, estimate_message_tokens, estimate_tokens
from chat.transport import deadline, sdk_http_client

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class ProviderRequest:
    model: str
    messages: list[dict[str, str]]
    max_tokens: int
    temperature: float | None = None
    top_p: float | None = None
    stop: tuple[str, ...] = ()


@dataclass(frozen=True)
class Usage:
    input_tokens: int  # not served from the provider's prompt cache
    cached_input_tokens: int
    output_tokens: int


@dataclass(frozen=True)
class Completion:
    text: str
    usage: Usage
    finish_reason: str = "stop"  # OpenAI's words for every provider: stop, length, content_filter...


@dataclass(frozen=True)
class Finish:
    """A stream's event saying why the answer ended, in OpenAI's words."""

    reason: str


# Anthropic's stop reasons in OpenAI's words (finish_reason), which both APIs here speak.
_ANTHROPIC_FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "refusal": "content_filter",
    "tool_use": "tool_calls",
}


def anthropic_finish_reason(stop_reason: str | None) -> str:
    return _ANTHROPIC_FINISH_REASONS.get(stop_reason or "end_turn", stop_reason or "stop")


class ProviderError(Exception):
    """A failed attempt. `kind` decides what the chain does next:

    timeout, connection, rate_limited, server -> retry (with backoff), then fall back;
    malformed, config -> fall back at once; bad_request -> the request itself is wrong: stop.
    """

    RETRYABLE = {"timeout", "connection", "rate_limited", "server"}

    def __init__(
        self, kind: str, message: str, *, status_code: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.status_code = status_code
        self.retry_after = retry_after

    @property
    def retryable(self) -> bool:
        return self.kind in self.RETRYABLE

    @property
    def counts_against_circuit(self) -> bool:
        return self.kind != "bad_request"


def _retry_after(headers: Any) -> float | None:
    if headers is None:
        return None
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if value:
            try:
                return max(float(value) * scale, 0.0)
            except ValueError:
                return None
    return None


def classify(exc: Exception) -> ProviderError:
    """Maps an SDK (or transport) exception to what the fallback chain should do."""
    if isinstance(exc, ProviderError):
        return exc
    if isinstance(exc, UnicodeEncodeError):  # text the SDK cannot send: the request's fault, not theirs
        return ProviderError("bad_request", f"the request cannot be sent as UTF-8 ({type(exc).__name__})")
    if isinstance(exc, openai.APITimeoutError | anthropic.APITimeoutError):
        return ProviderError("timeout", "the provider did not answer in time")
    if isinstance(exc, openai.APIConnectionError | anthropic.APIConnectionError):
        return ProviderError("connection", f"could not reach the provider: {exc}")
    if isinstance(exc, httpx2.TimeoutException):  # a stream's read (the SDKs let them through)
        return ProviderError("timeout", "the provider stopped sending in time")
    if isinstance(exc, httpx2.TransportError):  # a stream dropped mid-way (the SDKs let it through)
        return ProviderError("connection", f"the connection to the provider broke: {exc}")
    if isinstance(exc, anthropic.APIStatusError) and exc.status_code < 400:
        return _in_stream_error(exc.body)  # an `error` event in a stream that began with HTTP 200
    if isinstance(exc, openai.APIStatusError | anthropic.APIStatusError):
        status = exc.status_code
        retry_after = _retry_after(exc.response.headers)
        if status == 429:
            return ProviderError(
                "rate_limited",
                "the provider is rate limiting us",
                status_code=status,
                retry_after=retry_after,
            )
        if status >= 500 or status in (408, 409):
            return ProviderError(
                "server",
                f"the provider failed with HTTP {status}",
                status_code=status,
                retry_after=retry_after,
            )
        if status in (401, 403, 404):
            return ProviderError(
                "config", f"the provider refused our credentials or model (HTTP {status})", status_code=status
            )
        return ProviderError(
            "bad_request", f"the provider rejected the request: {_status_message(exc)}", status_code=status
        )
    if (
        isinstance(exc, openai.APIError)
        and not isinstance(exc, openai.APIResponseValidationError)
        and isinstance(exc.body, dict)
    ):
        return _in_stream_error({"error": exc.body})  # an error object in a stream's data
    return ProviderError("malformed", f"unreadable provider response ({type(exc).__name__})")


# Error types the providers name in an error they send inside a stream, after HTTP 200: the status
# code says nothing there. Anthropic's (overloaded_error, api_error...) and OpenAI's (server_error...)
# alike; a type not named here is taken for a failure on the provider's side, as it is mid-answer.
_IN_STREAM_ERROR_KINDS = {
    "rate_limit_error": "rate_limited",
    "invalid_request_error": "bad_request",
    "request_too_large": "bad_request",
    "authentication_error": "config",
    "permission_error": "config",
    "not_found_error": "config",
    "billing_error": "config",  # the account, not the moment: the next target, no retry
}


def _in_stream_error(body: object) -> ProviderError:
    error = body.get("error") if isinstance(body, dict) else None
    error_type = error.get("type") if isinstance(error, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    kind = _IN_STREAM_ERROR_KINDS.get(error_type, "server") if isinstance(error_type, str) else "server"
    detail = message[:300] if isinstance(message, str) else "no message"
    return ProviderError(kind, f"the provider reported {error_type or 'an error'} mid-stream: {detail}")


def _status_message(exc: openai.APIStatusError | anthropic.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])[:300]
    return str(exc.message)[:300]


class Provider(Protocol):
    name: str

    def complete(self, request: ProviderRequest) -> Completion: ...

    def stream(self, request: ProviderRequest) -> Iterator[str | Usage | Finish]:
        """Text deltas as they arrive, a Finish, then one Usage if the provider reports it."""
        ...


def _stream_timeout() -> openai.Timeout:
    # A stream's reads wait at most the time-to-first-token budget (then the same gap between chunks).
    return openai.Timeout(
        settings.CHAT_FIRST_TOKEN_TIMEOUT_SECONDS, connect=settings.CHAT_CONNECT_TIMEOUT_SECONDS
    )


def cut_at_stop(text: str, stops: tuple[str, ...]) -> str:
    """`text` up to the first of `stops` (which is left out, as a model's stop sequence is)."""
    found = [index for stop in stops if (index := text.find(stop)) >= 0]
    return text[: min(found)] if found else text


class StopCut:
    """Ends a streamed text before the first of `stops`, fed piece by piece: a tail that could still
    become one is held back until the next piece (or `flush`, at the end) tells."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops = stops
        self.held = ""
        self.stopped = False

    def feed(self, piece: str) -> str:
        text = self.held + piece
        cut = cut_at_stop(text, self.stops)
        if len(cut) < len(text):
            self.stopped, self.held = True, ""
            return cut
        partial = (size for stop in self.stops for size in range(1, len(stop)) if text.endswith(stop[:size]))
        keep = max(partial, default=0)
        self.held = text[len(text) - keep :]
        return text[: len(text) - keep]

    def flush(self) -> str:
        held, self.held = self.held, ""
        return held


def _answer_deadline() -> float:
    return time.monotonic() + settings.CHAT_REQUEST_TIMEOUT_SECONDS


class StreamClock:
    """One streamed attempt's deadlines, from its start: the first token within
    CHAT_FIRST_TOKEN_TIMEOUT_SECONDS, the whole stream within CHAT_STREAM_TIMEOUT_SECONDS. The
    provider calls `answering()` at the first event that carries generated output, text or not (a
    reasoning or tool delta; the finish of an empty answer), never at pings or the opening event."""

    def __init__(self) -> None:
        started = time.monotonic()
        self.first_token_by = started + settings.CHAT_FIRST_TOKEN_TIMEOUT_SECONDS
        self.ends_by = started + settings.CHAT_STREAM_TIMEOUT_SECONDS
        self.answered = False

    def answering(self) -> None:
        self.answered = True

    @property
    def due(self) -> float:
        return self.ends_by if self.answered else min(self.first_token_by, self.ends_by)

    def expired(self) -> ProviderError:
        if not self.answered and self.first_token_by <= self.ends_by:
            limit = f"no first token within {settings.CHAT_FIRST_TOKEN_TIMEOUT_SECONDS:g} s"
        else:
            limit = f"the stream ran past its limit of {settings.CHAT_STREAM_TIMEOUT_SECONDS:g} s"
        return ProviderError("timeout", limit)

    def paced(self, events: Iterable[T]) -> Iterator[T]:
        """`events`, each read by the deadline that holds at the time (the transport cuts the wait
        short; the block around `next` ends before the `yield`, as `deadline` requires). An event
        arriving past it (on the httpx transport, which cannot cut a wait) is a timeout too."""
        iterator = iter(events)
        while True:
            due = self.due
            with deadline(due):
                try:
                    event = next(iterator)
                except StopIteration:
                    return
                except (httpx2.TimeoutException, openai.APITimeoutError, anthropic.APITimeoutError) as exc:
                    if time.monotonic() >= due:
                        raise self.expired() from exc
                    raise
            if time.monotonic() > due:
                raise self.expired()
            yield event


# One client (and connection pool) per configuration, shared by the process's threads. Both SDKs
# take the same Timeout type (their HTTP client's), so connect and total are set apart.
@functools.lru_cache(maxsize=8)
def _openai_client(
    api_key: str, base_url: str | None, total: float, connect: float, transport: str
) -> openai.OpenAI:
    return openai.OpenAI(
        api_key=api_key,
        base_url=base_url,
        max_retries=0,
        timeout=openai.Timeout(total, connect=connect),
        http_client=sdk_http_client(openai.DefaultHttpxClient, transport),
    )


@functools.lru_cache(maxsize=8)
def _anthropic_client(
    api_key: str, base_url: str | None, total: float, connect: float, transport: str
) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        api_key=api_key,
        base_url=base_url,
        max_retries=0,
        timeout=anthropic.Timeout(total, connect=connect),
        http_client=sdk_http_client(anthropic.DefaultHttpxClient, transport),
    )


class ReusableStream(openai.Stream[object]):
    """The SDK's Stream, reading the response to its end after `[DONE]`. The SDK stops at `[DONE]`
    and closes a response whose last chunk is still unread, which closes the connection: every
    streamed completion would then open a new (TLS) connection to the provider. (Its async Stream
    drains; the sync one does not.)"""

    def _iter_events(self) -> Iterator[Any]:
        events = super()._iter_events()
        for event in events:
            if event.data.startswith("[DONE]"):
                _drain(events)
            yield event


def _drain(events: Iterator[Any]) -> None:
    """Reads what follows `[DONE]`, normally just the end of the message, so the connection goes back
    to the pool. A failure there costs the connection, never the completed answer; a server holding
    the response open after `[DONE]` is waited for up to the stream's read timeout."""
    try:
        for _ in events:
            pass
    except (openai.APIError, httpx2.HTTPError, ValueError):
        logger.debug("the provider's stream did not end cleanly after [DONE]; its connection is dropped")


class OpenAIProvider:
    name = "openai"

    @property
    def client(self) -> openai.OpenAI:
        return _openai_client(
            settings.OPENAI_API_KEY or "unset",
            settings.OPENAI_BASE_URL,
            settings.CHAT_REQUEST_TIMEOUT_SECONDS,
            settings.CHAT_CONNECT_TIMEOUT_SECONDS,
            settings.PROVIDER_HTTP_TRANSPORT,
        )

    def _params(self, request: ProviderRequest) -> dict[str, Any]:
        params: dict[str, Any] = {
            "model": request.model,
            "messages": request.messages,
            "max_tokens": request.max_tokens,
        }
        if request.temperature is not None:
            params["temperature"] = request.temperature
        if request.top_p is not None:
            params["top_p"] = request.top_p
        if request.stop:
            params["stop"] = list(request.stop)
        return params

    @staticmethod
    def _usage(usage: dict[str, Any]) -> Usage:
        cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
        return Usage(usage["prompt_tokens"] - cached, cached, usage["completion_tokens"])

    # The SDK's generic `post` with the wire-format body, read back as plain dicts: the same client,
    # auth, timeouts and typed errors as `chat.completions.create`, without validating our own params
    # and building response models on the hot path. A response of the wrong shape raises
    # KeyError/TypeError, which `classify` reports as malformed.
    def complete(self, request: ProviderRequest) -> Completion:
        try:
            with deadline(_answer_deadline()):
                response: Any = self.client.post(
                    "/chat/completions", body=self._params(request), cast_to=object
                )
            choice = response["choices"][0]
            if not response.get("usage"):
                raise ProviderError("malformed", "the provider reported no usage")
            return Completion(
                choice["message"].get("content") or "",
                self._usage(response["usage"]),
                choice.get("finish_reason") or "stop",
            )
        except Exception as exc:
            raise classify(exc) from exc

    def stream(self, request: ProviderRequest) -> Iterator[str | Usage | Finish]:
        body = {**self._params(request), "stream": True, "stream_options": {"include_usage": True}}
        clock = StreamClock()
        try:
            with deadline(clock.due):
                chunks = self.client.post(
                    "/chat/completions",
                    body=body,
                    cast_to=object,
                    options={"timeout": _stream_timeout()},
                    stream=True,
                    stream_cls=ReusableStream,
                )
            finished = False
            chunk: Any
            # Closed when this generator is, the client gone included: the SDK's Stream holds a
            # reference cycle, and would otherwise keep its connection until the cycle collector ran.
            with contextlib.closing(chunks):
                for chunk in clock.paced(chunks):
                    for choice in chunk.get("choices") or []:
                        delta = choice.get("delta") or {}
                        if any(value for field, value in delta.items() if field != "role"):
                            clock.answering()  # text, or reasoning, a refusal, a tool call
                        if delta.get("content"):
                            yield delta["content"]
                        if choice.get("finish_reason"):
                            finished = True
                            clock.answering()
                            yield Finish(choice["finish_reason"])
                    if chunk.get("usage"):
                        yield self._usage(chunk["usage"])
        except ProviderError:
            raise
        except Exception as exc:
            raise classify(exc) from exc
        if not finished:  # the connection closed without a finish_reason: the answer is cut
            raise ProviderError("connection", "the stream ended before the answer finished")


class AnthropicProvider:
    name = "anthropic"

    @property
    def client(self) -> anthropic.Anthropic:
        return _anthropic_client(
            settings.ANTHROPIC_API_KEY or "unset",
            settings.ANTHROPIC_BASE_URL,
            settings.CHAT_REQUEST_TIMEOUT_SECONDS,
            settings.CHAT_CONNECT_TIMEOUT_SECONDS,
            settings.PROVIDER_HTTP_TRANSPORT,
        )

    @staticmethod
    def _params(request: ProviderRequest) -> dict[str, Any]:
        """System messages go to `system`; consecutive turns of one role are merged (the API alternates)."""
        system = "\n\n".join(m["content"] for m in request.messages if m["role"] == "system")
        turns: list[dict[str, str]] = []
        for message in request.messages:
            if message["role"] == "system":
                continue
            if turns and turns[-1]["role"] == message["role"]:
                turns[-1] = {
                    "role": message["role"],
                    "content": turns[-1]["content"] + "\n\n" + message["content"],
                }
            else:
                turns.append({"role": message["role"], "content": message["content"]})
        params: dict[str, Any] = {"model": request.model, "max_tokens": request.max_tokens, "messages": turns}
        if system:
            params["system"] = system
        if request.temperature is not None:
            params["temperature"] = min(request.temperature, 1.0)  # Anthropic's range is 0..1
        if request.top_p is not None:
            params["top_p"] = request.top_p
        sent = [stop for stop in request.stop if stop.strip()]
        if sent:
            params["stop_sequences"] = sent
        return params

    @staticmethod
    def _our_stops(request: ProviderRequest) -> tuple[str, ...]:
        """Stop sequences of only whitespace ("\\n"), which Anthropic refuses (a 400): ours to apply."""
        return tuple(stop for stop in request.stop if not stop.strip())

    def complete(self, request: ProviderRequest) -> Completion:
        try:
            with deadline(_answer_deadline()):
                response = self.client.messages.create(**self._params(request))
            text = "".join(block.text for block in response.content if getattr(block, "type", "") == "text")
            usage = response.usage
            answer = cut_at_stop(text, self._our_stops(request))
            return Completion(
                answer,
                Usage(usage.input_tokens, usage.cache_read_input_tokens or 0, usage.output_tokens),
                "stop" if len(answer) < len(text) else anthropic_finish_reason(response.stop_reason),
            )
        except Exception as exc:
            raise classify(exc) from exc

    def stream(self, request: ProviderRequest) -> Iterator[str | Usage | Finish]:
        input_tokens = cached = output_tokens = 0
        finished = False
        cut = StopCut(self._our_stops(request))
        delivered: list[str] = []  # for the output's estimate when our stop sequence ends the stream
        clock = StreamClock()
        try:
            with deadline(clock.due):
                events = self.client.messages.create(
                    **self._params(request), stream=True, timeout=_stream_timeout()
                )
            with contextlib.closing(events):  # as OpenAI's: its connection back at once, even cut short
                for event in clock.paced(events):
                    if event.type == "message_start":
                        usage = event.message.usage
                        input_tokens, cached = usage.input_tokens, usage.cache_read_input_tokens or 0
                    elif event.type == "content_block_delta":  # text, thinking, a tool's input
                        clock.answering()
                        if getattr(event.delta, "type", "") == "text_delta":
                            text = cut.feed(event.delta.text)
                            if text:
                                delivered.append(text)
                                yield text
                            if cut.stopped:  # our stop sequence: the answer ends here, the call too
                                finished, output_tokens = True, estimate_tokens("".join(delivered))
                                yield Finish("stop")
                                break
                    elif event.type == "message_delta":
                        output_tokens = event.usage.output_tokens
                        if event.delta.stop_reason:
                            clock.answering()
                            held = cut.flush()
                            if held:
                                yield held
                            yield Finish(anthropic_finish_reason(event.delta.stop_reason))
                    elif event.type == "message_stop":
                        finished = True
        except Exception as exc:
            raise classify(exc) from exc
        if not finished:  # Anthropic always ends with message_stop: without it the answer is cut
            raise ProviderError("connection", "the stream ended before the answer finished")
        yield Usage(input_tokens, cached, output_tokens)


CONTEXT_MARKER = "Context:"


class LocalProvider:
    """Offline and deterministic: answers from the retrieved context when the prompt carries one,
    otherwise echoes a short summary of the question. Token usage is estimated like ours elsewhere."""

    name = "local"

    def _answer(self, request: ProviderRequest) -> str:
        question = next((m["content"] for m in reversed(request.messages) if m["role"] == "user"), "")
        context = next(
            (
                m["content"].split(CONTEXT_MARKER, 1)[1]
                for m in request.messages
                if m["role"] == "system" and CONTEXT_MARKER in m["content"]
            ),
            "",
        )
        if context.strip():
            answer = "From your documents: " + " ".join(self._best_sentences(context, question))
        else:
            summary = " ".join(question.split()[:40])
            answer = (
                f'(local model) You asked: "{summary}". No external model is configured to answer in full.'
            )
        return cut_at_stop(answer, request.stop)

    @staticmethod
    def _within_max_tokens(text: str, max_tokens: int) -> tuple[str, str]:
        """The answer cut to max_tokens as we count them, and its finish reason ("length" when cut)."""
        if estimate_tokens(text) <= max_tokens:
            return text, "stop"
        return text[: max_tokens * CHARS_PER_TOKEN], "length"

    @staticmethod
    def _best_sentences(context: str, question: str, count: int = 2) -> list[str]:
        """The context's sentences sharing most words with the question, in their original order, each
        followed by its source number ([n]) the way a model cites."""
        asked = set(words(question))
        candidates = []
        for part in re.split(r"\n(?=\[\d+\] )", context.strip()):
            source, _, text = part.partition(":\n")
            number = source.split("]", 1)[0] + "]" if source.startswith("[") else ""
            for sentence in re.split(r"(?<=[.!?])\s+", " ".join(text.split())):
                if sentence:
                    candidates.append((len(asked & set(words(sentence))), sentence, number))
        ranked = sorted(range(len(candidates)), key=lambda i: (-candidates[i][0], i))[:count]
        return [f"{candidates[i][1]} {candidates[i][2]}".strip() for i in sorted(ranked)]

    def _usage(self, request: ProviderRequest, text: str) -> Usage:
        return Usage(estimate_message_tokens(request.messages), 0, estimate_tokens(text))

    def complete(self, request: ProviderRequest) -> Completion:
        text, finish_reason = self._within_max_tokens(self._answer(request), request.max_tokens)
        return Completion(text, self._usage(request, text), finish_reason)

    def stream(self, request: ProviderRequest) -> Iterator[str | Usage | Finish]:
        text, finish_reason = self._within_max_tokens(self._answer(request), request.max_tokens)
        words = text.split(" ")
        for index, word in enumerate(words):
            piece = word if index == 0 else " " + word
            if piece:  # an answer cut to nothing by a stop sequence has no text to send
                yield piece
        yield Finish(finish_reason)
        yield self._usage(request, text)


def provider_configured(name: str) -> bool:
    """Whether the deployment gave this provider credentials or a base URL of its own (a local
    OpenAI-compatible server may need no key). An unconfigured provider is never called."""
    if name == "openai":
        return bool(settings.OPENAI_API_KEY or settings.OPENAI_BASE_URL)
    if name == "anthropic":
        return bool(settings.ANTHROPIC_API_KEY or settings.ANTHROPIC_BASE_URL)
    return name == "local"


PROVIDERS: dict[str, Provider] = {
    "openai": OpenAIProvider(),
    "anthropic": AnthropicProvider(),
    "local": LocalProvider(),
}


def provider_named(name: str) -> Provider:
    return PROVIDERS[name]
