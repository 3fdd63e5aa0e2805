"""The local web app: routes with FastAPI's TestClient (same JSON as the CLI, 404/422/413/503, no path traversal),
`saescope serve`/`saescope dashboard` CLI errors, and a bounded loopback load test against a real uvicorn."""
from __future__ import annotations

import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from report_helpers import make_corpus, make_sae
from saescope.report import FeatureStore, StatsConfig, compute_feature_stats

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny matrices: threads only add contention

CFG = StatsConfig(n_tokens=12 * 24, context_size=24, batch_size=6, top_k=5, window=3, cofire_tokens=200,
                  checkpoint_every=0)


@pytest.fixture(scope="module")
def srv_lm(gpt2_dir):
    from saescope.lm import LanguageModel

    return LanguageModel.from_pretrained(str(gpt2_dir))


@pytest.fixture(scope="module")
def srv_sae(srv_lm, tmp_path_factory):
    return make_sae(srv_lm.name, tmp_path_factory.mktemp("srv") / "sae")


@pytest.fixture(scope="module")
def srv_store(srv_lm, srv_sae):
    path = srv_sae.path / "features.sqlite"
    compute_feature_stats(srv_lm, srv_sae, make_corpus(12, 24), CFG, out=path)
    return FeatureStore.for_sae(srv_sae)


def _client(lm, sae, store, **cfg):
    from fastapi.testclient import TestClient

    from saescope.server import ServerConfig, create_app

    return TestClient(create_app(lm, sae, str(sae.path), store, ServerConfig(**cfg)))


@pytest.fixture(scope="module")
def client(srv_lm, srv_sae, srv_store):
    return _client(srv_lm, srv_sae, srv_store)


def _cli_json(capsys, argv) -> dict:
    from saescope.cli import main

    capsys.readouterr()
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_pages(client, srv_store, srv_sae):
    r = client.get("/")
    assert r.status_code == 200 and 'id="read-form"' in r.text and 'id="steer-form"' in r.text
    rows = json.loads(r.text.split('id="features-data">')[1].split("</script>")[0])
    assert sorted(x[0] for x in rows) == list(range(srv_sae.d_sae))
    r = client.get("/feature/7")
    assert r.status_code == 200 and "Feature 7" in r.text and "a &lt;b&gt;bold&lt;/b&gt; label" in r.text
    assert "<b>bold</b>" not in r.text
    rec = srv_store.get(7)
    if rec.top:
        assert f"{rec.top[0].value:.3f}" in r.text
    for bad in (f"/feature/{srv_sae.d_sae}", "/feature/-1"):
        r = client.get(bad)
        assert r.status_code == 404 and "No feature" in r.text


def test_api_feature(client, srv_store, srv_sae):
    r = client.get("/api/feature/5")
    assert r.status_code == 200
    d = r.json()
    expect = srv_store.get(5).to_dict()
    assert {k: d[k] for k in expect} == json.loads(json.dumps(expect))
    assert d["label"] == "fifth feature" and d["neuronpedia_url"] == "https://www.neuronpedia.org/gpt2-small/3-test/5"
    r = client.get(f"/api/feature/{srv_sae.d_sae}")
    assert r.status_code == 404 and "does not exist" in r.json()["detail"]
    r = client.get("/api/features", params={"sort": "max", "limit": 5})
    maxes = [x["max"] for x in r.json()["features"]]
    assert maxes == sorted((x.max for x in srv_store.records()), reverse=True)[:5]


def test_read_and_steer_json_equal_the_cli(client, srv_sae, gpt2_dir, capsys):
    """The APIs answer the CLI's JSON plus a few keys of their own (display strings, samples)."""
    text = "The quick brown fox jumps"
    served = client.post("/api/read", json={"text": text, "top_k": 4, "feature": [3, 9]})
    assert served.status_code == 200
    cli = _cli_json(capsys, ["read", text, "--model", str(gpt2_dir), "--sae", str(srv_sae.path), "--top", "4",
                             "--feature", "3", "--feature", "9", "--json"])
    extra = served.json()
    assert {k: v for k, v in extra.items() if k != "display_tokens"} == cli
    assert len(extra["display_tokens"]) == len(cli["tokens"]) and "trace" in cli
    body = {"prompt": "Once upon", "feature": [3, 9], "strength": [6.0], "method": "add", "max_new_tokens": 6,
            "temperature": 0.0, "seed": 0}
    served = client.post("/api/steer", json=body)
    assert served.status_code == 200
    cli = _cli_json(capsys, ["steer", "Once upon", "--feature", "3", "--feature", "9", "--strength", "6", "--max-new-tokens",
                             "6", "--temperature", "0", "--model", str(gpt2_dir), "--sae", str(srv_sae.path), "--json"])
    got = served.json()
    assert {k: v for k, v in got.items() if k not in ("n", "samples")} == cli
    assert got["samples"] == [{"baseline": cli["baseline"], "steered": cli["steered"]}]
    assert cli["baseline"] != cli["steered"]


@pytest.mark.parametrize("method", ["dla", "gradient"])
def test_attribute_json_equals_the_cli(client, srv_sae, gpt2_dir, capsys, method):
    text = "The cat sat on the"
    served = client.post("/api/attribute", json={"text": text, "method": method, "target": " the", "top": 7})
    assert served.status_code == 200, served.text
    cli = _cli_json(capsys, ["attribute", text, "--method", method, "--target", " the", "--top", "7", "--model",
                             str(gpt2_dir), "--sae", str(srv_sae.path), "--json"])
    got = served.json()
    assert {k: v for k, v in got.items() if k != "display_tokens"} == cli
    assert len(got["display_tokens"]) == len(cli["tokens"]) and 0 < len(got["features"]) <= 7
    r = client.post("/api/attribute", json={"text": text, "target": "two tokens maybe"})
    assert r.status_code == 422 and "not one" in r.json()["detail"]


def test_steer_samples_are_seeded_batches(client):
    """n samples: reproducible from the seed, different from each other, baseline and steered from the same draws
    (the batch ``saescope.report.tour.sample_pairs`` makes: equal to calling it directly)."""
    body = {"prompt": "Once upon", "feature": [3], "strength": [9.0], "max_new_tokens": 8, "temperature": 1.0,
            "top_p": 0.9, "seed": 5, "n": 4}
    a, b = client.post("/api/steer", json=body).json(), client.post("/api/steer", json=body).json()
    assert a["samples"] == b["samples"] and len(a["samples"]) == 4 and a["n"] == 4
    assert len({s["baseline"] for s in a["samples"]}) > 1
    c = client.post("/api/steer", json={**body, "seed": 6}).json()
    assert c["samples"] != a["samples"]
    assert client.post("/api/steer", json={**body, "n": 9}).status_code == 422     # max_samples
    per_feature = client.post("/api/steer", json={**body, "feature": [3, 9], "strength": [9.0, -4.0], "method": "clamp"})
    assert per_feature.status_code == 200
    assert [iv["strength"] for iv in per_feature.json()["interventions"]] == [9.0, -4.0]


def test_sample_pairs_match_the_api(srv_lm, srv_sae, client):
    from saescope.interp import Intervention
    from saescope.report.tour import sample_pairs

    body = {"prompt": "Once upon", "feature": [3], "strength": [9.0], "max_new_tokens": 6, "temperature": 0.8,
            "top_p": 0.5, "seed": 2, "n": 3, "positions": "generated"}
    got = client.post("/api/steer", json=body).json()["samples"]
    want = sample_pairs(srv_lm, srv_sae, "Once upon", [Intervention((3,), "add", 9.0, "generated")], 3, 6, 0.8,
                        seed=2, top_p=0.5)
    assert [(s["baseline"], s["steered"]) for s in got] == want


def test_bad_requests(client, srv_sae):
    assert client.post("/api/read", content=b"{not json", headers={"content-type": "application/json"}).status_code == 422
    assert client.post("/api/read", json={"txt": "hi"}).status_code == 422
    assert client.post("/api/read", json={"text": ""}).status_code == 422
    assert client.post("/api/read", json={"text": "x" * 4001}).status_code == 422          # text cap
    assert client.post("/api/read", json={"text": "hi", "top_k": 51}).status_code == 422
    r = client.post("/api/steer", json={"prompt": "hi", "feature": [1], "strength": [1.0], "max_new_tokens": 129})
    assert r.status_code == 422                                                             # max_new_tokens cap
    r = client.post("/api/steer", json={"prompt": "hi", "feature": [srv_sae.d_sae], "strength": [1.0]})
    assert r.status_code == 422 and "out of range" in r.json()["detail"]
    r = client.post("/api/steer", content=json.dumps({"prompt": "y" * 70_000}), headers={"content-type": "application/json"})
    assert r.status_code == 413                                                             # body size cap


PLAIN = [  # (steer body overrides, the sentence the detail must be)
    ({"feature": ["abc"]}, "Features (feature): each entry must be a whole number."),
    ({"feature": []}, "Features (feature): choose at least one feature to steer."),
    ({"strength": []}, "Strengths (strength): give a strength for method add."),
    ({"strength": [1.0, 2.0, 3.0], "feature": [1, 2]},
     "Strengths (strength): give one strength for all features or one per feature (2 features, 3 strengths)."),
    ({"strength": [None]}, "Strengths (strength): each entry must be a number."),
    ({"prompt": ""}, "Prompt (prompt): is empty."),
    ({"max_new_tokens": 0}, "New tokens (max_new_tokens): must be at least 1."),
    ({"method": "push"}, "Method (method): must be one of add, clamp, scale or ablate."),
    ({"n": 0}, "Samples (n): must be at least 1."),
    ({"colour": 1}, "'colour' is not a field of this form."),
]


@pytest.mark.parametrize("extra,sentence", PLAIN, ids=[s.split(" (")[0] + str(i) for i, (_, s) in enumerate(PLAIN)])
def test_form_errors_are_plain_sentences(client, extra, sentence):
    """Web-form errors name the field in words, without CLI flags or pydantic locations."""
    r = client.post("/api/steer", json={"prompt": "hi", "feature": [1], "strength": [1.0], **extra})
    assert r.status_code == 422
    assert r.json()["detail"] == sentence


def test_library_errors_lose_their_cli_flags(client):
    from saescope.server.forms import plain_message

    assert plain_message("give at least one --feature or --algebra") == "give at least one feature or feature algebra"
    r = client.post("/api/steer", json={"prompt": "word " * 120, "feature": [1], "strength": [1.0],
                                        "max_new_tokens": 100})
    assert r.status_code == 422 and "--" not in r.json()["detail"], r.json()
    for body in ({"text": "hi", "top_k": "x"}, {"text": "hi", "feature": [1.5]}, [1, 2], "text"):
        d = client.post("/api/read", json=body).json()["detail"]
        assert "--" not in d and "list[" not in d and "body" not in d and "Input should" not in d, d


def test_favicon(client):
    r = client.get("/favicon.ico")
    assert r.status_code == 200 and r.headers["content-type"].startswith("image/svg+xml") and r.text.startswith("<svg")
    assert 'rel="icon" href="data:image/svg+xml;base64,' in client.get("/").text


def test_static_files_only_from_the_package(client):
    r = client.get("/static/app.js")
    assert r.status_code == 200 and "api/steer" in r.text
    for path in ("/static/../app.py", "/static/%2e%2e/app.py", "/static/..%2fapp.py", "/static/%2e%2e%2f%2e%2e%2fcli/report.py",
                 "/static//etc/passwd", "/static/%2fetc%2fpasswd", "/../../etc/passwd"):
        r = client.get(path)
        assert r.status_code == 404, path
        assert "def create_app" not in r.text and "root:" not in r.text


def test_concurrent_generation_cap_gives_503(srv_lm, srv_sae, srv_store, monkeypatch):
    import saescope.interp as interp

    gate, entered = threading.Event(), threading.Event()
    real = interp.generate_steered

    def slow(*a, **k):
        entered.set()
        gate.wait(10)
        return real(*a, **k)

    monkeypatch.setattr(interp, "generate_steered", slow)
    client = _client(srv_lm, srv_sae, srv_store, max_concurrent_generations=1)
    body = {"prompt": "hi", "feature": [1], "strength": [2.0], "max_new_tokens": 2, "temperature": 0}
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(client.post, "/api/steer", json=body)
        assert entered.wait(10)
        second = client.post("/api/steer", json=body)
        gate.set()
        assert first.result().status_code == 200
    assert second.status_code == 503 and "busy" in second.json()["detail"]


def test_without_store_pages_still_work(srv_lm, srv_sae, srv_store):
    """`serve` without statistics: pages say so plainly and show the logit lens, nearest features and label."""
    client = _client(srv_lm, srv_sae, None)
    assert client.get("/").status_code == 200
    d = client.get("/api/feature/5").json()
    assert d["has_stats"] is False and d["label"] == "fifth feature" and d["dense"] is False
    assert d["pos_logits"] == [list(x) for x in srv_store.get(5).pos_logits]
    assert len(d["nearest"]) == 10
    page = client.get("/feature/5")
    assert page.status_code == 200
    assert "never fired" not in page.text and 'id="no-stats"' in page.text and "No feature statistics" in page.text
    assert "Logit lens" in page.text and 'id="nearest"' in page.text and "fifth feature" in page.text
    assert "svg" not in page.text.split('id="no-stats"')[1].split("Logit lens")[0]     # no empty histogram


def test_cli_serve_port_in_use_is_one_line_exit_2(capsys, gpt2_dir, srv_sae):
    from saescope.cli import main

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        code = main(["serve", "--port", str(port), "--model", str(gpt2_dir), "--sae", str(srv_sae.path)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and f"port {port} on 127.0.0.1 is in use" in err


def test_cli_dashboard_from_text_file(capsys, gpt2_dir, srv_sae, tmp_path):
    from saescope.cli import main

    text = tmp_path / "corpus.txt"
    text.write_text("\n".join(f"Line {i}: the cat sat on the mat and looked at {i * 7} birds." for i in range(60)))
    out = tmp_path / "dash"
    d = _cli_json(capsys, ["dashboard", "--model", str(gpt2_dir), "--sae", str(srv_sae.path), "--dataset", str(text),
                           "--tokens", "256", "--context-size", "32", "--out", str(out), "--json"])
    assert d["n_features"] == srv_sae.d_sae and d["n_tokens"] > 0
    assert (out / "index.html").is_file() and (out / "features" / "0.html").is_file()
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    assert main(["dashboard", "--model", str(gpt2_dir), "--sae", str(srv_sae.path), "--dataset", str(text),
                 "--out", str(busy)]) == 2
    assert "not empty" in capsys.readouterr().err


def test_load_on_loopback(saescope_server):
    """400 requests, 200 at a time, against a real uvicorn on 127.0.0.1: no errors, RSS bounded (server and
    clients share this process, so the bound covers both)."""
    import http.client
    from urllib.parse import urlparse

    server = saescope_server
    d_sae = server.d_sae
    u = urlparse(server.url)
    assert u.hostname == "127.0.0.1"

    def call(i: int) -> int:
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
        try:
            if i % 4 == 3:
                conn.request("POST", "/api/read", body=json.dumps({"text": f"number {i} of the load"}),
                             headers={"Content-Type": "application/json"})
            elif i % 4 == 2:
                conn.request("GET", f"/feature/{i % d_sae}")
            else:
                conn.request("GET", f"/api/feature/{i % d_sae}")
            r = conn.getresponse()
            r.read()
            return r.status
        finally:
            conn.close()

    for i in range(8):   # warm up
        assert call(i) == 200
    rss0 = server.rss_kb()
    t0 = time.time()
    with ThreadPoolExecutor(200) as pool:
        statuses = list(pool.map(call, range(400)))
    elapsed = time.time() - t0
    rss1 = server.rss_kb()
    assert statuses.count(200) == 400, {s: statuses.count(s) for s in set(statuses)}
    assert rss1 - rss0 < 150_000, (rss0, rss1)            # kB
    print(f"load: 400 requests in {elapsed:.1f}s ({400 / elapsed:.0f} req/s), RSS {rss0 // 1024} -> {rss1 // 1024} MiB")
