"""Protections of the local server against the web and against slow clients.

    HostGuard(app, allowed=())        ASGI: answer only requests whose ``Host`` names this server (DNS rebinding)
    BodyDeadline(app, seconds)        ASGI: a request body must arrive within ``seconds`` (else 408, connection closed)
    uvicorn_config(app, **overrides)  the uvicorn settings ``serve`` uses: a request head must arrive within
                                      ``ServerConfig.header_timeout_s`` (slowloris), ``app.state.config`` read
    normalize_hosts(names)            ``--allowed-host`` values checked and normalised (ConfigError when malformed)

Why: a page on any web site can make the browser talk to ``http://127.0.0.1:8000`` after pointing its own name
at 127.0.0.1 (DNS rebinding); the browser then sends ``Host: attacker.example``. A request is answered only
when its Host is a loopback name or address (``localhost``, ``127.0.0.1``, ``[::1]``, any port: port
forwarding changes the port), the address the connection arrived at, or a name the user allowed. Anything
else gets 421 (400 when the Host is missing or malformed) and a one-line JSON body.

Every response also carries ``X-Content-Type-Options: nosniff``, ``Referrer-Policy: no-referrer``,
``X-Frame-Options: DENY``/``frame-ancestors 'none'`` and ``Cross-Origin-Resource-Policy: same-origin``.
"""
from __future__ import annotations

import asyncio
import ipaddress
import json
import re

from ..errors import ConfigError

_HOST_RE = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)(?::([0-9]{0,5}))?")
_NAME_RE = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,62})(?:\.[a-z0-9_](?:[a-z0-9_-]{0,62}))*")
SECURITY_HEADERS = [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer"),
                    (b"x-frame-options", b"DENY"), (b"content-security-policy", b"frame-ancestors 'none'"),
                    (b"cross-origin-resource-policy", b"same-origin")]


# ---------------------------------------------------------------------------------------------- Host check
def _host_key(text: str):
    """A host (no port) as an ``ipaddress`` object or a lower-case name without a trailing dot; None if malformed."""
    text = text.strip().lower()
    if text.startswith("[") and text.endswith("]"):
        try:
            ip = ipaddress.IPv6Address(text[1:-1])
        except ValueError:
            return None
        return ip.ipv4_mapped or ip
    if text.endswith("."):
        text = text[:-1]
    try:
        return ipaddress.IPv4Address(text)
    except ValueError:
        pass
    if ":" in text:                       # a bare IPv6 address (as --allowed-host, not as a Host header)
        try:
            ip = ipaddress.IPv6Address(text)
        except ValueError:
            return None
        return ip.ipv4_mapped or ip
    return text if len(text) <= 253 and _NAME_RE.fullmatch(text) else None


def parse_host_header(value: bytes):
    """``Host`` header bytes -> host key (see ``_host_key``), or None when malformed (bad syntax or port)."""
    try:
        text = value.decode("ascii")
    except UnicodeDecodeError:
        return None
    m = _HOST_RE.fullmatch(text)
    if m is None or (m.group(2) and int(m.group(2)) > 65535):
        return None
    host = m.group(1)
    if not host.startswith("[") and ":" in host:
        return None
    return _host_key(host)


def normalize_hosts(names) -> tuple[str, ...]:
    """``--allowed-host`` values (names or addresses, no port) in canonical form; ConfigError names a bad one."""
    out = []
    for name in names or ():
        key = _host_key(name) if isinstance(name, str) else None
        if key is None:
            raise ConfigError(f"allowed host {name!r}: expected a host name or an IP address (no port, no scheme)")
        out.append(str(key))
    return tuple(dict.fromkeys(out))


def _is_loopback(key) -> bool:
    return key == "localhost" or (isinstance(key, (ipaddress.IPv4Address, ipaddress.IPv6Address)) and key.is_loopback)


class HostGuard:
    """ASGI middleware: refuse (421/400) any request whose ``Host`` does not name this server; add the
    security headers to every response."""

    def __init__(self, app, allowed=()):
        self.app = app
        self.allowed = {_host_key(h) for h in normalize_hosts(allowed)}

    def allows(self, key, local_addr: str | None) -> bool:
        if key is None:
            return False
        if _is_loopback(key) or key in self.allowed:
            return True
        local = _host_key(f"[{local_addr}]" if local_addr and ":" in local_addr else local_addr or "")
        return local is not None and key == local

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        hosts = [v for k, v in scope.get("headers", []) if k == b"host"]
        key = parse_host_header(hosts[0]) if len(hosts) == 1 else None
        local = (scope.get("server") or (None, None))[0]
        if not self.allows(key, local):
            if scope["type"] == "websocket":
                return await send({"type": "websocket.close", "code": 1008})
            shown = "missing" if not hosts else repr(hosts[0].decode("latin-1")[:80])
            status = 421 if key is not None else 400
            why = (f"Host {shown} is not a name of this server" if key is not None else
                   f"Host header {shown} is missing, repeated or malformed")
            return await answer(send, status, f"{why}; it answers to localhost, 127.0.0.1 and [::1] "
                                              f"(serve with --allowed-host NAME to add a name)")

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                have = {k.lower() for k, _ in message.get("headers", [])}
                message = {**message, "headers": [*message.get("headers", []),
                                                  *((k, v) for k, v in SECURITY_HEADERS if k not in have)]}
            await send(message)

        return await self.app(scope, receive, send_with_headers if scope["type"] == "http" else send)


async def answer(send, status: int, detail: str, close: bool = True) -> None:
    """Send a complete JSON response ``{"detail": ...}`` (one line); ``close`` ends the connection after it."""
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               *SECURITY_HEADERS]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


# ---------------------------------------------------------------------------------------------- slow clients
class _BodyTimeout(Exception):
    pass


class BodyDeadline:
    """ASGI middleware: the whole request body must arrive within ``seconds`` of the request head; otherwise the
    app's read fails, the client gets 408 and the connection is closed (a slow body cannot hold a request open)."""

    def __init__(self, app, seconds: float):
        self.app, self.seconds = app, float(seconds)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.seconds
        body_done, timed_out, answered = False, False, False

        async def timed_receive():
            nonlocal body_done, timed_out
            if body_done or timed_out:   # after the body: waiting for a disconnect is not bounded
                return await receive()
            try:
                msg = await asyncio.wait_for(receive(), max(deadline - loop.time(), 0.0))
            except asyncio.TimeoutError:
                timed_out = True
                raise _BodyTimeout() from None
            if msg["type"] != "http.request" or not msg.get("more_body", False):
                body_done = True
            return msg

        async def guarded_send(message):
            # The app may catch the failed read and answer (e.g. 400 "error parsing the body"): answer 408 instead.
            nonlocal answered
            if not timed_out:
                return await send(message)
            if not answered:
                answered = True
                await answer(send, 408, f"request body not received within {self.seconds:g} s")

        try:
            await self.app(scope, timed_receive, guarded_send)
        except _BodyTimeout:
            if not answered:
                answered = True
                await answer(send, 408, f"request body not received within {self.seconds:g} s")


def _guarded_h11(header_timeout: float):
    """uvicorn's h11 protocol with a deadline for each request head: from the moment the connection opens (or
    the previous response ends) until the head is complete. A connection that has not sent a complete head
    by then is closed, however many bytes it trickles (uvicorn's keep-alive timer restarts on every byte)."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class GuardedH11Protocol(H11Protocol):
        _head_timer = None

        def connection_made(self, transport):
            super().connection_made(transport)
            self._arm_head_timer()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            self._check_busy()

        def on_response_complete(self) -> None:
            self._arm_head_timer()            # the next request's head on a kept-alive connection
            super().on_response_complete()
            self._check_busy()                # a pipelined request may already be running

        def connection_lost(self, exc):
            self._cancel_head_timer()
            super().connection_lost(exc)

        def _busy(self) -> bool:
            return self.cycle is not None and not self.cycle.response_complete

        def _check_busy(self) -> None:
            if self._busy():
                self._cancel_head_timer()

        def _arm_head_timer(self) -> None:
            self._cancel_head_timer()
            self._head_timer = self.loop.call_later(header_timeout, self._head_timed_out)

        def _cancel_head_timer(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_timed_out(self) -> None:
            self._head_timer = None
            if not self._busy() and not self.transport.is_closing():
                self.transport.close()

    return GuardedH11Protocol


def uvicorn_config(app, **overrides):
    """The uvicorn ``Config`` for ``app`` (a ``create_app`` app): h11 with the request-head deadline of
    ``app.state.config.header_timeout_s``, short keep-alive, quiet logs. ``overrides``: other Config options."""
    import uvicorn

    cfg = app.state.config
    kw = dict(http=_guarded_h11(cfg.header_timeout_s), log_level="warning", access_log=False,
              timeout_graceful_shutdown=2, timeout_keep_alive=min(5, cfg.header_timeout_s))
    kw.update(overrides)
    return uvicorn.Config(app, **kw)
