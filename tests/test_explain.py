"""``saescope explain`` end to end against a real HTTP server on loopback that speaks the chat-completions protocol.

The fake LLM answers deterministically from the prompt: an explanation names the most frequent marked token;
a scoring prompt is answered line by line from whether each excerpt contains (detection) or marks exactly
(fuzzing) the quoted word of the explanation. What is tested is saescope's protocol handling (retries, errors,
concurrency, parsing, resuming, storing, searching), not the LLM.
"""
from __future__ import annotations

import _thread
import hashlib
import json
import random
import re
import socket
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from saescope.cli import main
from saescope.report.stats import Example, FeatureRecord, FeatureStats, StatsConfig
from saescope.report.store import FeatureStore, write_store

WORDS = ["apple", "river", "king", "music", "script", "horse", "snow", "paper", "gold", "ship"]
FILLER = ["the", "a", "of", "and", "to", "in", "was", "it", "he", "she", "on", "at", "with", "for", "as", "by"]
VOCAB = FILLER + WORDS
DEAD = len(WORDS)                      # the last feature never fires: no examples


def _example(rng: random.Random, word: str, value: float, vocab=VOCAB, width: int = 9) -> Example:
    toks = [rng.choice(FILLER) for _ in range(width)]
    c = rng.randrange(2, width - 2)
    toks[c] = word
    acts = [0.0] * width
    acts[c] = value
    if value > 2 and rng.random() < 0.5:         # sometimes a second, weaker occurrence
        j = (c + 2) % width
        toks[j], acts[j] = word, value / 2
    return Example([" " + t for t in toks], [vocab.index(t) for t in toks], acts, c, value)


def make_stats(seed: int = 0, n_top: int = 6, with_examples: bool = True, words=WORDS) -> FeatureStats:
    """Feature f fires on the word words[f] (and nothing else); the last feature is dead."""
    rng = random.Random(seed)
    recs = []
    vocab = FILLER + list(words)
    for f, w in enumerate(words):
        top = [_example(rng, w, 5.0 - 0.5 * j, vocab) for j in range(n_top)] if with_examples else []
        ivs = [{"lo": q, "hi": q + 1.0, "examples": [_example(rng, w, q + 0.5, vocab) for _ in range(2)]}
               for q in range(4)]
        recs.append(FeatureRecord(f, 0.01, 0.02, 2.0, 5.0 if with_examples else 0.0, 10, top,
                                  ivs if with_examples else [], [0] * 4, label=f"{w} · the → of"))
    recs.append(FeatureRecord(len(words), 0.0, 0.0, 0.0, 0.0, 0, label="dead"))
    meta = {"model": "synthetic", "hook": "blocks.0.hook_resid_pre", "d_sae": len(recs)}
    return FeatureStats(recs, 1000, [0.1, 1, 10, 100, 1000], StatsConfig(), 1.0, meta)


@pytest.fixture
def store_path(tmp_path):
    return write_store(tmp_path / "features.sqlite", make_stats())


class FakeLLM:
    """A chat-completions server on 127.0.0.1 (``url``), answering from the prompt. ``fail``: HTTP statuses
    returned by the first chat requests; ``mode``: "ok" | "not-json" | "no-choices"; ``interrupt_after``:
    interrupt the main thread when that many explanation requests have been answered."""

    def __init__(self, delay: float = 0.0):
        self.fail: list[int] = []
        self.mode = "ok"
        self.delay = delay
        self.interrupt_after: int | None = None
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        self.in_flight = self.max_in_flight = 0
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _send(self, code: int, body: str, headers=()):
                data = body.encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in headers:
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                if self.path.rstrip("/") == "/v1/models":
                    return self._send(200, json.dumps({"object": "list", "data": [{"id": "fake-llm"}]}))
                self._send(404, json.dumps({"error": {"message": "no such route"}}))

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with fake.lock:
                    fake.headers.append(dict(self.headers))
                    fake.in_flight += 1
                    fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
                    status = fake.fail.pop(0) if fake.fail else 200
                try:
                    time.sleep(fake.delay)
                    if status != 200:
                        return self._send(status, json.dumps({"error": {"message": "try later"}}), [("Retry-After", "0")])
                    if fake.mode == "not-json":
                        return self._send(200, "<html>bad gateway</html>")
                    if fake.mode == "no-choices":
                        return self._send(200, json.dumps({"choices": []}))
                    text = fake.answer(body["messages"])
                    fake.record(body)
                    usage = {"prompt_tokens": len(body["messages"][1]["content"]) // 4, "completion_tokens": 7}
                    choice = {"index": 0, "message": {"role": "assistant", "content": text}}
                    self._send(200, json.dumps({"id": "x", "model": body["model"], "usage": usage, "choices": [choice]}))
                finally:
                    with fake.lock:
                        fake.in_flight -= 1

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def record(self, body):
        with self.lock:
            self.requests.append(body)
            fire = self.interrupt_after is not None and len(self.explain_requests()) >= self.interrupt_after
            if fire:
                self.interrupt_after = None                 # once: later requests must not interrupt again
        if fire:
            _thread.interrupt_main()

    def explain_requests(self):
        return [r for r in self.requests if "Tokens with the most activation" in r["messages"][1]["content"]]

    @staticmethod
    def answer(messages) -> str:
        user = messages[1]["content"]
        if "Tokens with the most activation" in user:
            word = Counter(re.findall(r"<<(.*?)>>", user)).most_common(1)[0][0]
            prefix = "<!--<script> " if word == "script" else ""
            return f"Sure.\nExplanation: {prefix}the word \"{word}\""
        word = re.search(r'^Explanation: .*"(\w+)"', user, re.M).group(1)
        lines = []
        for m in re.finditer(r"^(\d+)\. (.*)$", user.split("Excerpts:")[1], re.M):
            text = m.group(2)
            if "marks are correct" in messages[0]["content"] or "marked <<like this>>" in messages[0]["content"]:
                marks = re.findall(r"<<(.*?)>>", text)
                p = 1.0 if marks and all(x == word for x in marks) else 0.0
            else:
                p = 1.0 if re.search(rf"\b{word}\b", text) else 0.0
            lines.append(f"{m.group(1)}: {p}")
        return "\n".join(lines)

    def settle(self, quiet: float = 0.3, limit: float = 10.0) -> None:
        """Wait until no request has been in flight for ``quiet`` seconds (stragglers of an interrupted run)."""
        end, still = time.monotonic() + limit, 0.0
        while still < quiet and time.monotonic() < end:
            time.sleep(0.05)
            still = still + 0.05 if self.in_flight == 0 else 0.0

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def llm():
    fake = FakeLLM()
    yield fake
    fake.close()


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_explain_scores_and_search_end_to_end(store_path, llm, capsys):
    llm.fail = [429, 500]                                   # the first two chat requests fail, then all pass
    llm.delay = 0.05
    code, out, err = run(capsys, "explain", "--store", str(store_path), "--endpoint", llm.url, "--features", "0-10",
                         "--concurrency", "3", "--json")
    assert code == 0, err
    s = json.loads(out)
    assert s["explained"] == len(WORDS) and s["skipped"] == {"no examples": 1} and not s["failed"]
    assert s["usage"]["retries"] == 2 and s["usage"]["models"]["fake-llm"]["completion_tokens"] == 7 * s["usage"]["requests"]
    assert 1 < llm.max_in_flight <= 3                       # concurrent, and never above the cap
    for scorer in ("detection", "fuzzing"):                 # the fake judge is right: a perfect explanation
        assert s["means"][scorer]["balanced_accuracy"] == {"mean": 1.0, "features": len(WORDS)}
        assert s["means"][scorer]["auroc"]["mean"] == 1.0
    with FeatureStore(store_path) as store:
        for f, w in enumerate(WORDS):
            [e] = store.explanations(f)
            assert e["explanation"].endswith(f'the word "{w}"') and e["model"] == "fake-llm"
            assert {sc["scorer"] for sc in e["scores"]} == {"detection", "fuzzing"}
            assert all(sc["judge"] == "llm:fake-llm" and sc["n"] > 0 for sc in e["scores"])
        hits = store.search("horse")
        assert hits[0].index == WORDS.index("horse") and hits[0].matched in ("explanation", "label")
        assert "«horse»" in hits[0].snippet
        assert store.search("word hor")[0].index == WORDS.index("horse")          # words AND-ed, last one a prefix
        # an explanation with markup is stored verbatim and found by its words
        [e] = store.explanations(WORDS.index("script"))
        assert e["explanation"] == '<!--<script> the word "script"'
        assert [h.index for h in store.search("script")][:1] == [WORDS.index("script")]
    # no explanation prompt saw a held-out example: every scored positive is outside the explainer's prompt
    explain_prompts = " ".join(r["messages"][1]["content"] for r in llm.explain_requests())
    assert explain_prompts.count("Excerpts:") == len(WORDS)


def test_resume_after_interruption_skips_finished_features(store_path, llm, capsys):
    llm.delay = 0.03
    llm.interrupt_after = 4
    code, _, err = run(capsys, "explain", "--store", str(store_path), "--endpoint", llm.url, "--model", "fake-llm",
                       "--features", "all", "--concurrency", "2", "--scorers", "detection")
    assert code == 130 and "interrupted" in err
    with FeatureStore(store_path) as store:
        saved = {e["feature"] for e in store.explanations()}
        assert all(store.explanations(f)[0]["scores"] for f in saved)    # saved features are complete
    assert 0 < len(saved) < len(WORDS)
    llm.settle()
    before = len(llm.explain_requests())
    llm.interrupt_after = None
    code, out, err = run(capsys, "explain", "--store", str(store_path), "--endpoint", llm.url, "--model", "fake-llm",
                         "--features", "all", "--concurrency", "2", "--scorers", "detection", "--json")
    assert code == 0, err
    s = json.loads(out)
    assert s["reused"] == len(saved) and s["explained"] == len(WORDS) - len(saved)
    assert len(llm.explain_requests()) - before == len(WORDS) - len(saved)     # nothing explained twice
    with FeatureStore(store_path) as store:
        assert sorted(e["feature"] for e in store.explanations()) == list(range(len(WORDS)))
    # a third run with a new scorer only scores (no explanation requests); a fourth has nothing to do
    code, out, _ = run(capsys, "explain", "--store", str(store_path), "--endpoint", llm.url, "--model", "fake-llm",
                       "--scorers", "detection,fuzzing", "--json")
    assert code == 0 and json.loads(out)["scored"] == len(WORDS)
    assert len(llm.explain_requests()) - before == len(WORDS) - len(saved)
    n = len(llm.requests)
    code, out, _ = run(capsys, "explain", "--store", str(store_path), "--endpoint", llm.url, "--model", "fake-llm", "--json")
    assert code == 0 and json.loads(out)["skipped"]["done"] == len(WORDS) and len(llm.requests) == n


def test_api_key_from_named_environment_variable(store_path, llm, capsys, monkeypatch):
    code, _, err = run(capsys, "explain", "--store", str(store_path), "--endpoint", llm.url,
                       "--api-key-env", "SAESCOPE_TEST_KEY")
    assert code == 2 and "SAESCOPE_TEST_KEY is not set" in err and len(err.splitlines()) == 1
    monkeypatch.setenv("SAESCOPE_TEST_KEY", "sk-test-123")
    code, _, err = run(capsys, "explain", "--store", str(store_path), "--endpoint", llm.url, "--api-key-env",
                       "SAESCOPE_TEST_KEY", "--features", "0", "--scorers", "none")
    assert code == 0, err
    assert {h.get("Authorization") for h in llm.headers} == {"Bearer sk-test-123"}


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_unreachable_endpoint_is_one_line(store_path, capsys):
    t0 = time.perf_counter()
    code, out, err = run(capsys, "explain", "--store", str(store_path), "--endpoint", f"http://127.0.0.1:{_free_port()}/v1",
                         "--model", "m")
    assert code == 2 and "cannot be reached" in err and len(err.strip().splitlines()) == 1 and not out
    assert time.perf_counter() - t0 < 10
    code, _, err = run(capsys, "explain", "--store", str(store_path), "--endpoint", "ftp://x")
    assert code == 2 and "http(s) URL" in err


@pytest.mark.parametrize("mode, words", [("not-json", "not JSON"), ("no-choices", "no choices[0].message")])
def test_malformed_responses_stop_with_one_line(store_path, llm, capsys, mode, words):
    llm.mode = mode
    code, _, err = run(capsys, "explain", "--store", str(store_path), "--endpoint", llm.url, "--model", "fake-llm")
    assert code == 2 and "malformed response" in err and words in err and len(err.strip().splitlines()) == 1
    with FeatureStore(store_path) as store:
        assert store.explanations() == []


def test_stores_without_statistics(tmp_path, llm, capsys):
    empty = write_store(tmp_path / "empty.sqlite", FeatureStats([], 0, [], StatsConfig(), 0.0, {"d_sae": 3}))
    code, _, err = run(capsys, "explain", "--store", str(empty), "--endpoint", llm.url, "--features", "0-2")
    assert code == 2 and "no feature statistics" in err
    blank = write_store(tmp_path / "blank.sqlite", make_stats(with_examples=False))
    code, _, err = run(capsys, "explain", "--store", str(blank), "--endpoint", llm.url)
    assert code == 2 and "has activating examples" in err
    (tmp_path / "junk.sqlite").write_bytes(b"not a database at all" * 100)
    code, _, err = run(capsys, "explain", "--store", str(tmp_path / "junk.sqlite"), "--explainer", "tokens",
                       "--scorers", "none")
    assert code == 2 and "junk.sqlite" in err and len(err.strip().splitlines()) == 1
    assert not llm.requests


def test_bundled_store_is_never_modified_and_old_stores_read(tmp_path, capsys):
    from saescope.assets import tiny_sae_dir

    bundled = tiny_sae_dir() / "features.sqlite"
    digest = hashlib.sha256(bundled.read_bytes()).hexdigest()
    code, _, err = run(capsys, "explain", "--explainer", "tokens", "--scorers", "none", "--features", "0-3")
    assert code == 2 and "--out" in err and "never modified" in err
    with FeatureStore(bundled) as store:                # written before explanations existed: none, no error
        assert store.explanations() == [] and store.explanations(5) == []
        assert 2 in [h.index for h in store.search("God")]          # labels are searchable without any table
    out = tmp_path / "copy.sqlite"
    code, text, err = run(capsys, "explain", "--out", str(out), "--explainer", "tokens", "--judge", "oracle",
                          "--features", "0-3")
    assert code == 0, err
    assert hashlib.sha256(bundled.read_bytes()).hexdigest() == digest
    with FeatureStore(out) as store:
        assert len(store.explanations()) == 4 and store.meta.get("schema_version") == 2
    other = write_store(tmp_path / "other.sqlite", make_stats())
    code, _, err = run(capsys, "explain", "--store", str(other), "--out", str(out), "--explainer", "tokens",
                       "--scorers", "none")
    assert code == 2 and "not a copy" in err


def test_api_search_route_returns_explanations_verbatim(store_path, llm, capsys, gpt2_dir, tmp_path):
    from fastapi.testclient import TestClient

    from saescope.lm import LanguageModel
    from saescope.sae import SAE, SAEConfig, SAEMetadata
    from saescope.server import create_app

    code, _, err = run(capsys, "explain", "--store", str(store_path), "--endpoint", llm.url, "--scorers", "none")
    assert code == 0, err
    lm = LanguageModel.from_pretrained(str(gpt2_dir))
    SAE(SAEConfig("topk", d_in=64, d_sae=len(WORDS) + 1, k=2,
                  metadata=SAEMetadata(hook_name="blocks.3.hook_resid_pre"))).save(tmp_path / "sae")
    (tmp_path / "sae" / "labels.json").write_text(json.dumps({"2": "God · heaven → grant", "4": "Godfrey", "5": "gold"}))
    sae = SAE.load(tmp_path / "sae")
    with FeatureStore(store_path) as store:
        client = TestClient(create_app(lm, sae, "test-sae", store))
        r = client.get("/api/search", params={"q": "script"})
        assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
        hit = r.json()["features"][0]
        assert hit["index"] == WORDS.index("script") and hit["explanation"] == '<!--<script> the word "script"'
        assert hit["label_source"] == "auto" and hit["explanation_model"] == "fake-llm"
        assert client.get("/api/search", params={"q": "x", "limit": 0}).status_code == 422
        assert client.get("/api/search", params={"q": ""}).json()["features"] == []
        assert client.get("/api/search", params={"q": '"unbalanced AND ( OR *'}).status_code == 200
    # without a store, the labels alone are searched
    client = TestClient(create_app(lm, sae, "test-sae", None))
    hits = client.get("/api/search", params={"q": "God"}).json()["features"]
    assert sorted(h["index"] for h in hits) == [2, 4] and hits[0]["explanation"] is None     # "God"* is a prefix


def test_verified_negatives_from_text_on_the_bundled_sae(tmp_path, capsys):
    text = tmp_path / "text.txt"
    text.write_text("The Emperor Napoleon rode out before the French army at dawn. Prince Andrew looked at the sky.\n" * 40)
    out = tmp_path / "copy.sqlite"
    code, stdout, err = run(capsys, "explain", "--out", str(out), "--explainer", "tokens", "--judge", "oracle",
                            "--scorers", "detection", "--features", "0-3", "--negatives-from", str(text), "--json")
    assert code == 0, err
    s = json.loads(stdout)
    assert s["negatives"] == "text (verified)" and s["means"]["detection"]["balanced_accuracy"]["mean"] == 1.0
    with FeatureStore(out) as store:
        [sc] = store.explanations(0)[0]["scores"]
    assert sc["judge"] == "oracle" and sc["n"] > 0
    code, _, err = run(capsys, "explain", "--store", str(out), "--explainer", "tokens", "--scorers", "detection",
                       "--judge", "oracle", "--negatives-from", str(text), "--sae", "tiny:mlp1-transcoder")
    assert code == 2 and "built for another SAE: hook blocks.2.hook_resid_pre (this SAE: blocks.1.ln2.hook_normalized); d_sae 4096 (this SAE: 1024)" in err
