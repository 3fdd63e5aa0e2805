"""Chat-completions clients: any OpenAI-compatible endpoint over HTTP, with retries, a concurrency cap and usage.

    client = ChatClient("http://127.0.0.1:8000/v1", model=None, api_key_env="OPENAI_API_KEY")
    reply = client.chat([{"role": "system", "content": ...}, {"role": "user", "content": ...}])
    reply.text, reply.prompt_tokens, reply.completion_tokens
    client.usage.summary(prices) -> {"requests", "retries", "prompt_tokens", "completion_tokens", "cost_usd", ...}

Works with local servers (vLLM, Ollama, llama.cpp's server) and hosted APIs. The API key is read from the
environment variable the user names (never from a flag value). ``model=None`` asks the endpoint's ``/models``
and takes its only model. Retries: timeouts, connection errors, HTTP 429 and 5xx, with exponential backoff
(``Retry-After`` honoured, capped). Every failure is one line naming the endpoint (``LLMError``).
"""
from __future__ import annotations

import json
import logging
import os
import random
import threading
import time
from dataclasses import dataclass, field

from .._checks import checked_float, checked_int
from .._config import JsonConfig
from ..errors import ConfigError, InputError, SaescopeError

log = logging.getLogger(__name__)

RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
FATAL_STATUS = frozenset({401, 403, 404})     # no point going on: key, permission or model name is wrong


class LLMError(SaescopeError):
    """The endpoint could not be used for this request (after retries). ``fatal``: no later request will work."""

    def __init__(self, message: str, fatal: bool = False):
        super().__init__(message)
        self.fatal = fatal


@dataclass(frozen=True)
class ChatReply:
    text: str
    model: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    usage_reported: bool = True


@dataclass(frozen=True)
class Price(JsonConfig):
    """US dollars per million prompt (input) and completion (output) tokens."""
    input_per_mtok: float = 0.0
    output_per_mtok: float = 0.0

    @classmethod
    def parse(cls, text: str) -> tuple[str, "Price"]:
        """``MODEL=IN:OUT`` (dollars per million tokens) -> (model, Price)."""
        model, sep, rest = text.rpartition("=")
        parts = rest.split(":")
        if not sep or not model or len(parts) != 2:
            raise InputError(f"--price: expected MODEL=IN:OUT (dollars per million tokens), got {text!r}")
        vals = []
        for p in parts:
            try:
                vals.append(checked_float(float(p), f"--price {text!r}", lo=0, hi=1e6))
            except ValueError:
                raise InputError(f"--price: {p!r} in {text!r} is not a number") from None
        return model, cls(*vals)


@dataclass
class Usage:
    """Token and request counts per model (thread-safe)."""
    requests: int = 0
    retries: int = 0
    unreported: int = 0                                   # replies without a ``usage`` field
    per_model: dict = field(default_factory=dict)         # model -> [prompt_tokens, completion_tokens, requests]
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, reply: ChatReply) -> None:
        with self._lock:
            self.requests += 1
            self.unreported += 0 if reply.usage_reported else 1
            row = self.per_model.setdefault(reply.model, [0, 0, 0])
            row[0] += reply.prompt_tokens
            row[1] += reply.completion_tokens
            row[2] += 1

    def retried(self) -> None:
        with self._lock:
            self.retries += 1

    def summary(self, prices: dict[str, Price] | None = None) -> dict:
        """Totals; ``cost_usd`` is None when a model used has no price (unknown, not free)."""
        prices = prices or {}
        with self._lock:
            models = {m: {"prompt_tokens": p, "completion_tokens": c, "requests": n}
                      for m, (p, c, n) in self.per_model.items()}
            out = {"requests": self.requests, "retries": self.retries, "replies_without_usage": self.unreported}
        cost = 0.0
        for m, row in models.items():
            price = prices.get(m)
            row["cost_usd"] = None if price is None else (row["prompt_tokens"] * price.input_per_mtok
                                                          + row["completion_tokens"] * price.output_per_mtok) / 1e6
            cost = None if cost is None or row["cost_usd"] is None else cost + row["cost_usd"]
        out.update(prompt_tokens=sum(r["prompt_tokens"] for r in models.values()),
                   completion_tokens=sum(r["completion_tokens"] for r in models.values()),
                   cost_usd=cost if models else 0.0, models=models)
        return out


@dataclass(frozen=True)
class ClientConfig(JsonConfig):
    timeout_s: float = 120.0        # per request (connect, read, write)
    max_retries: int = 4            # after the first try
    backoff_s: float = 1.0          # first wait; doubles each retry (with jitter)
    max_backoff_s: float = 30.0
    concurrency: int = 4            # requests in flight at once, across threads
    temperature: float = 0.0
    max_tokens: int = 256           # per reply

    def __post_init__(self):
        checked_float(self.timeout_s, "ClientConfig.timeout_s", lo=0, hi=3600, lo_open=True, error=ConfigError)
        checked_int(self.max_retries, "ClientConfig.max_retries", lo=0, hi=100, error=ConfigError)
        checked_float(self.backoff_s, "ClientConfig.backoff_s", lo=0, hi=600, error=ConfigError)
        checked_float(self.max_backoff_s, "ClientConfig.max_backoff_s", lo=0, hi=3600, error=ConfigError)
        checked_int(self.concurrency, "ClientConfig.concurrency", lo=1, hi=1024, error=ConfigError)
        checked_float(self.temperature, "ClientConfig.temperature", lo=0, hi=10, error=ConfigError)
        checked_int(self.max_tokens, "ClientConfig.max_tokens", lo=1, hi=1 << 20, error=ConfigError)


def _api_key(env: str | None) -> str | None:
    if env is None:
        return None
    if not env.replace("_", "").isalnum():
        raise InputError(f"--api-key-env: {env!r} is not an environment variable name")
    key = os.environ.get(env)
    if not key:
        raise InputError(f"--api-key-env: the environment variable {env} is not set or empty")
    return key


class ChatClient:
    """A small synchronous client for ``POST {endpoint}/chat/completions``; safe to share between threads."""

    def __init__(self, endpoint: str, model: str | None = None, api_key_env: str | None = None,
                 config: ClientConfig = ClientConfig(), transport=None):
        import httpx

        endpoint = endpoint.strip().rstrip("/")
        if not endpoint.startswith(("http://", "https://")):
            raise InputError(f"--endpoint: expected an http(s) URL such as http://127.0.0.1:8000/v1, got {endpoint!r}")
        self.endpoint, self.config = endpoint, config
        self.usage = Usage()
        headers = {"Content-Type": "application/json"}
        key = _api_key(api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        self._http = httpx.Client(timeout=config.timeout_s, headers=headers, transport=transport,
                                  limits=httpx.Limits(max_connections=config.concurrency + 2))
        self._slots = threading.BoundedSemaphore(config.concurrency)
        self._rng = random.Random(0)
        self.model = model or self._only_model()
        if model:
            self._probe()

    @property
    def name(self) -> str:
        return self.model

    def close(self) -> None:
        self._http.close()

    def _only_model(self) -> str:
        """The endpoint's model when it serves exactly one (``GET /models``)."""
        data = self._request("GET", "/models", None, retry=False)
        ids = [m.get("id") for m in data.get("data", []) if isinstance(m, dict)] if isinstance(data, dict) else []
        ids = [i for i in ids if isinstance(i, str) and i]
        if len(ids) != 1:
            shown = ", ".join(ids[:8]) or "none"
            raise LLMError(f"{self.endpoint}/models lists {len(ids)} models ({shown}); pass --model NAME", fatal=True)
        return ids[0]

    def _probe(self) -> None:
        """Fail at once (no retries) when nothing answers at the endpoint; any HTTP answer will do."""
        import httpx

        try:
            self._http.get(self.endpoint + "/models")
        except httpx.TimeoutException:
            raise LLMError(f"{self.endpoint} did not answer within {self.config.timeout_s:g}s", fatal=True) from None
        except httpx.TransportError as exc:
            raise LLMError(f"{self.endpoint} cannot be reached ({_short(exc)}); is the server running?", fatal=True) from None

    def chat(self, messages: list[dict], max_tokens: int | None = None, temperature: float | None = None) -> ChatReply:
        """One chat completion -> ChatReply (the first choice's message content)."""
        body = {"model": self.model, "messages": messages,
                "max_tokens": max_tokens or self.config.max_tokens,
                "temperature": self.config.temperature if temperature is None else temperature}
        data = self._request("POST", "/chat/completions", body)
        reply = _parse_completion(data, self.model, self.endpoint)
        self.usage.add(reply)
        return reply

    def _request(self, method: str, path: str, body: dict | None, retry: bool = True):
        """JSON of a 2xx answer, retrying what may pass; LLMError otherwise."""
        import httpx

        url = self.endpoint + path
        cfg = self.config
        for attempt in range(cfg.max_retries + 1):
            wait = None
            try:
                with self._slots:
                    resp = self._http.request(method, url, json=body)
            except httpx.TimeoutException:
                problem = f"timed out after {cfg.timeout_s:g}s"
            except httpx.TransportError as exc:          # refused, DNS, reset
                problem = f"cannot be reached ({_short(exc)})"
            else:
                if 200 <= resp.status_code < 300:
                    try:
                        return resp.json()
                    except (json.JSONDecodeError, UnicodeDecodeError):
                        raise LLMError(f"{url} returned a malformed response (not JSON): {_snip(resp.text)}") from None
                problem = f"answered HTTP {resp.status_code}: {_snip(_error_text(resp))}"
                if resp.status_code in FATAL_STATUS:
                    raise LLMError(f"{url} {problem}", fatal=True)
                if resp.status_code not in RETRY_STATUS:
                    raise LLMError(f"{url} {problem}")
                wait = _retry_after(resp)
            if not retry:
                raise LLMError(f"{url} {problem}", fatal=True)
            if attempt == cfg.max_retries:
                raise LLMError(f"{url} {problem} (gave up after {attempt + 1} tries)", fatal=True)
            self.usage.retried()
            delay = min(cfg.max_backoff_s, wait if wait is not None else cfg.backoff_s * 2 ** attempt)
            delay *= 1.0 if wait is not None else 0.75 + 0.5 * self._rng.random()
            log.info("%s %s; retrying in %.1fs", url, problem, delay)
            time.sleep(delay)
        raise AssertionError("unreachable")


def _parse_completion(data, model: str, endpoint: str) -> ChatReply:
    where = f"{endpoint}/chat/completions"
    try:
        msg = data["choices"][0]["message"]
        text = msg.get("content")
    except (KeyError, IndexError, TypeError, AttributeError):
        raise LLMError(f"{where} returned a malformed response (no choices[0].message): {_snip(json.dumps(data))}") from None
    if text is None:
        text = msg.get("reasoning_content") or ""
    if not isinstance(text, str):
        raise LLMError(f"{where} returned a malformed response (message content is {type(text).__name__})")
    usage = data.get("usage") if isinstance(data, dict) else None
    try:
        p, c = int(usage["prompt_tokens"]), int(usage.get("completion_tokens") or 0)
        reported = p >= 0 and c >= 0
    except (KeyError, TypeError, ValueError):
        p = c = 0
        reported = False
    name = data.get("model") if isinstance(data.get("model"), str) and data.get("model") else model
    return ChatReply(text, name, max(p, 0), max(c, 0), reported)


def _retry_after(resp) -> float | None:
    value = resp.headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def _error_text(resp) -> str:
    try:
        data = resp.json()
        err = data.get("error", data) if isinstance(data, dict) else data
        return str(err.get("message", err) if isinstance(err, dict) else err)
    except Exception:  # noqa: BLE001 - any body at all is only shown
        return resp.text


def _short(exc: Exception) -> str:
    return _snip(str(exc) or type(exc).__name__, 120)


def _snip(text: str, n: int = 160) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 1] + "…"
