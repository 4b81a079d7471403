"""LLMAnnotator: causal relations from any OpenAI-compatible chat endpoint (OpenAI, `vllm serve`,
llama.cpp's server).

One few-shot request per distinct text (prompts: :mod:`cattune.annotators.llm_prompt`), asking
for the wire format through ``response_format`` (json_schema, else the server's JSON mode with the
schema, else the prompt only; negotiated once a run). Replies are read leniently and checked
strictly against the text (:mod:`cattune.annotators.llm_parse`): the relations that can be placed
are kept and the rest is recorded on the row; a repair request goes out only when nothing can be
placed or more than ``max_dropped_share`` was left out, and a row is quarantined
(``retryable=False``) only when nothing can be placed after it. Timeouts, 408/409/429/5xx and
connection errors are retried by the openai SDK (``max_retries``, its backoff, ``Retry-After`` up
to 120 s); below them the run's transport (:mod:`cattune.annotators.llm_transport`) adapts
the requests in flight (``concurrency`` is the ceiling), pauses the whole run while the endpoint
is down (a circuit breaker) and stops a request after its second timeout; this module adds a
run-wide pause after a 429, request counting, and sorting failures into final and retryable.
When retries run out the row is quarantined with ``retryable=True`` so a later run retries only
those rows.
Every final reply is cached in SQLite (:mod:`cattune.annotators.llm_cache`), so re-running
unchanged rows sends no request. The API key never leaves the HTTP client: not in logs, results,
errors or reprs.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import SecretStr

from cattune.annotators.base import AnnotationResult
from cattune.annotators.llm_base import Decoding, PromptedAnnotator, RowFailed, run_sync
from cattune.annotators.llm_breaker import Breaker
from cattune.annotators.llm_cache import ReplyCache, cache_key
from cattune.annotators.llm_limit import ConcurrencyLimit
from cattune.annotators.llm_parse import final_result
from cattune.annotators.llm_progress import RunProgress
from cattune.annotators.llm_prompt import (
    PROMPT_VERSION,
    Message,
    json_object_response_format,
    json_schema_response_format,
)
from cattune.annotators.llm_transport import (
    CALL,
    TIMEOUTS_PER_CALL,
    CallCounts,
    OutageError,
    RunTransport,
)
from cattune.annotators.pack import PriorPack
from cattune.schemas import (
    AnnotatedExample,
    ConfigError,
    EndpointError,
    Example,
    cattune_home,
)
from cattune.schemas.phrases import Boundary, Strategy

if TYPE_CHECKING:
    from openai import AsyncOpenAI

logger = logging.getLogger(__name__)

DEFAULT_API_KEY_ENV = "OPENAI_API_KEY"
PLACEHOLDER_API_KEY = "EMPTY"  # what local servers such as `vllm serve` accept without --api-key
_RETRYABLE_STATUS = {408, 409, 425, 429}
StructuredOutput = Literal["auto", "json_schema", "json_object", "off"]
STRUCTURED_OUTPUTS: tuple[StructuredOutput, ...] = ("auto", "json_schema", "json_object", "off")
_FALLBACK: dict[str, StructuredOutput] = {"json_schema": "json_object", "json_object": "off"}
_SERVER_TEXT = 300  # characters of a server's error text kept in a reason
SDK_MAX_RETRY_AFTER = 120.0  # the openai SDK retries a 429 only when Retry-After is at most this


def default_cache_path() -> Path:
    return cattune_home() / "cache" / "llm.sqlite"


@dataclass
class RunStats:
    """What the last ``annotate`` call did."""

    rows: int = 0
    cached: int = 0
    requests: int = 0
    annotated: int = 0
    quarantined: int = 0
    outages: int = 0  # times the circuit breaker paused the run


@dataclass
class _Traffic:
    """HTTP hooks for one run: what the SDK does not do for us.

    Counts every chat request (the run's and, through the transport's ``CALL``, the call's, SDK
    retries included), holds every request of the run while a 429's ``Retry-After`` lasts
    (the SDK only delays the retry of the request that got it), and tells the SDK not to retry
    an error that names ``response_format`` (llama.cpp answers HTTP 500 to a json_schema it does
    not take: a retry would get the same answer).
    """

    stats: RunStats
    pause_until: float = 0.0

    async def before(self, request: Any) -> None:
        while (wait := self.pause_until - time.monotonic()) > 0:
            await asyncio.sleep(wait)
        if request.url.path.endswith("/chat/completions"):
            self.stats.requests += 1
            call = CALL.get(None)
            if call is not None:
                call.requests += 1

    async def after(self, response: Any) -> None:
        if response.status_code < 400:
            return
        wait = _retry_after_seconds(response.headers)
        if response.status_code == 429 and wait is not None and wait <= SDK_MAX_RETRY_AFTER:
            self.pause_until = max(self.pause_until, time.monotonic() + wait)
        await response.aread()
        if _names_response_format(response.text):
            response.headers["x-should-retry"] = "false"


@dataclass
class _Run:
    client: AsyncOpenAI
    limit: ConcurrencyLimit
    cache: ReplyCache | None
    mode: StructuredOutput  # what requests ask for now; "auto" negotiates down from json_schema
    stats: RunStats
    any_response: bool = field(default=False)
    settled: bool = False  # a reply told which response_format the endpoint takes
    _negotiation: asyncio.Lock = field(default_factory=asyncio.Lock)

    @asynccontextmanager
    async def asking(self) -> AsyncIterator[None]:
        """Until a reply settled the response_format (``auto``), one request at a time, so a
        server that refuses it does so once rather than once for every row in flight."""
        if not self.settled:
            await self._negotiation.acquire()
            if not self.settled:
                try:
                    yield
                finally:
                    self._negotiation.release()
                return
            self._negotiation.release()  # settled while this waited: no need to hold it
        yield


def _is_connect_failure(error: BaseException) -> bool:
    """True when the TCP connection could not be opened at all (refused, unknown host).

    Checked by class name along the MRO because the SDK's HTTP library changed its package name
    (httpx, httpx2) across openai versions.
    """
    cause = error.__cause__
    return cause is not None and any(c.__name__ == "ConnectError" for c in type(cause).__mro__)


def _retry_after_seconds(headers: Any) -> float | None:
    """Seconds from ``retry-after-ms`` / ``Retry-After`` (a number or an HTTP date)."""
    if headers is None:
        return None
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            return max(float(millis) / 1000, 0.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - time.time(), 0.0)


def _names_response_format(text: str) -> bool:
    """Whether a server's error is about the ``response_format`` field."""
    return "response_format" in text


def _server_text(error: Any) -> str:
    """What the server said in an error response, on one line and shortened."""
    text = str(error.message)
    text = text.removeprefix(f"Error code: {error.status_code}").removeprefix(" - ").strip()
    if not text and isinstance(error.body, str):
        text = error.body.strip()
    text = " ".join(text.split()) or "no explanation given"
    return text if len(text) <= _SERVER_TEXT else text[: _SERVER_TEXT - 3] + "..."


def _run_state(limit: ConcurrencyLimit, breaker: Breaker) -> str:
    """What the progress display says about the traffic: in flight, or the outage."""
    if breaker.is_open and not breaker.gave_up:
        return (
            f"endpoint failing for {breaker.down_for():.0f} s ({breaker.last_error}), "
            "all requests paused"
        )
    return f"{limit.in_flight} in flight (limit {limit.limit} of {limit.ceiling})"


def _reply_content(body: str) -> str:
    """The first choice's message text from a chat-completions response body.

    Read directly rather than through the SDK's response models (see ``_request_body``).
    Raises ``ValueError`` for a body that is not a chat completion.
    """
    try:
        message = json.loads(body)["choices"][0]["message"]
    except (ValueError, KeyError, IndexError, TypeError) as error:
        raise ValueError(f"not a chat completion: {type(error).__name__}") from None
    if not isinstance(message, dict):
        raise ValueError("not a chat completion: message is not an object")
    content = message.get("content") or message.get("refusal") or ""
    return content if isinstance(content, str) else json.dumps(content)


class LLMAnnotator(PromptedAnnotator):
    """Annotates through an OpenAI-compatible chat-completions endpoint; see the module doc."""

    name = "llm"
    version = "1.0.0"

    def __init__(
        self,
        pack: PriorPack | str | Path | None,
        *,
        model: str,
        base_url: str | None = None,
        api_key: SecretStr | str | None = None,
        api_key_env: str = DEFAULT_API_KEY_ENV,
        concurrency: int = 16,
        timeout: float = 60.0,
        max_retries: int = 4,
        temperature: float = 0.0,
        max_tokens: int | None = 2048,
        top_p: float | None = None,
        seed: int | None = None,
        structured_output: StructuredOutput = "auto",
        cache: str | Path | Literal[False] | None = None,
        refresh: bool = False,
        max_dropped_share: float = 0.5,
        strategy: Strategy = "all",
        boundary: Boundary = "word",
        progress: bool | None = None,
    ) -> None:
        if not model:
            raise ConfigError("the LLM annotator needs a model name: pass --model")
        if concurrency < 1:
            raise ConfigError(f"concurrency must be at least 1, got {concurrency}")
        if timeout <= 0:
            raise ConfigError(f"timeout must be positive (seconds), got {timeout}")
        if structured_output not in STRUCTURED_OUTPUTS:
            raise ConfigError(
                f"unknown structured output {structured_output!r}; use one of "
                + ", ".join(STRUCTURED_OUTPUTS)
            )
        if max_retries < 0:
            raise ConfigError(f"max_retries must be 0 or more, got {max_retries}")
        super().__init__(
            pack,
            model=model,
            decoding=Decoding(temperature, max_tokens, top_p, seed),
            strategy=strategy,
            boundary=boundary,
            max_dropped_share=max_dropped_share,
        )
        self.base_url = base_url
        self.api_key_env = api_key_env
        self._api_key = self._resolve_key(api_key, api_key_env, base_url)
        self.concurrency = concurrency
        self.timeout = timeout
        self.max_retries = max_retries
        self.structured_output = structured_output
        self.cache_path = None if cache is False else Path(cache or default_cache_path())
        self.refresh = refresh
        self.progress = progress
        self.last_run = RunStats()

    @staticmethod
    def _resolve_key(api_key: SecretStr | str | None, env: str, base_url: str | None) -> SecretStr:
        if isinstance(api_key, SecretStr):
            return api_key
        if api_key:
            return SecretStr(api_key)
        from_env = os.environ.get(env)
        if from_env:
            return SecretStr(from_env)
        if base_url is None:
            raise ConfigError(
                f"no API key: set the environment variable {env} (or choose another variable "
                "with --api-key-env), or pass --base-url for a local server that needs no key"
            )
        return SecretStr(PLACEHOLDER_API_KEY)

    def __repr__(self) -> str:
        return (
            f"LLMAnnotator(model={self.model!r}, base_url={self.base_url!r}, "
            f"pack={self.pack.name!r}, api_key_env={self.api_key_env!r})"
        )

    def cache_key(self, text: str) -> str:
        return cache_key(
            text,
            {
                "pack_hash": self._pack_hash,
                "model": self.model,
                "decoding": self.decoding.as_dict(),
                "prompt_version": PROMPT_VERSION,
            },
        )

    def annotate(self, examples: Sequence[Example]) -> list[AnnotationResult]:
        """Annotate a batch; usable from plain code, threads and running event loops alike."""
        return run_sync(self.aannotate(list(examples)))

    def check_endpoint(self) -> None:
        """Fail before any row when the endpoint is unreachable, refuses the key, or lists models
        without this one. Servers that list nothing (or have no model list) pass."""

        async def check() -> None:
            client = self._client()
            try:
                await self._check_endpoint(client)
            finally:
                await client.close()

        run_sync(check())

    def _client(
        self, traffic: _Traffic | None = None, transport: RunTransport | None = None
    ) -> AsyncOpenAI:
        """The SDK client with its own retries, and the run's hooks (see :class:`_Traffic`) and
        transport (adaptive concurrency, circuit breaker: see :class:`RunTransport`)."""
        from openai import AsyncOpenAI, DefaultAsyncHttpxClient

        hooks = (
            {} if traffic is None else {"request": [traffic.before], "response": [traffic.after]}
        )
        return AsyncOpenAI(
            base_url=self.base_url,
            api_key=self._api_key.get_secret_value(),
            max_retries=self.max_retries,
            timeout=self.timeout,
            http_client=DefaultAsyncHttpxClient(event_hooks=hooks, transport=transport),
        )

    async def _check_endpoint(self, client: AsyncOpenAI) -> None:
        import openai

        try:
            page = await client.with_options(max_retries=0).models.list()
        except (openai.AuthenticationError, openai.PermissionDeniedError) as error:
            self._raise_final(error, self._scrub(_server_text(error)), 0)
            raise
        except openai.APIConnectionError as error:
            if _is_connect_failure(error):
                raise self._unreachable() from None
            return
        except openai.APIError:
            return  # no model list here (404, 5xx, another shape): the chat requests will tell
        listed = [str(model.id) for model in page.data]
        if listed and self.model not in listed:
            raise EndpointError(
                f"the endpoint {self._where()} does not serve model {self.model!r}; it lists "
                f"{', '.join(map(repr, listed[:10]))}: fix --model"
            )

    async def aannotate(self, examples: Sequence[Example]) -> list[AnnotationResult]:
        stats = RunStats(rows=len(examples))
        self.last_run = stats
        results: list[AnnotationResult | None] = [None] * len(examples)
        keys = [self.cache_key(example.text) for example in examples]
        cache = ReplyCache(self.cache_path) if self.cache_path is not None else None
        try:
            hits = cache.get_many(keys) if cache is not None and not self.refresh else {}
            pending: dict[str, list[int]] = {}
            for index, (example, key) in enumerate(zip(examples, keys, strict=True)):
                hit = hits.get(key)
                if hit is not None:
                    checked = self._check(hit.reply, example.text)
                    annotation = self._annotation(hit.attempts, hit.created_at)
                    results[index] = final_result(example, checked, hit.reply, annotation)
                    stats.cached += 1
                else:
                    pending.setdefault(key, []).append(index)
            if pending:
                await self._annotate_pending(examples, pending, results, cache, stats)
        finally:
            if cache is not None:
                cache.close()
        final = [r for r in results if r is not None]
        if len(final) != len(examples):
            raise RuntimeError(
                "LLMAnnotator lost rows: every row must end annotated or quarantined"
            )
        stats.annotated = sum(isinstance(r, AnnotatedExample) for r in final)
        stats.quarantined = len(final) - stats.annotated
        logger.info(
            "llm annotator: %d rows, %d from cache, %d requests, %d quarantined",
            stats.rows,
            stats.cached,
            stats.requests,
            stats.quarantined,
        )
        return final

    async def _annotate_pending(
        self,
        examples: Sequence[Example],
        pending: dict[str, list[int]],
        results: list[AnnotationResult | None],
        cache: ReplyCache | None,
        stats: RunStats,
    ) -> None:
        breaker = Breaker()
        limit = ConcurrencyLimit(self.concurrency, timeout=self.timeout)
        client = self._client(_Traffic(stats), RunTransport(limit, breaker))
        try:
            await self._check_endpoint(client)
        except BaseException:
            await client.close()
            raise
        run = _Run(
            client,
            limit,
            cache,
            "json_schema" if self.structured_output == "auto" else self.structured_output,
            stats,
            settled=self.structured_output != "auto",
        )
        progress = RunProgress(
            sum(map(len, pending.values())),
            requests=lambda: stats.requests,
            state=lambda: _run_state(limit, breaker),
            enabled=self.progress,
        )

        async def one(key: str, indices: list[int]) -> None:
            """One request chain per distinct text; rows repeating that text share the result."""
            first = examples[indices[0]]
            result = await self._annotate_row(run, first, key)
            for index in indices:
                meta = examples[index].meta
                same = meta == first.meta
                results[index] = result if same else result.model_copy(update={"meta": meta})
            progress.advance(len(indices))

        try:
            async with progress:
                tasks = [asyncio.create_task(one(k, v)) for k, v in pending.items()]
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
                failed = next((t for t in done if t.exception() is not None), None)
                if failed is not None:
                    for task in tasks:
                        task.cancel()
                    await asyncio.gather(*tasks, return_exceptions=True)
                    raise failed.exception()  # type: ignore[misc]
        finally:
            stats.outages = breaker.opened
            await client.close()

    async def _annotate_row(self, run: _Run, example: Example, key: str) -> AnnotationResult:
        async def ask(messages: list[Message]) -> tuple[str, int]:
            return await self._complete(run, messages)

        result, final_reply = await self._label(example, ask)
        if final_reply is not None and run.cache is not None:
            run.cache.put(key, final_reply, result.annotation.attempts)
        return result

    async def _complete(self, run: _Run, messages: list[Message]) -> tuple[str, int]:
        """One chat completion; returns (reply text, requests sent).

        The SDK retries timeouts, connection errors, 408/409/429 and 5xx (``max_retries``, with
        its backoff and ``Retry-After`` up to 120 s); the run's transport
        (:mod:`cattune.annotators.llm_transport`) limits what is in flight, holds requests while
        the endpoint is down and stops a call after its second timeout; the hooks of
        :meth:`_client` count the requests and hold the run during a 429's pause. Only a 200
        whose body is not a chat completion, which the SDK does not retry, is retried here.
        """
        import openai

        call = CallCounts()
        CALL.set(call)  # each row runs in its own task, so these counts are this call's
        reason = ""
        for _ in range(self.max_retries + 1):
            try:
                async with run.limit.slot(), run.asking():
                    mode = run.mode
                    body = await run.client.post(
                        "/chat/completions",
                        cast_to=str,
                        body=self._request_body(messages, mode),
                        options={"timeout": self.timeout},
                    )
                    run.settled = True
                content = _reply_content(body)
            except openai.APIStatusError as error:
                run.any_response = True
                text = self._scrub(_server_text(error))
                if mode != "off" and _names_response_format(text):
                    self._refuse_format(run, mode, text)
                    continue
                run.settled = True
                self._raise_final(error, text, call.requests)
                raise RowFailed(
                    self._retryable_reason(error, text, call.requests),
                    call.requests,
                    retryable=True,
                ) from None
            except openai.APITimeoutError:
                raise RowFailed(self._timeout_reason(call), call.requests, retryable=True) from None
            except OutageError as error:
                raise RowFailed(
                    f"{self._scrub(error.message)}; gave up after {call.requests} attempts",
                    call.requests,
                    retryable=True,
                ) from None
            except openai.APIConnectionError as error:
                if _is_connect_failure(error) and not run.any_response:
                    raise self._unreachable() from None
                cause = type(error.__cause__).__name__ if error.__cause__ else "unknown"
                what = "cannot connect" if _is_connect_failure(error) else "connection lost"
                raise RowFailed(
                    f"{what} ({cause}); gave up after {call.requests} attempts",
                    call.requests,
                    retryable=True,
                ) from None
            except ValueError as error:
                run.any_response = True
                reason = f"malformed response body ({error})"
            else:
                run.any_response = True
                return content, call.requests
        raise RowFailed(
            f"{reason}; gave up after {call.requests} attempts", call.requests, retryable=True
        )

    def _timeout_reason(self, call: CallCounts) -> str:
        """Why a row that timed out is left for a later run, and what to change."""
        times = "twice" if call.timeouts >= TIMEOUTS_PER_CALL else "once"
        return (
            f"no reply within the {self.timeout:g} s timeout ({times}; the same request would "
            "most likely run as long again): raise --timeout or lower --max-tokens; gave up "
            f"after {call.requests} attempts"
        )

    @staticmethod
    def _retryable_reason(error: Any, text: str, sent: int) -> str:
        wait = _retry_after_seconds(error.response.headers)
        if error.status_code == 429 and wait is not None and wait > SDK_MAX_RETRY_AFTER:
            return (
                f"rate limited: the endpoint asked to wait {wait:.0f} s, more than the "
                f"{SDK_MAX_RETRY_AFTER:.0f} s a run waits"
            )
        return f"HTTP {error.status_code} from the endpoint: {text}; gave up after {sent} attempts"

    def _refuse_format(self, run: _Run, mode: StructuredOutput, text: str) -> None:
        """The server rejected ``response_format``: step down (auto) or stop the run (explicit)."""
        if self.structured_output != "auto":
            raise EndpointError(
                f"the endpoint {self._where()} rejects response_format {mode!r} ({text}); "
                "use --structured-output auto, json_object or off"
            )
        if run.mode == mode:  # the first of several concurrent refusals steps down, once
            run.mode = _FALLBACK[mode]
            logger.warning(
                "the endpoint rejects response_format %r (%s); asking with %s from now on",
                mode,
                text,
                "the prompt only" if run.mode == "off" else f"response_format {run.mode!r}",
            )

    def _raise_final(self, error: Any, text: str, sent: int) -> None:
        """Raise for status errors that no retry can heal; return for retryable ones."""
        status = error.status_code
        if status in (401, 403):
            raise EndpointError(
                f"the endpoint {self._where()} refused the API key (HTTP {status}: {text}); put "
                f"a valid key in ${self.api_key_env} or choose the variable with --api-key-env"
            ) from None
        if status == 404:
            raise EndpointError(
                f"the endpoint {self._where()} answered 404 for model {self.model!r} ({text}): "
                "check --model against the server's model list and that --base-url ends in /v1"
            ) from None
        if status < 500 and status not in _RETRYABLE_STATUS:
            raise RowFailed(
                f"the endpoint rejected the request (HTTP {status}): {text}", sent, retryable=False
            ) from None

    def _request_body(self, messages: list[Message], mode: StructuredOutput) -> dict[str, Any]:
        """The chat-completions JSON body.

        Sent through the SDK's raw ``client.post`` (its documented way to make requests it has
        no method for) rather than ``chat.completions.create``, whose typed request transform and
        response models cost ~5 ms of CPU a request and capped throughput at high concurrency.
        Status errors, timeouts and connection errors are the SDK's either way.
        """
        body: dict[str, Any] = {"model": self.model, "messages": messages}
        body.update(self.decoding.as_dict())
        if mode == "json_schema":
            body["response_format"] = json_schema_response_format()
        elif mode == "json_object":
            body["response_format"] = json_object_response_format()
        return body

    def _unreachable(self) -> EndpointError:
        return EndpointError(
            f"cannot connect to the endpoint {self._where()}: start the server (for example "
            "`vllm serve MODEL`) or fix --base-url"
        )

    def _where(self) -> str:
        return self.base_url or "api.openai.com"

    def _scrub(self, text: str) -> str:
        key = self._api_key.get_secret_value()
        if key and key != PLACEHOLDER_API_KEY:
            text = text.replace(key, "***")
        return text
