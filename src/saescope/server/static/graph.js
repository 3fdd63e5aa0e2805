// saescope graph view: an attribution graph (Neuronpedia's graph JSON) drawn as SVG. Plain JS, no dependencies.
// y: embeddings at the bottom, one row per layer, logits at the top; x: prompt positions (tokens on the axis).
// Edges: width and opacity by |weight|, colour by sign. Hover: details; click: keep them; pin / supernodes;
// thresholds filter in the browser. State (pinnedIds, supernodes, clickedId, thresholds) lives in the URL.
(function () {
  "use strict";
  const G = JSON.parse(document.getElementById("graph-data").textContent);
  const C = JSON.parse(document.getElementById("graph-config").textContent);
  const NS = "http://www.w3.org/2000/svg";
  const toks = G.metadata.prompt_tokens || [];
  const nodes = G.nodes, byId = new Map(), inE = new Map(), outE = new Map();
  nodes.forEach(n => { byId.set(n.node_id, n); inE.set(n.node_id, []); outE.set(n.node_id, []); });
  G.links.forEach(e => { outE.get(e.source).push(e); inE.get(e.target).push(e); });
  const maxW = G.links.reduce((m, e) => Math.max(m, Math.abs(e.weight)), 1e-12);   // (no spread: 1e5+ links)
  const linkLayers = new Set((C.link_layers || []).map(String));
  const $ = id => document.getElementById(id);
  const esc = s => String(s == null ? "" : s).replace(/[&<>"']/g, c => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
  const shown = t => String(t).replace(/\n/g, "⏎").replace(/\t/g, "→").replace(/\r/g, "↵");
  const fmt = x => (x == null || !isFinite(x)) ? "–" : (Math.abs(x) >= 100 || (Math.abs(x) < 0.01 && x !== 0) ? Number(x).toExponential(2) : Number(x).toFixed(3));

  // ---- node facts --------------------------------------------------------------------------------------------
  const isFeature = n => n.feature_type === "cross layer transcoder";
  const isError = n => n.feature_type === "mlp reconstruction error";
  const rowKey = n => n.feature_type === "embedding" ? -1 : n.feature_type === "logit" ? 1e9 : parseInt(n.layer, 10);
  function featureIndex(n) {            // node_id "{layer}_{feature}_{pos}" as circuit-tracer writes it
    if (!isFeature(n)) return null;
    const p = n.node_id.split("_");
    return p.length === 3 && /^\d+$/.test(p[1]) ? parseInt(p[1], 10) : null;
  }
  const tcLayers = new Set((C.transcoder_layers || []).map(String));
  function featureHref(n) {              // the served SAE's page, else the page of the layer's recorded transcoder
    const f = featureIndex(n);
    if (f === null) return null;
    if (linkLayers.has(String(n.layer))) return C.feature_url + f;
    return tcLayers.has(String(n.layer)) ? C.layer_feature_url + n.layer + "/" + f : null;
  }
  function label(n) {
    if (n.feature_type === "embedding") return "Emb: " + shown(toks[n.ctx_idx] ?? "");
    if (isError(n)) return "Error L" + n.layer + " @" + n.ctx_idx;
    if (n.clerp) return n.clerp;
    const f = featureIndex(n);
    return isFeature(n) ? "L" + n.layer + " #" + (f === null ? n.feature : f) : n.node_id;
  }
  const rows = [...new Set(nodes.map(rowKey))].sort((a, b) => a - b);
  const rowName = k => k === -1 ? "emb" : k === 1e9 ? "logits" : "L" + k;

  // ---- state (URL) ----------------------------------------------------------------------------------------------
  const url = new URL(location.href), q = G.qParams || {};
  const S = {
    pinned: (url.searchParams.get("pinnedIds") ?? (q.pinnedIds || []).join(",")).split(",").filter(id => byId.has(id)),
    supernodes: [], clicked: url.searchParams.get("clickedId") ?? (q.clickedId || ""), selected: new Set(),
    nodeT: parseFloat(url.searchParams.get("nodeThreshold") ?? G.metadata.node_threshold ?? 0.8),
    edgeT: parseFloat(url.searchParams.get("edgeThreshold") ?? 0.02),
  };
  try {
    const sn = url.searchParams.has("supernodes") ? JSON.parse(url.searchParams.get("supernodes")) : (q.supernodes || []);
    S.supernodes = sn.filter(s => Array.isArray(s) && s.length > 1).map(s => [String(s[0]), ...s.slice(1).filter(id => byId.has(id))]);
  } catch (e) { S.supernodes = []; }
  if (!byId.has(S.clicked)) S.clicked = "";
  if (!isFinite(S.nodeT)) S.nodeT = 0.8;
  if (!isFinite(S.edgeT)) S.edgeT = 0.02;

  function saveState() {
    const u = new URL(location.href);
    const set = (k, v) => v ? u.searchParams.set(k, v) : u.searchParams.delete(k);
    set("pinnedIds", S.pinned.join(","));
    set("supernodes", S.supernodes.length ? JSON.stringify(S.supernodes) : "");
    set("clickedId", S.clicked);
    set("nodeThreshold", String(S.nodeT));
    set("edgeThreshold", String(S.edgeT));
    history.replaceState(null, "", u.toString());
  }

  // ---- filtering ----------------------------------------------------------------------------------------------
  function visible() {
    const pinned = new Set(S.pinned);
    const keep = new Set(nodes.filter(n => n.feature_type === "embedding" || n.feature_type === "logit" ||
      n.influence == null || n.influence <= S.nodeT || pinned.has(n.node_id)).map(n => n.node_id));
    const edges = G.links.filter(e => keep.has(e.source) && keep.has(e.target) && Math.abs(e.weight) >= S.edgeT * maxW);
    const touched = new Set();
    edges.forEach(e => { touched.add(e.source); touched.add(e.target); });
    const vis = nodes.filter(n => keep.has(n.node_id) && (touched.has(n.node_id) || n.feature_type === "embedding" ||
      n.feature_type === "logit" || pinned.has(n.node_id)));
    const visIds = new Set(vis.map(n => n.node_id));
    return { nodes: vis, edges: edges.filter(e => visIds.has(e.source) && visIds.has(e.target)) };
  }

  // ---- layout: rows by layer, columns by position ------------------------------------------------------------
  function layout(list, opts) {
    const slot = opts.slot, rowH = opts.rowH, left = 56, top = 34;
    const cells = new Map();
    list.forEach(n => { const k = rowKey(n) + "|" + n.ctx_idx; if (!cells.has(k)) cells.set(k, []); cells.get(k).push(n); });
    const usedRows = opts.allRows ? rows : [...new Set(list.map(rowKey))].sort((a, b) => a - b);
    const positions = opts.allPositions ? toks.map((_, i) => i) : [...new Set(list.map(n => n.ctx_idx))].sort((a, b) => a - b);
    const width = new Map(positions.map(p => [p, opts.minCol]));
    cells.forEach((ns, k) => {
      const [r, p] = k.split("|").map(Number), sl = r === 1e9 && opts.logitSlot ? opts.logitSlot : slot;
      width.set(p, Math.max(width.get(p) || 0, ns.length * sl + 8));
    });
    const x0 = new Map();
    let x = left;
    positions.forEach(p => { x0.set(p, x); x += width.get(p); });
    const pos = new Map();
    cells.forEach((ns, k) => {
      const [r, p] = k.split("|").map(Number);
      ns.sort((a, b) => (a.influence ?? 0) - (b.influence ?? 0) || (a.node_id < b.node_id ? -1 : 1));
      const cx = x0.get(p) + width.get(p) / 2, y = top + (usedRows.length - 1 - usedRows.indexOf(r)) * rowH;
      const sl = r === 1e9 && opts.logitSlot ? opts.logitSlot : slot;
      ns.forEach((n, i) => pos.set(n.node_id, { x: cx + (i - (ns.length - 1) / 2) * sl, y: y }));
    });
    return { pos, rows: usedRows, positions, x0, width, W: x + 16, H: top + usedRows.length * rowH + 34, top, rowH };
  }

  const el = (tag, attrs, parent) => {
    const e = document.createElementNS(NS, tag);
    for (const k in attrs) e.setAttribute(k, attrs[k]);
    if (parent) parent.appendChild(e);
    return e;
  };

  function shape(n, p, g) {
    if (n.feature_type === "embedding") return el("rect", { x: p.x - 6, y: p.y - 6, width: 12, height: 12, rx: 2 }, g);
    if (n.feature_type === "logit") return el("rect", { x: p.x - 8, y: p.y - 6, width: 16, height: 12, rx: 6 }, g);
    if (isError(n)) return el("polygon", { points: `${p.x},${p.y - 7} ${p.x + 7},${p.y} ${p.x},${p.y + 7} ${p.x - 7},${p.y}` }, g);
    return el("circle", { cx: p.x, cy: p.y, r: 6 }, g);
  }

  function edgePath(a, b) {
    const my = (a.y + b.y) / 2;
    return `M${a.x},${a.y} C${a.x},${my} ${b.x},${my} ${b.x},${b.y}`;
  }

  function drawEdges(svg, edges, pos, cls) {
    const g = el("g", { class: cls }, svg);
    edges.slice().sort((a, b) => Math.abs(a.weight) - Math.abs(b.weight)).forEach(e => {
      const a = pos.get(e.source), b = pos.get(e.target);
      if (!a || !b) return;
      const s = Math.abs(e.weight) / maxW;
      const path = el("path", { d: edgePath(a, b), class: "edge " + (e.weight >= 0 ? "pos" : "neg"), "data-source": e.source,
        "data-target": e.target, "stroke-width": (0.6 + 4.4 * s).toFixed(2), "stroke-opacity": (0.15 + 0.8 * s).toFixed(3) }, g);
      el("title", {}, path).textContent = `${label(byId.get(e.source) || { node_id: e.source })} → ${label(byId.get(e.target) || { node_id: e.target })}: ${fmt(e.weight)}`;
    });
    return g;
  }

  function drawAxes(svg, L) {
    const g = el("g", { class: "axes" }, svg);
    L.rows.forEach((r, i) => {
      const y = L.top + (L.rows.length - 1 - i) * L.rowH;
      el("line", { x1: 48, x2: L.W - 8, y1: y, y2: y, class: "rowline" }, g);
      el("text", { x: 4, y: y + 4, class: "rowname" }, g).textContent = rowName(r);
    });
    L.positions.forEach(p => {
      const t = el("text", { x: L.x0.get(p) + L.width.get(p) / 2, y: L.H - 12, class: "tok", "text-anchor": "middle", "data-pos": p }, g);
      const s = shown(toks[p] ?? "");
      t.textContent = s.length > 12 ? s.slice(0, 11) + "…" : s;
      el("title", {}, t).textContent = `position ${p}: ${JSON.stringify(toks[p] ?? "")}`;
    });
  }

  function supernodeOf(id) { return S.supernodes.find(s => s.indexOf(id, 1) > 0); }

  // ---- main graph -----------------------------------------------------------------------------------------------
  let L = null, edgeEls = new Map();
  function draw() {
    const svg = $("graph-svg");
    svg.textContent = "";
    const v = visible();
    L = layout(v.nodes, { slot: 24, logitSlot: 52, rowH: 80, minCol: 84, allRows: true, allPositions: true });
    svg.setAttribute("width", L.W); svg.setAttribute("height", L.H);
    svg.setAttribute("viewBox", `0 0 ${L.W} ${L.H}`);
    drawAxes(svg, L);
    const gs = el("g", { class: "supernode-boxes" }, svg);
    S.supernodes.forEach(s => {
      const ps = s.slice(1).map(id => L.pos.get(id)).filter(Boolean);
      if (!ps.length) return;
      const x1 = Math.min(...ps.map(p => p.x)) - 11, x2 = Math.max(...ps.map(p => p.x)) + 11;
      const y1 = Math.min(...ps.map(p => p.y)) - 11, y2 = Math.max(...ps.map(p => p.y)) + 11;
      el("rect", { x: x1, y: y1, width: x2 - x1, height: y2 - y1, rx: 6, class: "supernode-box", "data-name": s[0] }, gs);
      el("text", { x: x1 + 2, y: y1 - 3, class: "supernode-label" }, gs).textContent = s[0];
    });
    edgeEls = new Map(); lit = [];
    drawEdges(svg, v.edges, L.pos, "edges").querySelectorAll("path.edge").forEach(p => {
      for (const id of [p.dataset.source, p.dataset.target]) {
        if (!edgeEls.has(id)) edgeEls.set(id, []);
        edgeEls.get(id).push(p);
      }
    });
    const gn = el("g", { class: "nodes" }, svg), pinned = new Set(S.pinned);
    v.nodes.forEach(n => {
      const p = L.pos.get(n.node_id);
      const g = el("g", { class: "node " + n.feature_type.replace(/ /g, "-") + (pinned.has(n.node_id) ? " pinned" : "") +
        (n.node_id === S.clicked ? " clicked" : "") + (n.is_target_logit ? " target" : ""), "data-id": n.node_id, tabindex: "0" }, gn);
      shape(n, p, g);
      el("title", {}, g).textContent = label(n);
      if (n.feature_type === "logit") {
        const m = /^Output "(.*)" \(p=/.exec(n.clerp || ""), s = shown(m ? m[1] : label(n));
        el("text", { x: p.x, y: p.y - 10, class: "nlabel", "text-anchor": "middle" }, g).textContent = s.length > 8 ? s.slice(0, 7) + "…" : s;
      } else if (pinned.has(n.node_id)) {
        const s = shown(label(n));
        el("text", { x: p.x + 4, y: p.y - 9, class: "nlabel", transform: `rotate(-20 ${p.x + 4} ${p.y - 9})` }, g).textContent = s.length > 22 ? s.slice(0, 21) + "…" : s;
      }
      g.addEventListener("mouseenter", () => { highlight(n.node_id); detail(n.node_id); });
      g.addEventListener("mouseleave", () => { highlight(S.clicked); detail(S.clicked); });
      g.addEventListener("click", ev => {
        if (ev.ctrlKey || ev.metaKey) { togglePin(n.node_id); return; }
        S.clicked = S.clicked === n.node_id ? "" : n.node_id;
        update();
      });
      g.addEventListener("keydown", ev => {
        if (ev.key === "Enter" || ev.key === " ") { ev.preventDefault(); S.clicked = n.node_id; update(); }
        else if (ev.key === "p") togglePin(n.node_id);
      });
      g.addEventListener("focus", () => { highlight(n.node_id); detail(n.node_id); });
    });
    $("graph-counts").textContent = `${v.nodes.length} of ${nodes.length} nodes, ${v.edges.length} of ${G.links.length} edges`;
    $("node-threshold-v").textContent = S.nodeT.toFixed(2);
    $("edge-threshold-v").textContent = S.edgeT.toFixed(2);
    highlight(S.clicked);
  }

  let lit = [];                           // the highlighted edge elements (no pass over every edge per hover)
  function highlight(id) {
    $("graph-svg").classList.toggle("focus", !!id);
    lit.forEach(p => p.classList.remove("hl"));
    lit = id ? (edgeEls.get(id) || []) : [];
    lit.forEach(p => p.classList.add("hl"));
  }

  function edgeRows(list, end, title) {
    const top = list.slice().sort((a, b) => Math.abs(b.weight) - Math.abs(a.weight)).slice(0, 6);
    if (!top.length) return "";
    return `<h4>${title}</h4><table class="edges-t">` + top.map(e => {
      const m = byId.get(e[end]);
      return `<tr><td class="num ${e.weight >= 0 ? "pos" : "neg"}">${fmt(e.weight)}</td><td><a href="#" class="goto" data-id="${esc(e[end])}">${esc(shown(label(m)))}</a></td></tr>`;
    }).join("") + "</table>";
  }

  function detail(id) {
    const box = $("graph-detail"), n = byId.get(id);
    if (!n) { box.innerHTML = "Hover a node for its details; click it to keep them here."; return; }
    const href = featureHref(n), f = featureIndex(n), pinned = S.pinned.includes(id), sn = supernodeOf(id);
    const facts = [["type", n.feature_type], ["layer", n.layer], ["position", `${n.ctx_idx} ${JSON.stringify(toks[n.ctx_idx] ?? "")}`]];
    if (f !== null) facts.push(["feature", f]);
    if (n.activation != null) facts.push(["activation", fmt(n.activation)]);
    if (n.influence != null) facts.push(["influence", fmt(n.influence)]);
    if (n.feature_type === "logit") facts.push(["probability", fmt(n.token_prob)]);
    if (sn) facts.push(["supernode", sn[0]]);
    box.innerHTML = `<div class="d-title">${esc(shown(label(n)))}</div><div class="muted d-id">${esc(n.node_id)}</div>` +
      `<table class="facts">${facts.map(([k, v]) => `<tr><th>${k}</th><td>${esc(v)}</td></tr>`).join("")}</table><p>` +
      (href ? `<a class="feature-link" href="${esc(href)}">feature page →</a> ` : "") +
      `<button type="button" class="pin-btn link" data-id="${esc(id)}">${pinned ? "unpin" : "pin"}</button></p>` +
      edgeRows(inE.get(id), "source", "strongest inputs") + edgeRows(outE.get(id), "target", "strongest outputs");
  }

  $("graph-detail").addEventListener("click", ev => {
    const t = ev.target;
    if (t.classList.contains("pin-btn")) { togglePin(t.dataset.id); }
    else if (t.classList.contains("goto")) { ev.preventDefault(); S.clicked = t.dataset.id; update(); }
  });

  function togglePin(id) {
    const i = S.pinned.indexOf(id);
    if (i >= 0) {
      S.pinned.splice(i, 1); S.selected.delete(id);
      S.supernodes = S.supernodes.map(s => s.filter((x, j) => j === 0 || x !== id)).filter(s => s.length > 1);
    } else S.pinned.push(id);
    update();
  }

  // ---- pinned subgraph, supernodes -----------------------------------------------------------------------------
  function drawPinned() {
    const box = $("pinned");
    if (!S.pinned.length) { box.innerHTML = "<p class=\"muted\">Nothing pinned.</p>"; }
    else {
      box.innerHTML = "<table id=\"pinned-t\">" + S.pinned.map(id => {
        const n = byId.get(id), sn = supernodeOf(id);
        return `<tr data-id="${esc(id)}"><td><input type="checkbox" class="sel" data-id="${esc(id)}"${S.selected.has(id) ? " checked" : ""}></td>` +
          `<td>${esc(shown(label(n)))}</td><td class="muted">${esc(id)}</td><td>${sn ? `<span class="tag">${esc(sn[0])}</span>` : ""}</td>` +
          `<td><button type="button" class="unpin link" data-id="${esc(id)}">unpin</button></td></tr>`;
      }).join("") + "</table>";
    }
    $("supernodes").innerHTML = S.supernodes.map((s, i) => `<div class="sn" data-name="${esc(s[0])}"><b>${esc(s[0])}</b>: ` +
      s.slice(1).map(id => esc(shown(label(byId.get(id))))).join(", ") + ` <button type="button" class="ungroup link" data-i="${i}">ungroup</button></div>`).join("");
    drawSubgraph();
  }

  $("pinned").addEventListener("change", ev => {
    if (!ev.target.classList.contains("sel")) return;
    if (ev.target.checked) S.selected.add(ev.target.dataset.id); else S.selected.delete(ev.target.dataset.id);
  });
  $("pinned").addEventListener("click", ev => { if (ev.target.classList.contains("unpin")) togglePin(ev.target.dataset.id); });
  $("supernodes").addEventListener("click", ev => {
    if (!ev.target.classList.contains("ungroup")) return;
    S.supernodes.splice(+ev.target.dataset.i, 1); update();
  });
  $("group-go").addEventListener("click", () => {
    const ids = S.pinned.filter(id => S.selected.has(id));
    if (!ids.length) { $("supernode-name").placeholder = "select pinned nodes first"; return; }
    let name = $("supernode-name").value.trim() || "group " + (S.supernodes.length + 1);
    const taken = new Set(S.supernodes.map(s => s[0]));
    for (let k = 2; taken.has(name); k++) name = name.replace(/ \(\d+\)$/, "") + ` (${k})`;
    S.supernodes = S.supernodes.map(s => s.filter((x, j) => j === 0 || !ids.includes(x))).filter(s => s.length > 1);
    S.supernodes.push([name, ...ids]);
    S.selected.clear(); $("supernode-name").value = "";
    update();
  });
  $("pin-clear").addEventListener("click", () => { S.pinned = []; S.supernodes = []; S.selected.clear(); update(); });
  $("graph-download").addEventListener("click", () => {
    // the graph file with this view's pins, supernodes and clicked node in qParams (Neuronpedia reads them)
    const out = Object.assign({}, G, { qParams: Object.assign({}, G.qParams || {}, { pinnedIds: S.pinned.slice(),
      supernodes: S.supernodes.map(s => s.slice()), clickedId: S.clicked }) });
    const a = document.createElement("a");
    a.href = URL.createObjectURL(new Blob([JSON.stringify(out)], { type: "application/json" }));
    a.download = (C.name || "graph") + ".json";
    document.body.appendChild(a); a.click(); a.remove();
    setTimeout(() => URL.revokeObjectURL(a.href), 1000);
  });

  function drawSubgraph() {
    // Pinned nodes by layer and position; each supernode drawn as one box, its edges summed.
    const svg = $("subgraph-svg");
    svg.textContent = "";
    if (!S.pinned.length) { svg.setAttribute("width", 0); svg.setAttribute("height", 0); return; }
    const rep = new Map();                 // node id -> drawn id (a supernode: "sn:" + name)
    const items = [];
    S.pinned.forEach(id => {
      const s = supernodeOf(id), n = byId.get(id);
      if (!s) { rep.set(id, id); items.push({ id, node: n, name: label(n), members: [n] }); return; }
      const key = "sn:" + s[0];
      rep.set(id, key);
      let it = items.find(x => x.id === key);
      if (!it) { it = { id: key, name: s[0], members: [], supernode: true }; items.push(it); }
      it.members.push(n);
    });
    const proxies = items.map(it => {
      const m = it.members, pick = m.slice().sort((a, b) => rowKey(b) - rowKey(a))[0];
      return { node_id: it.id, feature_type: pick.feature_type, layer: pick.layer, ctx_idx: Math.max(...m.map(x => x.ctx_idx)), item: it };
    });
    const SL = layout(proxies, { slot: 150, rowH: 70, minCol: 150 });
    svg.setAttribute("width", SL.W); svg.setAttribute("height", SL.H);
    drawAxes(svg, SL);
    const sum = new Map();
    G.links.forEach(e => {
      const a = rep.get(e.source), b = rep.get(e.target);
      if (!a || !b || a === b) return;
      const k = a + "\u0000" + b;
      sum.set(k, (sum.get(k) || 0) + e.weight);
    });
    drawEdges(svg, [...sum].map(([k, w]) => { const [s, t] = k.split("\u0000"); return { source: s, target: t, weight: w }; }), SL.pos, "edges");
    proxies.forEach(p => {
      const xy = SL.pos.get(p.node_id), it = p.item;
      const g = el("g", { class: "snode" + (it.supernode ? " supernode" : ""), "data-id": p.node_id }, svg);
      el("rect", { x: xy.x - 68, y: xy.y - 14, width: 136, height: 28, rx: it.supernode ? 4 : 12 }, g);
      const s = shown(it.name);
      el("text", { x: xy.x, y: xy.y + 4, "text-anchor": "middle" }, g).textContent = s.length > 22 ? s.slice(0, 21) + "…" : s;
      el("title", {}, g).textContent = it.supernode ? `${it.name}: ${it.members.map(label).join(", ")}` : it.name;
      if (!it.supernode) {
        g.addEventListener("mouseenter", () => detail(p.node_id));
        g.addEventListener("mouseleave", () => detail(S.clicked));
      }
    });
  }

  // ---- thresholds --------------------------------------------------------------------------------------------------
  $("node-threshold").value = S.nodeT;
  $("edge-threshold").value = S.edgeT;
  let pending = false;
  function redrawSoon() {                 // one redraw per frame while a slider moves (large graphs)
    if (pending) return;
    pending = true;
    requestAnimationFrame(() => { pending = false; draw(); saveState(); });
  }
  $("node-threshold").addEventListener("input", ev => { S.nodeT = parseFloat(ev.target.value); redrawSoon(); });
  $("edge-threshold").addEventListener("input", ev => { S.edgeT = parseFloat(ev.target.value); redrawSoon(); });

  // ---- interventions -----------------------------------------------------------------------------------------------
  $("intervene-max").max = C.max_new_tokens;
  const modeChanged = () => { $("intervene-value").disabled = $("intervene-mode").value !== "clamp"; };
  $("intervene-mode").addEventListener("change", modeChanged);
  modeChanged();
  function predTable(r) {
    const top = (r && (r.top || r.top_predictions)) || [];
    return "<table class=\"preds\">" + top.map(t => `<tr><td class="tokc">${esc(shown(JSON.stringify(t.token)))}</td>` +
      `<td class="num">${fmt(t.prob ?? t.probability)}</td></tr>`).join("") + "</table>";
  }
  $("intervene-form").addEventListener("submit", async ev => {
    ev.preventDefault();
    const err = $("intervene-err"), out = $("intervene-out");
    err.textContent = "";
    let ids = S.pinned.filter(id => S.selected.has(id));
    if (!ids.length && S.clicked) ids = [S.clicked];
    ids = ids.filter(id => isFeature(byId.get(id)));
    if (!ids.length) { err.textContent = "select pinned transcoder features (or click one) first"; return; }
    const mode = $("intervene-mode").value, value = parseFloat($("intervene-value").value);
    if (mode === "clamp" && !isFinite(value)) { err.textContent = "the clamp value must be a number"; return; }
    out.textContent = "running…";
    try {
      const r = await fetch(C.api + "/intervene", { method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ nodes: ids, mode, value: mode === "clamp" ? value : 0, max_new_tokens: parseInt($("intervene-max").value, 10) || 12,
          all_positions: $("intervene-all").checked }) });
      const d = await r.json();
      if (!r.ok) { out.textContent = ""; err.textContent = d.detail || ("HTTP " + r.status); return; }
      const b = d.baseline || {}, s = d.intervened || {};
      out.innerHTML = `<p class="muted">${esc(mode === "off" ? "turned off" : "clamped to " + value)}${$("intervene-all").checked ? " at every position" : ""}: ${ids.map(id => esc(shown(label(byId.get(id))))).join(", ")}</p>` +
        `<table class="iv"><tr><th>normal</th><th>with the intervention</th></tr><tr><td>${predTable(b)}</td><td class="steered">${predTable(s)}</td></tr>` +
        `<tr><td class="out">${esc(b.text ?? b.generation ?? "")}</td><td class="out steered">${esc(s.text ?? s.generation ?? "")}</td></tr></table>`;
    } catch (e) { out.textContent = ""; err.textContent = String(e); }
  });

  function update() { draw(); drawPinned(); detail(S.clicked); saveState(); }
  update();
  $("graph-main").scrollLeft = $("graph-main").scrollWidth;     // the last position: where the logits are
})();
