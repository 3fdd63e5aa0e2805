"""The local server against the web and against slow clients, second round: Host header checks (DNS rebinding),
request heads and bodies that never finish (slowloris), absurd sampling parameters, and the HTML/JSON that
carries user text into pages.

The server runs exactly as ``saescope serve`` runs it (``security.uvicorn_config``: the guarded h11 protocol) in a
thread of this process on 127.0.0.1, with short deadlines (head 2 s, body 3 s) so the slow-client tests are quick.
Raw sockets are used wherever the exact bytes of a request matter (Host headers, byte-by-byte heads).
"""
from __future__ import annotations

import asyncio
import json
import re
import socket
import threading
import time

import pytest

pytest.importorskip("saescope.server")
from saescope.server import app as app_mod  # noqa: E402
from saescope.server import security  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

HOOK = "blocks.3.hook_resid_pre"
HEAD_S, BODY_S = 2, 3
ALLOWED = ("saescope.test", "10.11.12.13")


class GuardedServer:
    """``create_app`` served with ``security.uvicorn_config`` (as ``serve`` does) on 127.0.0.1:<free port>."""

    def __init__(self, app):
        import uvicorn

        self.sock = app_mod.bind_socket("127.0.0.1", 0)
        self.port = self.sock.getsockname()[1]
        self.server = uvicorn.Server(security.uvicorn_config(app, log_level="critical"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        self.watchdog = threading.Timer(240, self.stop)
        self.watchdog.daemon = True
        self.watchdog.start()
        deadline = time.time() + 30
        while not self.server.started and time.time() < deadline:
            time.sleep(0.01)
        assert self.server.started

    def raw(self, data: bytes, timeout: float = 30) -> bytes:
        """Send ``data`` on a fresh connection; everything the server answers until it closes or goes quiet."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as s:
            s.sendall(data)
            return _read_response(s)

    def get(self, path: str, host: str | None = "127.0.0.1", extra: bytes = b"") -> tuple[int, dict, bytes]:
        head = f"GET {path} HTTP/1.1\r\n".encode()
        if host is not None:
            head += b"Host: " + host.encode("utf-8") + b"\r\n"
        return parse(self.raw(head + extra + b"Connection: close\r\n\r\n"))

    def post(self, path: str, body, host: str = "127.0.0.1") -> tuple[int, dict, bytes]:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        head = (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n").encode()
        return parse(self.raw(head + data))

    def stop(self):
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()


def _read_response(s: socket.socket) -> bytes:
    """Read one response: up to the end of its Content-Length body, or until the server closes."""
    buf = b""
    while True:
        try:
            chunk = s.recv(65536)
        except (socket.timeout, ConnectionResetError):
            return buf
        if not chunk:
            return buf
        buf += chunk
        head, sep, body = buf.partition(b"\r\n\r\n")
        m = re.search(rb"(?im)^content-length:\s*(\d+)", head)
        if sep and m and len(body) >= int(m.group(1)):
            return buf


def parse(reply: bytes) -> tuple[int, dict, bytes]:
    head, _, body = reply.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    if not lines or not lines[0].startswith(b"HTTP/1."):
        return 0, {}, reply
    status = int(lines[0].split()[1])
    headers = {}
    for ln in lines[1:]:
        k, _, v = ln.partition(b":")
        headers[k.strip().lower().decode()] = v.strip().decode("latin-1")
    return status, headers, body


@pytest.fixture(scope="module")
def lm(gpt2_dir):
    from saescope.lm import LanguageModel

    return LanguageModel.from_pretrained(str(gpt2_dir))


@pytest.fixture(scope="module")
def sae(lm, tmp_path_factory):
    from saescope.sae import SAE, SAEConfig, SAEMetadata

    path = tmp_path_factory.mktemp("relsrv2") / "sae"
    SAE(SAEConfig("topk", d_in=64, d_sae=96, k=6, metadata=SAEMetadata(model_name=lm.name, hook_name=HOOK)),
        seed=0).save(path)
    return SAE.load(path)


@pytest.fixture(scope="module")
def live(lm, sae):
    cfg = app_mod.ServerConfig(max_new_tokens=16, max_concurrent_generations=4, max_body_bytes=16 * 1024,
                               header_timeout_s=HEAD_S, body_timeout_s=BODY_S, allowed_hosts=ALLOWED)
    srv = GuardedServer(app_mod.create_app(lm, sae, str(sae.path), None, cfg))
    yield srv
    srv.stop()


# ================================================================================ Host header (DNS rebinding)

ACCEPTED_HOSTS = [
    "127.0.0.1:{port}", "127.0.0.1", "localhost", "localhost:{port}", "LOCALHOST:{port}", "LocalHost.:{port}",
    "localhost.", "127.0.0.1.", "[::1]:{port}", "[::1]", "[0:0:0:0:0:0:0:1]:{port}", "[::ffff:127.0.0.1]:{port}",
    "127.0.0.2:{port}", "127.0.0.1:", "localhost:1",                                  # any port: port forwarding
    "saescope.test:{port}", "SAESCOPE.TEST.", "10.11.12.13:{port}",                  # --allowed-host names
]
REFUSED_HOSTS = [  # (Host, expected status): 421 a well-formed foreign name, 400 missing/malformed
    ("evil.com", 421), ("evil.com:{port}", 421), ("attacker.example.", 421), ("localhost.evil.com", 421),
    ("evil.localhost", 421), ("127.0.0.1.nip.io", 421), ("saescope.test.evil.com", 421), ("xsaescope.test", 421),
    ("[::2]:{port}", 421), ("10.0.0.1", 421), ("0.0.0.0:{port}", 421), ("192.168.1.1:{port}", 421),
    ("[::ffff:10.0.0.1]", 421), ("10.11.12.14", 421), ("1.2.3.4", 421), ("[fe80::1]", 421),
    ("localhost:99999", 400), ("localhost:abc", 400), ("localhost:{port}:{port}", 400), ("::1", 400),
    ("[::1", 400), ("localhost@evil.com", 400), ("evil.com/x", 400), ("%6c%6fcalhost", 400), ("", 400),
    ("l\u043ecalhost", 400), ("[::1%25eth0]", 400), ("127.0.0.1 evil.com", 400), ("a" * 300, 400),
    ("localhost\\", 400), ("*", 400),
]


def _fill(h: str, port: int) -> str:
    return h.replace("{port}", str(port))


@pytest.mark.parametrize("host", ACCEPTED_HOSTS)
def test_host_accepted(live, host):
    status, headers, body = live.get("/healthz", _fill(host, live.port))
    assert status == 200 and json.loads(body)["ok"] is True, (host, status, body[:200])
    assert headers.get("x-content-type-options") == "nosniff" and headers.get("x-frame-options") == "DENY"


@pytest.mark.parametrize("host,expected", REFUSED_HOSTS, ids=[repr(h)[:40] for h, _ in REFUSED_HOSTS])
def test_host_refused(live, host, expected):
    for path in ("/healthz", "/", "/api/feature/1"):
        status, headers, body = live.get(path, _fill(host, live.port))
        assert status == expected, (host, path, status, body[:200])
        detail = json.loads(body)["detail"]
        assert "\n" not in detail and "Host" in detail, detail
        assert b'"ok"' not in body and b"<html" not in body
        assert headers.get("connection") == "close"


def test_host_missing_or_repeated_is_400(live):
    # HTTP/1.0 may omit Host (HTTP/1.1 requires it: refused by the parser itself)
    status, _, body = parse(live.raw(b"GET /healthz HTTP/1.0\r\n\r\n"))
    assert status == 400 and "missing" in json.loads(body)["detail"], body
    status, _, _ = parse(live.raw(b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n"))
    assert status == 400
    status, _, body = parse(live.raw(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nHost: evil.com\r\n"
                                     b"Connection: close\r\n\r\n"))
    assert status == 400 and b'"ok"' not in body


def test_host_refused_for_posts_before_any_work(live):
    """A rebinding page may POST: refused before the body is read or the model runs."""
    status, _, body = live.post("/api/steer", {"prompt": "hi", "feature": [1], "strength": [1.0]}, host="evil.com")
    assert status == 421 and b"baseline" not in body
    status, _, _ = live.post("/api/read", {"text": "hi"}, host="evil.com:80")
    assert status == 421


def test_host_guard_accepts_the_address_the_connection_arrived_at():
    """Bound to a non-loopback address, the server answers requests naming that address (and refuses other
    names): the guard compares Host with the connection's local address (ASGI ``scope["server"]``)."""
    seen = []

    async def app(scope, receive, send):
        seen.append(scope["path"])
        await security.answer(send, 200, "ok", close=False)

    guard = security.HostGuard(app)

    def call(server, host):
        sent = []

        async def send(msg):
            sent.append(msg)

        async def receive():
            return {"type": "http.request", "body": b"", "more_body": False}

        scope = {"type": "http", "path": "/x", "headers": [(b"host", host.encode())], "server": server}
        asyncio.run(guard(scope, receive, send))
        return sent[0]["status"]

    assert call(("192.168.7.9", 8000), "192.168.7.9:8000") == 200
    assert call(("192.168.7.9", 8000), "192.168.7.9") == 200
    assert call(("::ffff:192.168.7.9", 8000), "192.168.7.9:8000") == 200      # dual-stack socket
    assert call(("fd00::5", 8000), "[fd00::5]:8000") == 200
    assert call(("192.168.7.9", 8000), "192.168.7.10:8000") == 421
    assert call(("192.168.7.9", 8000), "evil.com:8000") == 421
    assert call(None, "evil.com") == 421                                          # unix socket: no address
    assert call(None, "localhost") == 200
    assert len(seen) == 5


def test_allowed_host_option(tmp_path):
    """``saescope serve --allowed-host NAME`` reaches ServerConfig; a malformed name is one line, exit 2."""
    import contextlib
    import io

    from saescope.cli import build_parser, main

    args = build_parser().parse_args(["serve", "--allowed-host", "box.lan", "--allowed-host", "10.0.0.7"])
    assert args.allowed_host == ["box.lan", "10.0.0.7"]
    assert app_mod.ServerConfig(allowed_hosts=("Box.LAN.", "10.0.0.7")).allowed_hosts == ("box.lan", "10.0.0.7")
    for bad in ("http://box.lan", "box.lan:8000", "a b", "", "bad\nname"):
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            code = main(["serve", "--allowed-host", bad, "--port", "0"])
        lines = err.getvalue().splitlines()
        assert code == 2 and len(lines) == 1 and "allowed host" in lines[0], (bad, err.getvalue())
    cfg = app_mod.ServerConfig(allowed_hosts=("box.lan",))
    assert app_mod.ServerConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


# ================================================================================ slow clients

def _trickle(socks, data: bytes, seconds: float, interval: float = 0.2) -> dict[int, float]:
    """Send ``data`` one byte per ``interval`` on every socket for up to ``seconds``; the time each socket was
    closed by the server (EOF or reset), by index."""
    closed: dict[int, float] = {}
    t0 = time.time()
    i = 0
    while time.time() - t0 < seconds and len(closed) < len(socks):
        for j, s in enumerate(socks):
            if j in closed:
                continue
            try:
                if i < len(data):
                    s.send(data[i:i + 1])
                chunk = s.recv(4096)
                if chunk == b"" or chunk.startswith(b"HTTP/1.1 408"):
                    closed[j] = time.time() - t0
            except BlockingIOError:
                pass
            except OSError:
                closed[j] = time.time() - t0
        i += 1
        time.sleep(interval)
    return closed


def _connect(live, n: int) -> list[socket.socket]:
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", live.port), timeout=5)
        s.setblocking(False)
        socks.append(s)
    return socks


def test_slowloris_heads_are_closed_and_others_served(live):
    """40 connections sending a request head one byte at a time: each is closed within the head deadline (plus
    slack), long before its head could complete, and normal requests are served meanwhile."""
    head = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: " + b"a" * 400 + b"\r\n\r\n"
    socks = _connect(live, 40)
    served = []

    def normal_requests():
        for _ in range(5):
            time.sleep(0.3)
            t = time.time()
            served.append((live.get("/healthz")[0], time.time() - t))

    worker = threading.Thread(target=normal_requests)
    worker.start()
    try:
        closed = _trickle(socks, head, seconds=HEAD_S + 6)
    finally:
        worker.join(30)
        for s in socks:
            s.close()
    assert len(closed) == 40, f"{40 - len(closed)} slow connections still open after {HEAD_S + 6} s"
    assert max(closed.values()) < HEAD_S + 3, sorted(closed.values())[-5:]
    assert len(served) == 5 and all(st == 200 and dt < 2 for st, dt in served), served


def test_idle_connections_are_closed(live):
    """Connections that never send a byte are closed after the head deadline too (not held forever)."""
    socks = _connect(live, 20)
    try:
        closed = _trickle(socks, b"", seconds=HEAD_S + 4)
    finally:
        for s in socks:
            s.close()
    assert len(closed) == 20 and max(closed.values()) < HEAD_S + 3, closed


def test_slow_body_gets_408_and_is_closed(live):
    """A POST whose body trickles in (1 byte per 0.2 s of 200): 408 within the body deadline, connection closed."""
    socks = _connect(live, 5)
    head = (b"POST /api/read HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: 200\r\n\r\n")
    t0 = time.time()
    replies = {}
    for s in socks:
        s.setblocking(True)
        s.sendall(head)
        s.setblocking(False)
    body = b'{"text": "' + b"x" * 190
    while time.time() - t0 < BODY_S + 5 and len(replies) < len(socks):
        for j, s in enumerate(socks):
            if j in replies:
                continue
            try:
                s.send(body[:1])
                data = s.recv(4096)
                replies[j] = (data, time.time() - t0)
            except BlockingIOError:
                pass
            except OSError as exc:
                replies[j] = (repr(exc).encode(), time.time() - t0)
        time.sleep(0.2)
    for s in socks:
        s.close()
    assert len(replies) == 5, replies
    for data, dt in replies.values():
        assert data.startswith(b"HTTP/1.1 408"), data[:200]
        assert dt < BODY_S + 2.5, dt
        assert b"connection: close" in data.lower()


def test_kept_alive_connection_cannot_trickle_its_next_head(live):
    """After one complete request, the next head on the same connection is bound by the same deadline."""
    s = socket.create_connection(("127.0.0.1", live.port), timeout=10)
    try:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        first = _read_response(s)
        assert first.startswith(b"HTTP/1.1 200"), first[:100]
        s.setblocking(False)
        closed = _trickle([s], b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Pad: " + b"a" * 200, HEAD_S + 4)
    finally:
        s.close()
    assert 0 in closed and closed[0] < HEAD_S + 3, closed


def test_a_slow_but_complete_client_is_served(live):
    """Deadlines must not cut a legitimate client: a head in three parts within one second is answered."""
    with socket.create_connection(("127.0.0.1", live.port), timeout=10) as s:
        for part in (b"GET /healthz HT", b"TP/1.1\r\nHost: localh", b"ost\r\nConnection: close\r\n\r\n"):
            s.sendall(part)
            time.sleep(0.3)
        assert _read_response(s).startswith(b"HTTP/1.1 200")
    status, _, body = live.post("/api/read", {"text": "The cat sat", "top_k": 2})
    assert status == 200 and json.loads(body)["tokens"]


# ================================================================================ sampling parameters

BASE = {"prompt": "The cat", "feature": [3], "strength": [1.0], "max_new_tokens": 2, "temperature": 0}
BAD_STEER = [  # (field overrides, the field the one-line detail must name)
    ({"temperature": -1e-320}, "temperature"), ({"temperature": 100.0001}, "temperature"),
    ({"temperature": 1e308}, "temperature"), ({"top_p": 0}, "top_p"), ({"top_p": -1e-320}, "top_p"),
    ({"top_p": 1.0000001}, "top_p"), ({"seed": 2**64}, "seed"), ({"seed": 2**70}, "seed"), ({"seed": -1}, "seed"),
    ({"seed": 1.5}, "seed"), ({"max_new_tokens": 10**30}, "max_new_tokens"), ({"max_new_tokens": 2**63}, "max_new_tokens"),
    ({"max_new_tokens": 0}, "max_new_tokens"), ({"max_new_tokens": 17}, "max_new_tokens"),
    ({"positions": "at:99999999999999999999"}, "positions"), ({"positions": "from:99999999999999999999"}, "positions"),
    ({"positions": "at:" + "9" * 5000}, "positions"), ({"positions": "at:2147483648"}, "positions"),
    ({"positions": "at:-1"}, "positions"), ({"positions": "at:1e3"}, "positions"), ({"positions": "AT:1"}, "positions"),
    ({"positions": "all\n"}, "positions"), ({"positions": "from:"}, "positions"), ({"positions": "at:\u0663"}, "positions"),
    ({"strength": [1e300]}, "strength"), ({"algebra": "1e999*3", "feature": []}, "algebra"),
]
GOOD_STEER = [{"top_p": 1e-320}, {"top_p": 5e-324}, {"seed": 2**32 - 1}, {"seed": None, "temperature": 0.7},
              {"positions": "at:2147483647"}, {"positions": "from:1"}, {"strength": [1e-320]}, {"max_new_tokens": 16}]
TINY_TEMPERATURES = [1e-320, 5e-324, 1e-45]


@pytest.mark.parametrize("extra,field", BAD_STEER, ids=[f"{f}={str(list(e.values())[0])[:24]}" for e, f in BAD_STEER])
def test_absurd_sampling_parameters_are_422(live, extra, field):
    status, _, body = live.post("/api/steer", {**BASE, **extra})
    assert status == 422, (extra, status, body[:300])
    detail = json.loads(body)["detail"]
    assert "\n" not in detail and field in detail, detail


@pytest.mark.parametrize("extra", GOOD_STEER, ids=[str(e)[:40] for e in GOOD_STEER])
def test_tiny_but_valid_parameters_are_accepted(live, extra):
    status, _, body = live.post("/api/steer", {**BASE, **extra})
    assert status == 200, (extra, status, body[:300])
    assert json.loads(body)["steered"] is not None


@pytest.mark.parametrize("t", TINY_TEMPERATURES)
def test_tiny_temperature_is_accepted(live, t):
    """Tiny positive temperatures are valid (effectively greedy): they run, never a 422, a 500 or exit 1."""
    status, _, body = live.post("/api/steer", {**BASE, "temperature": t})
    assert status == 200, (t, status, body[:300])


# ================================================================================ HTML and JSON in pages

HOSTILE_LABELS = ["<!--<script>", "</script><script>alert(1)</script>", "]]>", "<![CDATA[", "-->", "\u2028\u2029",
                  "<img src=x onerror=alert(1)>", "\" onmouseover=\"alert(1)", "</ScRiPt >", "&lt;&amp;", "\ud800",
                  "<!--", "<script>", "\x00nul", "<\\/script>", "</style><b>x"]


def test_index_json_is_inert_and_complete():
    """The JSON embedded in the index page holds no ``<``, ``>``, ``&``, ``NaN`` or ``Infinity`` and parses back to
    the exact rows (every hostile label intact), so no label can end or re-mode the script element."""
    from saescope.report import html
    from saescope.report.store import FeatureSummary

    rows = [FeatureSummary(i, 1e-3 * i, 0.5, 2.0, lab) for i, lab in enumerate(HOSTILE_LABELS)]
    rows.append(FeatureSummary(len(rows), float("inf"), float("nan"), float("-inf"), None))
    body = html.index_body(rows, {"model": "m", "hook": "h"}, "features/{id}.html")
    data = body.split('id="features-data">', 1)[1]
    assert data.endswith("</script>") and data.count("</script>") == 1
    data = data[: -len("</script>")]
    assert not re.search(r"[<>&]|NaN|Infinity", data), data[:300]
    parsed = json.loads(data)
    assert [r[4] for r in parsed[:-1]] == HOSTILE_LABELS
    assert parsed[-1] == [len(rows) - 1, None, None, None, None, None, None, None]   # + explanation, score, model
    page = html.page("t \ud800", body)
    page.encode("utf-8")                                    # lone surrogates replaced: the page is always writable
    assert "\ufffd" in page


def test_server_pages_with_hostile_labels(lm, sae, tmp_path):
    """The server's index and feature pages with hostile labels: 200, the embedded JSON inert, labels escaped."""
    import shutil

    from fastapi.testclient import TestClient

    from saescope.sae import SAE

    d = tmp_path / "sae"
    shutil.copytree(sae.path, d)
    (d / "labels.json").write_text(json.dumps({str(i): lab for i, lab in enumerate(HOSTILE_LABELS)}))
    app = app_mod.create_app(lm, SAE.load(d), str(d), None, app_mod.ServerConfig())
    client = TestClient(app, base_url="http://127.0.0.1")
    r = client.get("/")
    assert r.status_code == 200
    data = r.text.split('id="features-data">', 1)[1].split("</script>", 1)[0]
    assert not re.search(r"[<>&]", data) and len(json.loads(data)) == sae.d_sae
    for i, lab in enumerate(HOSTILE_LABELS):
        r = client.get(f"/feature/{i}")
        assert r.status_code == 200, (lab, r.status_code)
        assert "<script>alert" not in r.text and "<img src=x" not in r.text and "<!--<script>" not in r.text
    assert r.headers["x-content-type-options"] == "nosniff"


def test_feature_page_escapes_every_store_value():
    """A hostile features.sqlite can hold text where numbers belong (index, co-firing entries, tokens): the
    feature page escapes them all."""
    from saescope.report import html
    from saescope.report.stats import Example, FeatureRecord

    evil = "<script>alert(1)</script>"
    rec = FeatureRecord(evil, 0.1, 0.1, 0.1, 1.0, 3, label=evil,
                        top=[Example([evil, "ok"], [1, 2], [0.5, 1.0], 1, 1.0)],
                        pos_logits=[(evil, 1.0)], neg_logits=[(evil, -1.0)],
                        cofire=[{"index": evil, "count": evil, "jaccard": 0.5}])
    body = html.feature_body(rec, {"model": evil, "hook": evil, "neuronpedia_id": evil}, [0.0, 1.0],
                             link=lambda i: f"{i}.html", n_tokens=10)
    assert "<script" not in body.lower() and body.count("&lt;script&gt;") >= 7, body
