"""A real OpenAI-compatible chat-completions server on 127.0.0.1 that answers from a script.

Tests, benchmarks and soak scripts point the LLM annotator at it to exercise the real HTTP path
(the ``openai`` SDK, timeouts, retries) without a model. Each POST to ``/v1/chat/completions`` is
answered by a :class:`Reply`, taken from a queue or computed by a ``respond(request_json,
attempt_index)`` callable, where ``attempt_index`` counts earlier requests with an identical body
(0 the first time), so "fail once, then succeed" is easy to script.

    with ScriptedChatServer(lambda request, attempt: Reply.completion('{"relations": []}')) as s:
        client = AsyncOpenAI(base_url=s.base_url, api_key="x")

With ``api_key`` set, every request (model list included) without ``Authorization: Bearer
<api_key>`` gets a 401, as OpenAI, ``vllm serve --api-key`` and llama.cpp's servers answer.
``models`` is what ``GET /v1/models`` lists (nothing by default, like servers that do not say).
``response_formats`` limits the ``response_format`` types the server takes; any other type gets
the answer llama-cpp-python's server gives (HTTP 500, its validation message naming
``response_format``) before the script is asked: :data:`LLAMA_CPP_FORMATS` emulates it.
``slots=1`` makes it answer one chat request at a time, as llama.cpp's server with one slot does:
the others wait in a first-come-first-served queue, and a reply's ``delay`` is spent holding the
slot, even when the client has given up waiting (the server does not notice). ``port`` binds a
given port, to start a server again where a stopped one was.
"""

from __future__ import annotations

import json
import socket
import struct
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

Action = Literal["reply", "reset", "close"]

ALL_FORMATS = ("text", "json_object", "json_schema")
LLAMA_CPP_FORMATS = ("text", "json_object")
"""The ``response_format`` types llama-cpp-python's server (0.3.x) accepts."""


@dataclass(frozen=True)
class Reply:
    """What the server does with one request.

    ``action="reply"`` sends ``status`` with ``body`` (or, when ``body`` is None and status is
    200, a chat completion whose message content is ``content``) after ``delay`` seconds.
    ``"reset"`` aborts the TCP connection (RST) and ``"close"`` closes it without an answer.
    """

    content: str = ""
    status: int = 200
    headers: Mapping[str, str] = field(default_factory=dict)
    body: str | None = None
    delay: float = 0.0
    action: Action = "reply"

    @classmethod
    def completion(cls, content: str, *, delay: float = 0.0) -> Reply:
        return cls(content=content, delay=delay)

    @classmethod
    def error(
        cls,
        status: int,
        *,
        retry_after: float | str | None = None,
        message: str = "scripted error",
        delay: float = 0.0,
    ) -> Reply:
        headers = {} if retry_after is None else {"Retry-After": str(retry_after)}
        body = json.dumps({"error": {"message": message, "type": "scripted", "code": status}})
        return cls(status=status, headers=headers, body=body, delay=delay)

    @classmethod
    def hang(cls, seconds: float = 30.0) -> Reply:
        """Answer only after ``seconds`` (longer than the client's timeout)."""
        return cls(content='{"relations": []}', delay=seconds)

    @classmethod
    def reset(cls) -> Reply:
        return cls(action="reset")

    @classmethod
    def close(cls) -> Reply:
        return cls(action="close")

    @classmethod
    def invalid_json(cls) -> Reply:
        """A 200 whose body is not JSON at all."""
        return cls(body='{"id": "chatcmpl-broken", "choices": [')


Responder = Callable[[dict[str, Any], int], Reply]


@dataclass(frozen=True)
class RecordedRequest:
    received_at: float  # time.monotonic()
    path: str
    body: dict[str, Any] | None
    headers: dict[str, str]  # names in lower case
    attempt_index: int


def completion_body(content: str, model: str) -> dict[str, Any]:
    """A minimal but complete ``chat.completion`` object."""
    return {
        "id": f"chatcmpl-scripted-{time.monotonic_ns()}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 256
    scripted: ScriptedChatServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients that gave up (timeouts, resets) are part of the script, not errors."""
        if isinstance(sys.exc_info()[1], OSError):
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    wbufsize = -1  # headers and body leave in one write (flushed after each request)
    server: _Server

    def setup(self) -> None:
        super().setup()
        # Without this, Nagle's algorithm and delayed ACKs add ~40 ms to every keep-alive reply.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:  # quiet by design
        return

    def _refused_key(self) -> bool:
        """Answer 401 when the server wants a key and the request lacks it."""
        key = self.server.scripted.api_key
        if key is None or self.headers.get("Authorization") == f"Bearer {key}":
            return False
        message = "Incorrect API key provided"
        self._send(401, json.dumps({"error": {"message": message, "code": "invalid_api_key"}}), {})
        return True

    def do_GET(self) -> None:
        if self._refused_key():
            return
        if self.path.rstrip("/").endswith("/models"):
            models = [
                {"id": name, "object": "model", "created": 0, "owned_by": "scripted"}
                for name in self.server.scripted.models
            ]
            self._send(200, json.dumps({"object": "list", "data": models}), {})
        else:
            self._send(404, json.dumps({"error": {"message": "not found"}}), {})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        if self._refused_key():
            return
        if not self.path.rstrip("/").endswith("/chat/completions") or not isinstance(body, dict):
            self._send(404, json.dumps({"error": {"message": f"no route {self.path}"}}), {})
            return
        scripted = self.server.scripted
        headers = {key.lower(): value for key, value in self.headers.items()}
        reply = scripted._next_reply(self.path, body, headers)
        with scripted._track_in_flight(), scripted._slot():
            if reply.delay and scripted._stopping.wait(reply.delay):
                reply = Reply(action="close")
            self._answer(body, reply)

    def _answer(self, body: dict[str, Any], reply: Reply) -> None:
        if reply.action == "reset":
            self._reset()
            return
        if reply.action == "close":
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        payload = reply.body
        if payload is None:
            if reply.status == 200:
                payload = json.dumps(completion_body(reply.content, str(body.get("model", ""))))
            else:
                payload = json.dumps({"error": {"message": "scripted error"}})
        self._send(reply.status, payload, reply.headers)

    def _send(self, status: int, payload: str, headers: Mapping[str, str]) -> None:
        data = payload.encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()

    def _reset(self) -> None:
        """Abort the connection with a TCP RST (SO_LINGER with a zero timeout)."""
        self.close_connection = True
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()


class ScriptedChatServer:
    """Context manager running the scripted server in a background thread.

    ``script`` is a ``respond(request_json, attempt_index) -> Reply`` callable or an iterable of
    Replies used in order; when a queue runs dry the server answers 500 "script exhausted".
    """

    def __init__(
        self,
        script: Responder | Iterable[Reply],
        *,
        host: str = "127.0.0.1",
        models: Iterable[str] = (),
        response_formats: Iterable[str] = ALL_FORMATS,
        api_key: str | None = None,
        slots: int | None = None,
        port: int = 0,
    ) -> None:
        self.api_key = api_key
        self.slots = slots
        self._port = port
        self._busy = 0
        self._slot_queue: deque[threading.Event] = deque()
        self._max_queued = 0
        self.models = list(models)
        self.response_formats = tuple(response_formats)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._respond: Responder | None = script if callable(script) else None
        self._queue: deque[Reply] = deque() if callable(script) else deque(script)
        self._seen: dict[str, int] = {}
        self._requests: list[RecordedRequest] = []
        self._in_flight = 0
        self._max_in_flight = 0
        self._host = host
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> ScriptedChatServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> None:
        server = _Server((self._host, self._port), _Handler)
        server.scripted = self
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        with self._lock:
            for waiting in self._slot_queue:  # queued requests end (closed) with the server
                waiting.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("server not started")
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://{self._host}:{self.port}/v1"

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    @property
    def request_count(self) -> int:
        with self._lock:
            return len(self._requests)

    @property
    def max_in_flight(self) -> int:
        """The most chat requests that were being answered at the same moment."""
        with self._lock:
            return self._max_in_flight

    @property
    def max_queued(self) -> int:
        """With ``slots``: the most chat requests that were waiting for a slot at once."""
        with self._lock:
            return self._max_queued

    @contextmanager
    def _slot(self) -> Iterator[None]:
        """Hold one of ``slots`` (first come, first served) for the block; free without slots."""
        if self.slots is None:
            yield
            return
        with self._lock:
            turn = None
            if self._busy < self.slots and not self._slot_queue:
                self._busy += 1
            else:
                turn = threading.Event()
                self._slot_queue.append(turn)
                self._max_queued = max(self._max_queued, len(self._slot_queue))
        if turn is not None:
            turn.wait()  # the slot is handed over by the request that frees it
        try:
            yield
        finally:
            with self._lock:
                if self._slot_queue:
                    self._slot_queue.popleft().set()
                else:
                    self._busy -= 1

    @contextmanager
    def _track_in_flight(self) -> Iterator[None]:
        with self._lock:
            self._in_flight += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight)
        try:
            yield
        finally:
            with self._lock:
                self._in_flight -= 1

    def _rejected_format(self, body: dict[str, Any]) -> Reply | None:
        """llama-cpp-python's answer to a ``response_format`` type it does not know."""
        wanted = body.get("response_format")
        kind = wanted.get("type") if isinstance(wanted, dict) else None
        if kind is None or kind in self.response_formats:
            return None
        allowed = " or ".join(repr(k) for k in self.response_formats)
        message = (
            "1 validation error for CreateChatCompletionRequest\nresponse_format.type\n"
            f"  Input should be {allowed} [type=literal_error, input_value={kind!r}, "
            "input_type=str]"
        )
        error = {"message": message, "type": "internal_server_error", "param": None, "code": None}
        return Reply(status=500, body=json.dumps({"error": error}))

    def _next_reply(self, path: str, body: dict[str, Any], headers: dict[str, str]) -> Reply:
        key = json.dumps(body, sort_keys=True)
        with self._lock:
            attempt = self._seen.get(key, 0)
            self._seen[key] = attempt + 1
            self._requests.append(
                RecordedRequest(time.monotonic(), path, body, headers, attempt_index=attempt)
            )
            rejected = self._rejected_format(body)
            if rejected is not None:
                return rejected
            if self._respond is None:
                if self._queue:
                    return self._queue.popleft()
                return Reply.error(500, message="script exhausted")
        try:
            return self._respond(body, attempt)
        except Exception as error:  # a broken script shows up as a 500, not a dead socket
            return Reply.error(500, message=f"respond() raised {error!r}")
