"""The local web app: a private feature browser for one model and one SAE.

    create_app(lm, sae, sae_spec, store=None, config=ServerConfig()) -> FastAPI
    bind_socket(host="127.0.0.1", port=8000) -> socket                 a busy port is an InputError
    serve(app, sock)                                                   blocks until interrupted

Routes come from the modules in ``ROUTERS`` (each ``router(state, forms) -> APIRouter``): ``pages`` (``/``,
``/feature/{id}``, ``/favicon.ico``) and ``api`` (``/healthz``, ``/api/feature/{id}``, ``/api/features``,
``/api/search``, ``/api/read``, ``/api/steer``, ``/api/attribute``) and ``graphs`` (``/graphs``, ``/graph/{name}``,
``/api/graph/{name}``, ``/api/graph/{name}/intervene``: saved attribution graphs); see their docstrings. ``GET /static/...``
serves the package's server/static directory only. What routes share (model, SAE, store, locks, caches) is an
``AppState`` (state.py); the request bodies and their plain-worded errors are in forms.py.

Limits (ServerConfig, all configurable): text length, max_new_tokens, samples per steering request, concurrent
generations and reads (one more than the cap gets 503 at once instead of queueing), request body size (413).
Invalid JSON or fields: 422 with one sentence naming the field. The model runs one request at a time (a lock):
interventions are hooks on the shared model.
"""

import dataclasses
import logging
import socket
from dataclasses import dataclass
from importlib import resources

from .._config import JsonConfig
from ..errors import ConfigError, InputError, SaescopeError
from . import security
from .api import interventions, read_json, steer_json  # noqa: F401  (the JSON contracts, importable from here)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServerConfig(JsonConfig):
    """Caps that keep a local server responsive. One more concurrent request than a cap gets HTTP 503."""
    max_text_chars: int = 4000            # /api/read text and /api/steer prompt
    max_new_tokens: int = 128             # /api/steer
    max_concurrent_generations: int = 2   # /api/steer requests running or waiting
    max_concurrent_reads: int = 8         # /api/read requests running or waiting
    max_body_bytes: int = 64 * 1024       # request body; larger -> 413
    max_top_k: int = 50                   # /api/read top_k
    max_samples: int = 8                  # /api/steer n (samples, one batch each for baseline and steered)
    dense_density: float = 0.01           # features active on more than this fraction of tokens are marked dense
    # security.py: a request head must arrive within header_timeout_s (slowloris), its body within
    # body_timeout_s (408); Host names besides localhost/127.0.0.1/[::1]/the bound address (--allowed-host)
    header_timeout_s: int = 5
    body_timeout_s: int = 20
    allowed_hosts: tuple[str, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "allowed_hosts", security.normalize_hosts(self.allowed_hosts))
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name not in ("allowed_hosts", "dense_density") and (not isinstance(v, int) or isinstance(v, bool)
                                                                     or v <= 0):
                raise ConfigError(f"ServerConfig.{f.name}: must be a positive integer, got {v!r}")
        d = self.dense_density
        if isinstance(d, bool) or not isinstance(d, (int, float)) or not 0 < d < 1:
            raise ConfigError(f"ServerConfig.dense_density: must be a number between 0 and 1, got {d!r}")



class _BodyLimit:
    """ASGI middleware: 413 for a request body larger than ``limit`` bytes (declared or streamed)."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        for k, v in scope.get("headers", []):
            if k == b"content-length" and v.isdigit() and int(v) > self.limit:
                return await _reject(send, self.limit)
        seen, too_large, rejected = 0, False, False

        async def limited():
            nonlocal seen, too_large
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.limit:
                    too_large = True
                    raise _TooLarge()
            return msg

        async def guarded_send(message):
            # A streamed body over the limit may be caught by the app's body parser and answered as a 400:
            # replace whatever the app answers with the 413.
            nonlocal rejected
            if not too_large:
                return await send(message)
            if not rejected:
                rejected = True
                await _reject(send, self.limit)

        try:
            return await self.app(scope, limited, guarded_send)
        except _TooLarge:
            if not rejected:
                await _reject(send, self.limit)


class _TooLarge(Exception):
    pass


async def _reject(send, limit: int):
    import json

    body = json.dumps({"detail": f"request body larger than {limit} bytes"}).encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def static_dir() -> str:
    return str(resources.files("saescope.server").joinpath("static"))


def create_app(lm, sae, sae_spec: str, store=None, config: ServerConfig = ServerConfig(), graphs=()):
    """The FastAPI app serving ``sae`` on ``lm``; ``store``: a FeatureStore (statistics) or None; ``graphs``:
    folders of saved attribution graphs (and single graph files) shown at /graphs."""
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from fastapi.staticfiles import StaticFiles

    from .forms import plain_message, request_models, validation_message
    from .state import AppState

    from .graph_files import GraphFolder

    state = AppState(lm, sae, sae_spec, store, config)
    state.graphs = GraphFolder(graphs)
    forms = request_models(config)
    app = FastAPI(title="saescope", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(_BodyLimit, limit=config.max_body_bytes)
    app.add_middleware(security.BodyDeadline, seconds=config.body_timeout_s)     # slow bodies -> 408
    app.add_middleware(security.HostGuard, allowed=config.allowed_hosts)        # outermost: Host check first
    app.mount("/static", StaticFiles(directory=static_dir()), name="static")
    app.state.config = config
    app.state.saescope = state

    @app.exception_handler(SaescopeError)
    async def _user_error(request: Request, exc: SaescopeError):
        return JSONResponse({"detail": plain_message(str(exc))}, status_code=422)

    @app.exception_handler(RequestValidationError)
    async def _invalid_request(request: Request, exc: RequestValidationError):
        # One sentence naming the field, without echoing the input (inf or a lone surrogate cannot be JSON).
        return JSONResponse({"detail": validation_message(exc.errors())}, status_code=422)

    for make_router in route_modules():    # every group of routes is included here, and only here
        app.include_router(make_router(state, forms))
    return app


def route_modules() -> tuple:
    """The route groups, each ``router(state, forms) -> fastapi.APIRouter``. Add a new group to this tuple."""
    from . import api, graphs, pages

    return (pages.router, api.router, graphs.router)


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening socket on host:port, or an InputError naming the address when it cannot be bound."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        reason = "is in use" if exc.errno in (98, 48, 10048) else f"cannot be bound ({exc.strerror})"
        raise InputError(f"port {port} on {host} {reason}; pass --port with a free port (or --port 0)") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def serve(app, sock: socket.socket) -> None:
    """Run ``app`` with uvicorn on the bound socket (``bind_socket``) until interrupted."""
    import uvicorn

    server = uvicorn.Server(security.uvicorn_config(app))   # request-head deadline (security.py)
    server.run(sockets=[sock])
