"""The local web app: a private feature browser for one model and one SAE.

    create_app(lm, sae, sae_spec, store=None, config=ServerConfig()) -> FastAPI
    bind_socket(host="127.0.0.1", port=8000) -> socket                 a busy port is an InputError
    serve(app, sock)                                                   blocks until interrupted

Routes::

    GET  /                    index: search by text (inference), feature table (search/sort), steering playground
    GET  /feature/{id}        a feature page (404 page when out of range)
    GET  /api/feature/{id}    the feature's record as JSON (404 when out of range)
    GET  /api/features        index rows (?sort=index|density|max|mean|label&q=&limit=&offset=)
    POST /api/read            {"text", "top_k"?} -> the JSON of ``saescope read --json``
    POST /api/steer           {"prompt", "feature", "strength", "method", ...} -> the JSON of ``saescope steer --json``
    GET  /static/...          files of the package's server/static directory only
    GET  /healthz

Limits (ServerConfig, all configurable): text length, max_new_tokens, concurrent generations and reads (one
more than the cap gets 503 at once instead of queueing), request body size (413). Invalid JSON or fields: 422.
The model runs one request at a time (a lock): interventions are hooks on the shared model.
"""

import dataclasses
import logging
import socket
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Literal

from .._config import JsonConfig
from ..errors import ConfigError, InputError, SaescopeError
from . import security

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
    # security.py: a request head must arrive within header_timeout_s (slowloris), its body within
    # body_timeout_s (408); Host names besides localhost/127.0.0.1/[::1]/the bound address (--allowed-host)
    header_timeout_s: int = 5
    body_timeout_s: int = 20
    allowed_hosts: tuple[str, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "allowed_hosts", security.normalize_hosts(self.allowed_hosts))
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name != "allowed_hosts" and (not isinstance(v, int) or isinstance(v, bool) or v <= 0):
                raise ConfigError(f"ServerConfig.{f.name}: must be a positive integer, got {v!r}")



class _Gate:
    """At most ``cap`` holders; ``enter`` fails at once (-> 503) instead of queueing beyond it."""

    def __init__(self, cap: int):
        self.cap, self.n, self._lock = cap, 0, threading.Lock()

    @contextmanager
    def enter(self, what: str):
        from fastapi import HTTPException

        with self._lock:
            if self.n >= self.cap:
                raise HTTPException(503, f"busy: {self.cap} {what} already running; try again shortly")
            self.n += 1
        try:
            yield
        finally:
            with self._lock:
                self.n -= 1


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


def create_app(lm, sae, sae_spec: str, store=None, config: ServerConfig = ServerConfig()):
    """The FastAPI app serving ``sae`` on ``lm``; ``store``: a FeatureStore (statistics) or None."""
    from fastapi import FastAPI, HTTPException, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse
    from fastapi.staticfiles import StaticFiles
    from pydantic import BaseModel, ConfigDict, Field, field_validator

    from .._checks import check_positions
    from ..interp import generate_steered, read_features
    from ..report import html
    from ..report.stats import FeatureRecord, vocab_strings
    from ..report.store import FeatureSummary
    from ..site import attach, load_labels, logit_lens

    att = attach(lm, sae)
    cfg = config
    labels = load_labels(sae)
    meta = {**(store.meta if store is not None else {}), "model": lm.name, "hook": sae.cfg.metadata.hook_name,
            "neuronpedia_id": sae.cfg.metadata.neuronpedia_id}
    model_lock = threading.Lock()
    gen_gate, read_gate = _Gate(cfg.max_concurrent_generations), _Gate(cfg.max_concurrent_reads)
    vocab: list[str] = []

    app = FastAPI(title="saescope", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(_BodyLimit, limit=cfg.max_body_bytes)
    app.add_middleware(security.BodyDeadline, seconds=cfg.body_timeout_s)        # slow bodies -> 408
    app.add_middleware(security.HostGuard, allowed=cfg.allowed_hosts)           # outermost: Host check first
    app.mount("/static", StaticFiles(directory=static_dir()), name="static")
    app.state.config = cfg

    @app.exception_handler(SaescopeError)
    async def _user_error(request: Request, exc: SaescopeError):
        return JSONResponse({"detail": str(exc)}, status_code=422)

    @app.exception_handler(RequestValidationError)
    async def _invalid_request(request: Request, exc: RequestValidationError):
        # One line, without echoing the input back (inf or a lone surrogate cannot be rendered as JSON).
        first = (exc.errors() or [{}])[0]
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
        return JSONResponse({"detail": f"{where}: {first.get('msg', 'invalid request')}"}, status_code=422)

    class ReadRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        text: str = Field(min_length=1, max_length=cfg.max_text_chars)
        top_k: int = Field(5, ge=1, le=cfg.max_top_k)

    class SteerRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        prompt: str = Field(min_length=1, max_length=cfg.max_text_chars)
        feature: list[int] | int = Field(default_factory=list)
        strength: list[float] | float = Field(default_factory=list)
        method: Literal["add", "clamp", "scale", "ablate"] = "add"
        algebra: str | None = Field(None, max_length=1000)
        positions: str = "all"
        max_new_tokens: int = Field(32, ge=1, le=cfg.max_new_tokens)
        temperature: float = Field(1.0, ge=0, le=100, allow_inf_nan=False)
        top_p: float = Field(1.0, gt=0, le=1, allow_inf_nan=False)
        seed: int | None = Field(0, ge=0, le=2**32 - 1)

        @field_validator("positions")
        @classmethod
        def _positions(cls, v):   # N range-checked before any model work (huge N: 422, not 500)
            return check_positions(v, "positions")

    def feature_index(i: int) -> int:
        if not 0 <= i < sae.d_sae:
            raise HTTPException(404, f"feature {i} does not exist: this SAE has {sae.d_sae} features (0..{sae.d_sae - 1})")
        return i

    def record(i: int) -> FeatureRecord:
        rec = store.get(i) if store is not None else None
        if rec is None:   # no statistics: the logit lens alone, computed now
            rec = FeatureRecord(i, 0.0, 0.0, 0.0, 0.0, 0, label=labels.get(i))
            if att.has_logit_lens:
                if not vocab:
                    vocab.extend(vocab_strings(lm))
                lens = logit_lens(lm, sae.feature_directions([i]).detach(), 10)
                rec.pos_logits = [(vocab[t], round(v, 5)) for v, t in zip(lens.pos_values[0].tolist(),
                                                                          lens.pos_ids[0].tolist())]
                rec.neg_logits = [(vocab[t], round(v, 5)) for v, t in zip(lens.neg_values[0].tolist(),
                                                                          lens.neg_ids[0].tolist())]
        elif i in labels:
            rec.label = labels[i]
        return rec

    def summaries() -> list[FeatureSummary]:
        if store is not None:
            return store.summaries()
        return [FeatureSummary(i, 0.0, 0.0, 0.0, labels.get(i)) for i in range(sae.d_sae)]

    def page(title: str, body: str, status: int = 200) -> HTMLResponse:
        scripts = f"<script>{html.asset('index.js')}</script>" if 'id="features-data"' in body else ""
        scripts += "<script src=\"/static/app.js\"></script>"
        return HTMLResponse(html.page(title, body, html.header("/", meta), scripts), status_code=status)

    # ------------------------------------------------------------------ pages
    @app.get("/", response_class=HTMLResponse)
    def index():
        note = "" if store is not None else ("<p class=\"muted\">No feature statistics for this SAE: build them with "
                                             "<code>saescope dashboard</code> and pass <code>--store</code>.</p>")
        body = html.index_body(summaries(), meta, "/feature/{id}", extra=note + _read_panel(cfg) + _steer_panel(cfg))
        return page(f"saescope · {meta.get('hook')}", body)

    @app.get("/feature/{index}", response_class=HTMLResponse)
    def feature_page(index: int):
        if not 0 <= index < sae.d_sae:
            return page("not found", f"<h1>No feature {index}</h1><p>This SAE has {sae.d_sae} features "
                                     f"(0..{sae.d_sae - 1}). <a href=\"/\">Back to the index</a></p>", status=404)
        rec = record(index)
        body = html.feature_body(rec, meta, store.hist_edges if store is not None else [],
                                 link=lambda i: f"/feature/{i}", n_tokens=store.n_tokens if store is not None else None)
        body += _steer_panel(cfg, feature=index, strength=round(max(rec.max, 1.0) * 4, 2))
        return page(f"Feature {index}", body)

    # ------------------------------------------------------------------ API
    @app.get("/healthz")
    def healthz():
        return {"ok": True, "model": lm.name, "sae": sae_spec, "d_sae": sae.d_sae}

    @app.get("/api/feature/{index}")
    def api_feature(index: int):
        rec = record(feature_index(index))
        return {"model": lm.name, "sae": sae_spec, "hook": meta.get("hook"), "has_stats": store is not None,
                "neuronpedia_url": html.neuronpedia_url(meta, index), **rec.to_dict()}

    @app.get("/api/features")
    def api_features(sort: str = "index", q: str | None = None, limit: int = 100, offset: int = 0):
        if store is None:
            rows = [s for s in summaries() if not q or q == str(s.index) or (s.label and q.lower() in s.label.lower())]
            rows = rows[offset: offset + limit]
        else:
            rows = store.summaries(sort=sort, query=q, limit=max(0, min(limit, 10_000)), offset=max(0, offset))
        return {"features": [s.to_dict() for s in rows]}

    @app.get("/api/search")
    def api_search(q: str = "", limit: int = 20):
        """Features ranked by how well their explanation or label matches ``q`` (``saescope.explain.search``)."""
        from ..explain.search import search_features

        return search_features(store, q, limit, labels)

    @app.post("/api/read")
    def api_read(req: ReadRequest):
        with read_gate.enter("reads"), model_lock:
            [res] = read_features(lm, sae, req.text, top_k=req.top_k)
        return read_json(lm, sae_spec, res)

    @app.post("/api/steer")
    def api_steer(req: SteerRequest):
        ivs = interventions(req)
        with gen_gate.enter("generations"), model_lock:
            res = generate_steered(lm, sae, req.prompt, ivs, max_new_tokens=req.max_new_tokens,
                                   temperature=req.temperature, top_p=req.top_p, seed=req.seed)
        return steer_json(lm, sae_spec, res)

    return app


# The JSON of `saescope read --json` and `saescope steer --json` (src/saescope/cli/interp.py); tests/test_server.py
# checks that both stay identical to the CLI's output.
def read_json(lm, sae_spec: str, res) -> dict:
    d = res.to_dict()
    return {"model": lm.name, "sae": sae_spec, "hook": res.hook, "tokens": d["tokens"],
            "mean_l0": res.mean_l0, "percent_active": res.percent_active}


def steer_json(lm, sae_spec: str, res) -> dict:
    return {**res.to_dict(), "model": lm.name, "sae": sae_spec}


def interventions(req) -> list:
    """The request's interventions, exactly as ``saescope steer`` builds them from its options
    (``saescope.interp.build_interventions``, the function both call)."""
    from ..interp import build_interventions

    feats = [req.feature] if isinstance(req.feature, int) else list(req.feature)
    strengths = [req.strength] if isinstance(req.strength, (int, float)) else list(req.strength)
    return build_interventions(feats, strengths, req.method, req.positions, req.algebra)


def _read_panel(cfg: ServerConfig) -> str:
    return ("<h2>Search by text</h2><form id=\"read-form\"><textarea id=\"read-text\" rows=\"3\" "
            f"maxlength=\"{cfg.max_text_chars}\" placeholder=\"type text: see the top features of every token\"></textarea>"
            f"<p>top <input id=\"read-top\" type=\"number\" min=\"1\" max=\"{cfg.max_top_k}\" value=\"5\" style=\"width:4em\"> "
            "<button id=\"read-go\" type=\"submit\">Read</button> <span id=\"read-err\" class=\"err\"></span></p></form>"
            "<div id=\"read-out\"></div>")


def _steer_panel(cfg: ServerConfig, feature: int | None = None, strength: float = 8.0) -> str:
    feats = "" if feature is None else str(feature)
    return ("<h2>Steering</h2><form id=\"steer-form\"><p><input id=\"steer-prompt\" size=\"40\" "
            f"maxlength=\"{cfg.max_text_chars}\" placeholder=\"prompt\" value=\"The\"> "
            f"features <input id=\"steer-features\" size=\"10\" placeholder=\"12, 7\" value=\"{feats}\"> "
            f"strength <input id=\"steer-strength\" size=\"6\" value=\"{strength:g}\"> "
            "<select id=\"steer-method\"><option>add</option><option>clamp</option><option>scale</option>"
            "<option>ablate</option></select> "
            f"tokens <input id=\"steer-max\" type=\"number\" min=\"1\" max=\"{cfg.max_new_tokens}\" value=\"24\" style=\"width:4em\"> "
            "temperature <input id=\"steer-temp\" size=\"3\" value=\"0\"> "
            "<button id=\"steer-go\" type=\"submit\">Steer</button> <span id=\"steer-err\" class=\"err\"></span></p></form>"
            "<div class=\"cols\"><div><h3>baseline</h3><div id=\"steer-baseline\" class=\"out\"></div></div>"
            "<div><h3>steered</h3><div id=\"steer-steered\" class=\"out\"></div></div></div>")


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
