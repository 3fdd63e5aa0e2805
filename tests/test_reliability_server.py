"""The local server under attack and under load: loopback binding, path traversal variants, streamed bodies
over the size cap, hostile JSON, text beyond the model's context, floods of generations (cap -> 503, never
500), idle/slow connections that must not starve others, and a 1000-request loopback load test with 0 errors
and bounded memory.

tests/test_server.py (the server's own tests) covers routes, the basic 413/422/503 cases and a 400-request load
test via the CLI; these tests focus on limits and attacks against a real uvicorn (in a thread of this process,
127.0.0.1, a free port, stopped at the end and by a watchdog).
"""
from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

server_mod = pytest.importorskip("saescope.server")
from saescope.server import app as app_mod  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny matrices: threads only add contention

HOOK = "blocks.3.hook_resid_pre"
WATCHDOG_S = 120  # the server stops by itself after this, whatever happens


class LiveServer:
    """uvicorn serving ``create_app(...)`` on 127.0.0.1:<free port> in a daemon thread."""

    def __init__(self, app, host="127.0.0.1"):
        import uvicorn

        self.sock = app_mod.bind_socket(host, 0)
        self.host, self.port = self.sock.getsockname()[:2]
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="critical", access_log=False,
                                                    timeout_graceful_shutdown=1))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        self.watchdog = threading.Timer(WATCHDOG_S, self.stop)
        self.watchdog.daemon = True
        self.watchdog.start()
        deadline = time.time() + 30
        while not self.server.started and time.time() < deadline:
            time.sleep(0.01)
        assert self.server.started, "uvicorn did not start"

    def request(self, method, path, body=None, headers=None, timeout=60):
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            if isinstance(body, (dict, list)):
                body = json.dumps(body)
                headers = {"Content-Type": "application/json", **(headers or {})}
            conn.request(method, path, body=body, headers=headers or {})
            r = conn.getresponse()
            return r.status, r.read()
        finally:
            conn.close()

    def stop(self):
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()


@pytest.fixture(scope="module")
def lm(gpt2_dir):
    from saescope.lm import LanguageModel

    return LanguageModel.from_pretrained(str(gpt2_dir))


@pytest.fixture(scope="module")
def sae(lm, tmp_path_factory):
    from saescope.sae import SAE, SAEConfig, SAEMetadata

    path = tmp_path_factory.mktemp("relsrv") / "sae"
    SAE(SAEConfig("topk", d_in=64, d_sae=96, k=6, metadata=SAEMetadata(model_name=lm.name, hook_name=HOOK)),
        seed=0).save(path)
    return SAE.load(path)


@pytest.fixture(scope="module")
def live(lm, sae):
    cfg = app_mod.ServerConfig(max_concurrent_generations=2, max_new_tokens=16, max_concurrent_reads=64,
                               max_body_bytes=16 * 1024, max_text_chars=2000)
    srv = LiveServer(app_mod.create_app(lm, sae, str(sae.path), None, cfg))
    yield srv
    srv.stop()
    assert not srv.thread.is_alive(), "server did not stop"


def rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


# --- binding ------------------------------------------------------------------------------------------------------

def test_serve_defaults_to_loopback():
    from saescope.cli import build_parser

    args = build_parser().parse_args(["serve"])
    assert args.host == "127.0.0.1"


def _external_ipv4() -> str | None:
    """A non-loopback address of this machine (no packet is sent: UDP connect only picks a route)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("10.255.255.255", 1))
            ip = s.getsockname()[0]
    except OSError:
        return None
    return None if ip.startswith("127.") else ip


def test_not_reachable_from_other_interfaces(live):
    ip = _external_ipv4()
    if ip is None:
        pytest.skip("no non-loopback interface on this machine")
    with socket.socket() as s:
        s.settimeout(3)
        with pytest.raises(OSError):  # connection refused: nothing listens on this address
            s.connect((ip, live.port))
    assert live.request("GET", "/healthz")[0] == 200


# --- path traversal -----------------------------------------------------------------------------------------------

TRAVERSALS = [
    "/static/..%5c..%5capp.py", "/static/%252e%252e/app.py", "/static/..%c0%afapp.py", "/static/app.js%00.py",
    "/static/./../app.py", "/static/.%2e/.%2e/cli/report.py", "/static/....//app.py", "/static/%2e%2e%5capp.py",
    "/static/..;/app.py", "/static/" + "../" * 12 + "etc/passwd", "/feature/..%2f..%2fetc%2fpasswd",
    "/api/feature/..%2f..%2fapp.py", "/static/%2F..%2F..%2Fapp.py", "/static/~/.ssh/id_rsa",
]


@pytest.mark.parametrize("path", TRAVERSALS)
def test_path_traversal_variants(live, path):
    status, body = live.request("GET", path)
    assert status in (400, 404, 422), (path, status)
    text = body.decode("utf-8", "replace")
    assert "def create_app" not in text and "root:" not in text and "import " not in text


# --- request size and hostile bodies -------------------------------------------------------------------------------

def _post_chunked_over_cap(live):
    def chunks():
        for _ in range(64):
            yield b'{"text": "' + b"a" * 1024

    conn = http.client.HTTPConnection(live.host, live.port, timeout=30)
    try:
        conn.request("POST", "/api/read", body=chunks(), headers={"Content-Type": "application/json"},
                     encode_chunked=True)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def test_chunked_body_over_cap_is_refused(live):
    """No Content-Length (chunked transfer): the cap must hold on the streamed bytes (refused, not processed)."""
    status, reply = _post_chunked_over_cap(live)
    assert status in (400, 413), (status, reply[:200])


def test_chunked_body_over_cap_is_413(live):
    """...and with the documented status, 413 (it is 400 "error parsing the body" today)."""
    status, reply = _post_chunked_over_cap(live)
    assert status == 413, (status, reply[:200])


def test_lying_content_length_is_refused(live):
    """Content-Length far above the cap: refused (413) before the body is read."""
    with socket.create_connection((live.host, live.port), timeout=10) as s:
        s.sendall(b"POST /api/read HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 99999999999\r\n\r\n{\"text\": \"hi\"}")
        reply = s.recv(200)
    assert reply.startswith(b"HTTP/1.1 413"), reply


HOSTILE_BODIES = [
    ("/api/read", b"[" * 15000 + b"]" * 15000),                      # deep nesting within the size cap
    ("/api/read", b'{"text": "hi", "top_k": 1e400}'),
    ("/api/read", b'{"text": "hi", "top_k": 99999999999999999999999999}'),
    ("/api/read", b'{"text": ["hi"]}'),
    ("/api/read", b'{"text": "\\ud800"}'),                            # lone surrogate
    ("/api/read", b'\xff\xfe{"text": "hi"}'),
    ("/api/steer", b'{"prompt": "hi", "feature": [1], "strength": [NaN]}'),
    ("/api/steer", b'{"prompt": "hi", "feature": [1], "strength": [Infinity]}'),
    ("/api/steer", b'{"prompt": "hi", "feature": [1], "strength": 1e309}'),
    ("/api/steer", b'{"prompt": "hi", "feature": [99999999999999999999], "strength": [1]}'),
    ("/api/steer", b'{"prompt": "hi", "feature": [-1], "strength": [1]}'),
    ("/api/steer", b'{"prompt": "hi", "algebra": "' + b"+1*3 " * 150 + b'"}'),
    ("/api/steer", b'{"prompt": "hi", "feature": [1], "strength": [1], "positions": "from:-5"}'),
    ("/api/steer", b'{"prompt": "hi", "feature": [1], "strength": [1], "seed": -1}'),
    ("/api/steer", b'{"prompt": "hi", "feature": [1], "strength": [1], "max_new_tokens": 0}'),
]


def _ids():
    return [f"{(c.values if hasattr(c, 'values') else c)[0]}-{i}" for i, c in enumerate(HOSTILE_BODIES)]


@pytest.mark.parametrize("route,body", HOSTILE_BODIES, ids=_ids())
def test_hostile_json_is_4xx_never_500(live, route, body):
    status, reply = live.request("POST", route, body=body, headers={"Content-Type": "application/json"})
    assert 400 <= status < 500, (status, reply[:300])
    detail = json.loads(reply).get("detail")
    assert detail, reply[:300]
    assert "Traceback" not in reply.decode("utf-8", "replace")


def test_text_beyond_model_context(live, lm):
    """A text within the server's char cap but far longer than the model's context: a clean answer, not a 500."""
    text = " ".join(f"w{i}" for i in range(600))[:2000]
    status, reply = live.request("POST", "/api/read", body={"text": text})
    assert status in (200, 413, 422), (status, reply[:300])
    if status == 200:
        assert len(json.loads(reply)["tokens"]) <= lm.info.n_ctx
    status, reply = live.request("POST", "/api/steer", body={"prompt": text, "feature": [1], "strength": [1.0],
                                                             "max_new_tokens": 16, "temperature": 0})
    assert status in (200, 413, 422), (status, reply[:300])


def test_huge_feature_ids_in_paths(live):
    for path in ("/api/feature/99999999999999999999999", "/api/feature/-1", "/feature/-5", "/api/feature/1e3",
                 "/api/features?limit=-1&offset=-5", "/api/features?limit=99999999999999999999"):
        status, reply = live.request("GET", path)
        assert status in (200, 404, 422), (path, status, reply[:200])


# --- concurrency and time ------------------------------------------------------------------------------------------

def test_generation_flood_is_bounded(live):
    """24 steering requests at once with a cap of 2: each is 200 or 503 (never 500, never a hang), at least the
    cap succeed, and the server answers /healthz promptly during the flood."""
    body = {"prompt": "The cat", "feature": [3], "strength": [4.0], "max_new_tokens": 16, "temperature": 0}
    health = []

    def probe():
        time.sleep(0.2)
        t = time.time()
        health.append((live.request("GET", "/healthz", timeout=20)[0], time.time() - t))

    with ThreadPoolExecutor(25) as pool:
        futs = [pool.submit(live.request, "POST", "/api/steer", body) for _ in range(24)]
        hp = pool.submit(probe)
        statuses = [f.result(timeout=120)[0] for f in futs]
        hp.result(timeout=30)
    assert set(statuses) <= {200, 503}, statuses
    assert statuses.count(200) >= 2, statuses
    assert health and health[0][0] == 200 and health[0][1] < 10, health


def test_idle_and_slow_clients_do_not_starve_others(live):
    """60 connections that send nothing or half a header and stall: a normal request still gets through fast."""
    socks = []
    try:
        for i in range(60):
            s = socket.create_connection((live.host, live.port), timeout=5)
            if i % 2:
                s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            socks.append(s)
        t = time.time()
        status, _ = live.request("GET", "/healthz", timeout=10)
        assert status == 200 and time.time() - t < 5
    finally:
        for s in socks:
            s.close()


def test_load_1000_requests(live, sae):
    """1000 mixed requests, 16 at a time, on the loopback: every answer is the expected status (0 errors, no
    5xx, no dropped connection), and the process's RSS grows by less than 150 MB."""
    def call(i: int):
        kind = i % 5
        try:
            if kind == 0:
                return kind, live.request("GET", f"/api/feature/{i % sae.d_sae}")[0]
            if kind == 1:
                return kind, live.request("GET", f"/feature/{i % sae.d_sae}")[0]
            if kind == 2:
                return kind, live.request("POST", "/api/read", body={"text": f"request {i} reads this", "top_k": 3})[0]
            if kind == 3:
                return kind, live.request("GET", f"/api/feature/{sae.d_sae + i}")[0]      # expected 404
            return kind, live.request("POST", "/api/read", body={"text": ""})[0]         # expected 422
        except Exception as exc:  # noqa: BLE001
            return kind, f"{type(exc).__name__}: {exc}"

    expected = {0: 200, 1: 200, 2: 200, 3: 404, 4: 422}
    for i in range(5):
        assert call(i)[1] == expected[i]
    rss0 = rss_kb()
    t0 = time.time()
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(call, range(1000)))
    elapsed = time.time() - t0
    rss1 = rss_kb()
    errors = [(i, k, s) for i, (k, s) in enumerate(results) if s != expected[k]]
    print(f"load: 1000 requests in {elapsed:.1f}s ({1000 / elapsed:.0f} req/s), RSS {rss0 // 1024} -> {rss1 // 1024} MiB, "
          f"{len(errors)} errors")
    assert not errors, errors[:10]
    assert rss1 - rss0 < 150_000, (rss0, rss1)
