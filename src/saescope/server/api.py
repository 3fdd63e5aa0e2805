"""The JSON routes of the web app (``router(state, forms)``); each parses, calls one library function, answers.

    GET  /healthz
    GET  /api/feature/{id}    the record + has_stats, neuronpedia_url, dense, explanations, nearest (404 when out of range)
    GET  /api/features        index rows (?sort=index|density|max|mean|label&q=&limit=&offset=)
    GET  /api/search?q=       explanations, labels, then the logit lens (``AppState.search``)
    POST /api/read            {"text", "top_k"?, "feature"?} -> ``saescope read --json`` (+ "trace" with features, as
                              ``--feature``) + "display_tokens" (split characters merged)
    POST /api/steer           {"prompt", "feature", "strength", "method", ..., "n"?} -> ``saescope steer --json``
                              + "samples": [{"baseline", "steered"}] (n seeded samples, one batch each)
    POST /api/attribute       {"text", "target"?, "target_id"?, "method", "position", "top"} -> ``saescope attribute
                              --json`` + "display_tokens"
"""
# no "from __future__ import annotations": FastAPI reads the request models from the annotations of local functions


def read_json(lm, sae_spec: str, res, trace=None) -> dict:
    """The JSON of ``saescope read --json`` (src/saescope/cli/interp.py); tests/test_server.py checks it stays equal."""
    d = res.to_dict()
    out = {"model": lm.name, "sae": sae_spec, "hook": res.hook, "tokens": d["tokens"],
           "mean_l0": res.mean_l0, "percent_active": res.percent_active}
    if trace is not None:
        out["trace"] = trace.to_dict()["features"]
    return out


def steer_json(lm, sae_spec: str, res) -> dict:
    """The JSON of ``saescope steer --json``."""
    return {**res.to_dict(), "model": lm.name, "sae": sae_spec}


def interventions(req) -> list:
    """The request's interventions, exactly as ``saescope steer`` builds them from its options
    (``saescope.interp.build_interventions``, the function both call)."""
    from ..interp import build_interventions

    feats = [req.feature] if isinstance(req.feature, int) else list(req.feature)
    strengths = [req.strength] if isinstance(req.strength, (int, float)) else list(req.strength)
    return build_interventions(feats, strengths, req.method, req.positions, req.algebra)


def router(st, forms):
    from fastapi import APIRouter

    from ..interp import direct_logit_attribution, feature_trace, generate_steered, gradient_attribution, read_features
    from ..report import html
    from ..report.browse import is_dense
    from ..report.tour import sample_pairs

    r = APIRouter()
    lm, sae, cfg = st.lm, st.sae, st.cfg
    ReadRequest, SteerRequest, AttributeRequest = forms

    @r.get("/healthz")
    def healthz():
        return {"ok": True, "model": lm.name, "sae": st.sae_spec, "d_sae": sae.d_sae}

    @r.get("/api/feature/{index}")
    def api_feature(index: int):
        rec = st.record(st.check_index(index))
        return {"model": lm.name, "sae": st.sae_spec, "hook": st.meta.get("hook"), "has_stats": st.has_stats,
                "neuronpedia_url": html.neuronpedia_url(st.meta, index), **rec.to_dict(),
                "dense": st.has_stats and is_dense(rec.density, cfg.dense_density),
                "explanations": st.explanations(index), "nearest": st.nearest(index)}

    @r.get("/api/features")
    def api_features(sort: str = "index", q: str | None = None, limit: int = 100, offset: int = 0):
        if st.store is None:
            rows = [s for s in st.summaries() if not q or q == str(s.index) or (s.label and q.lower() in s.label.lower())]
            rows = rows[max(0, offset): max(0, offset) + max(0, limit)]
        else:
            rows = st.store.summaries(sort=sort, query=q, limit=max(0, min(limit, 10_000)), offset=max(0, offset))
        return {"features": [s.to_dict() for s in rows]}

    @r.get("/api/search")
    def api_search(q: str = "", limit: int = 20):
        """Explanations and labels (``saescope.explain.search``), then features whose logit lens promotes ``q``."""
        from .._checks import checked_int

        return st.search(q, checked_int(limit, "limit", lo=1, hi=1000))

    @r.post("/api/read")
    def api_read(req: ReadRequest):
        with st.read_gate.enter("reads"), st.model_lock:
            [res] = read_features(lm, sae, req.text, top_k=req.top_k)
            trace = feature_trace(lm, sae, req.text, req.feature) if req.feature else None
        out = read_json(lm, st.sae_spec, res, trace)
        out["display_tokens"] = st.display([t.token_id for t in res.tokens])
        return out

    @r.post("/api/steer")
    def api_steer(req: SteerRequest):
        ivs = interventions(req)
        with st.gen_gate.enter("generations"), st.model_lock:
            res = generate_steered(lm, sae, req.prompt, ivs, max_new_tokens=req.max_new_tokens,
                                   temperature=req.temperature, top_p=req.top_p, seed=req.seed)
            pairs = [(res.baseline, res.steered)]
            if req.n > 1:   # n samples in one batch each (row i of both batches draws the same numbers)
                pairs = sample_pairs(lm, sae, req.prompt, ivs, req.n, req.max_new_tokens, req.temperature,
                                     seed=res.seed or 0, top_p=req.top_p)
        return {**steer_json(lm, st.sae_spec, res), "n": req.n,
                "samples": [{"baseline": b, "steered": s} for b, s in pairs]}

    @r.post("/api/attribute")
    def api_attribute(req: AttributeRequest):
        target = req.target_id if req.target_id is not None else (req.target or None)
        fn = direct_logit_attribution if req.method == "dla" else gradient_attribution
        with st.gen_gate.enter("generations"), st.model_lock:
            res = fn(lm, sae, req.text, target, position=req.position)
            ids = st.att.tokens(req.text)[0].tolist()
        return {"model": lm.name, "sae": st.sae_spec, **res.to_dict(top=req.top), "display_tokens": st.display(ids)}

    return r
