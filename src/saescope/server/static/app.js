// saescope local app: the read view (POST /api/read), steering (POST /api/steer) and attribution (POST /api/attribute).
(function () {
  function $(id) { return document.getElementById(id); }
  function esc(s) { return String(s).replace(/[&<>"']/g, function (c) { return "&#" + c.charCodeAt(0) + ";"; }); }
  function tok(s) { return esc(String(s).replace(/\n/g, "\u21b5").replace(/\t/g, "\u21e5").replace(/\r/g, "\u240d")); }
  function num(x, d) { return x === null || x === undefined ? "\u2013" : Number(x).toFixed(d); }
  function post(url, body) {
    return fetch(url, {method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)})
      .then(function (r) {
        return r.json().catch(function () { return {detail: r.statusText || "the server did not answer"}; })
          .then(function (j) {
            if (!r.ok) throw new Error(typeof j.detail === "string" ? j.detail : "the request failed (" + r.status + ")");
            return j;
          });
      });
  }
  function heat(x) { return x > 0 ? "rgba(230,110,20," + (0.1 + 0.8 * Math.min(1, x)).toFixed(3) + ")" : "transparent"; }
  function featLink(f) {
    return "<a class=\"feat\" href=\"/feature/" + f.index + "\">#" + f.index + " <b>" + num(f.activation, 2) + "</b>" +
      (f.label ? " <span class=\"label\">" + esc(f.label) + "</span>" : "") + "</a>";
  }
  function intOrNull(s) { s = String(s).trim(); return /^\d+$/.test(s) ? parseInt(s, 10) : (s === "" ? null : s); }

  // ------------------------------------------------------------------ read: heat-coloured text
  var readForm = $("read-form");
  if (readForm) {
    readForm.addEventListener("submit", function (ev) {
      ev.preventDefault();
      var out = $("read-out"), err = $("read-err");
      var chosen = intOrNull($("read-feature").value);
      err.textContent = ""; out.innerHTML = "<span class=\"muted\">reading\u2026</span>";
      var body = {text: $("read-text").value, top_k: intOrNull($("read-top").value || "5")};
      if (chosen !== null) body.feature = [chosen];
      post("/api/read", body).then(function (res) { renderRead(res, out); })
        .catch(function (e) { out.innerHTML = ""; err.textContent = e.message; });
    });
  }

  function renderRead(res, out) {
    var trace = res.trace && res.trace[0];
    var values = res.tokens.map(function (t, j) {
      return trace ? trace.activations[j] : (t.features.length ? t.features[0].activation : 0);
    });
    // the colour scale: the largest value after the first token (a BOS often dwarfs every other token)
    var rest = values.length > 1 ? values.slice(1) : values;
    var vmax = Math.max.apply(null, rest.concat([1e-9]));
    var spans = res.tokens.map(function (t, j) {
      var tip = t.features.map(function (f) { return "#" + f.index + " " + num(f.activation, 2) + (f.label ? " " + f.label : ""); });
      return "<span class=\"htok\" data-j=\"" + j + "\" style=\"background:" + heat(values[j] / vmax) + "\" title=\"" +
        esc(tip.join("\n") || "no active feature") + "\">" + tok(res.display_tokens[j]) + "</span>";
    }).join("");
    var what = trace ? "feature #" + trace.index + (trace.label ? " (" + esc(trace.label) + ")" : "") :
      "each token's top feature";
    out.innerHTML = "<p class=\"muted\">colour: activation of " + what + " (scale 0 to " + num(vmax, 2) +
      "); hover or click a token for its top features</p><div id=\"read-heat\" class=\"heat\">" + spans +
      "</div><div id=\"read-detail\" class=\"detail\"></div><p class=\"muted\">mean L0 " + num(res.mean_l0, 1) +
      " \u00b7 " + num(res.percent_active, 2) + "% of features active on this text</p>";
    var detail = $("read-detail"), pinned = null;
    function show(j) {
      var t = res.tokens[j];
      detail.innerHTML = "<b>" + tok(res.display_tokens[j]) + "</b> <span class=\"muted\">position " + t.position +
        " \u00b7 L0 " + t.l0 + (trace ? " \u00b7 #" + trace.index + " = " + num(trace.activations[j], 3) : "") +
        "</span><br>" + (t.features.map(featLink).join(" ") || "<span class=\"muted\">no active feature</span>");
    }
    var heatEl = $("read-heat");
    heatEl.addEventListener("mouseover", function (ev) {
      var j = ev.target.getAttribute && ev.target.getAttribute("data-j");
      if (j !== null && j !== undefined && pinned === null) show(+j);
    });
    heatEl.addEventListener("click", function (ev) {
      var j = ev.target.getAttribute && ev.target.getAttribute("data-j");
      if (j === null || j === undefined) return;
      Array.prototype.forEach.call(heatEl.querySelectorAll(".pinned"), function (x) { x.classList.remove("pinned"); });
      pinned = pinned === +j ? null : +j;
      if (pinned !== null) { ev.target.classList.add("pinned"); show(pinned); }
    });
    show(values.indexOf(Math.max.apply(null, values)));
  }

  // ------------------------------------------------------------------ steering: several seeded samples
  var steerForm = $("steer-form");
  if (steerForm) {
    var rows = $("steer-rows"), template = rows.firstElementChild.cloneNode(true);
    $("steer-add").addEventListener("click", function () {
      var row = template.cloneNode(true);
      row.querySelector(".steer-feature").value = "";
      rows.appendChild(row);
    });
    rows.addEventListener("click", function (ev) {
      if (ev.target.classList.contains("steer-remove") && rows.children.length > 1) rows.removeChild(ev.target.parentNode);
    });
    var pos = $("steer-positions"), posN = $("steer-pos-n");
    function syncPos() { posN.style.display = pos.value === "from" || pos.value === "at" ? "" : "none"; }
    pos.addEventListener("change", syncPos); syncPos();
    steerForm.addEventListener("submit", function (ev) {
      ev.preventDefault();
      var err = $("steer-err"), out = $("steer-out");
      err.textContent = ""; out.innerHTML = "<span class=\"muted\">generating\u2026</span>";
      var feats = [], strengths = [];
      Array.prototype.forEach.call(rows.children, function (row) {
        var f = intOrNull(row.querySelector(".steer-feature").value);
        if (f === null) return;
        feats.push(f);
        var s = row.querySelector(".steer-strength").value.trim();
        strengths.push(s === "" ? null : Number(s));
      });
      var method = $("steer-method").value;
      var where = pos.value === "from" || pos.value === "at" ? pos.value + ":" + posN.value.trim() : pos.value;
      var body = {prompt: $("steer-prompt").value, feature: feats, method: method, positions: where,
        max_new_tokens: intOrNull($("steer-max").value || "24"), temperature: Number($("steer-temp").value || "0"),
        top_p: Number($("steer-top-p").value || "1"), seed: intOrNull($("steer-seed").value || "0"),
        n: intOrNull($("steer-n").value || "1")};
      if (method !== "ablate") body.strength = strengths;
      post("/api/steer", body).then(function (res) { renderSteer(res, out); })
        .catch(function (e) { out.innerHTML = ""; err.textContent = e.message; });
    });
  }

  function renderSteer(res, out) {
    var what = res.interventions.map(function (iv) {
      return iv.method + " #" + iv.features.join(", #") + (iv.method === "ablate" ? "" : " \u00d7 " + iv.strength) +
        (iv.positions !== "all" ? " at " + iv.positions : "");
    }).join("; ");
    var table = res.samples.map(function (s, i) {
      return "<tr><td class=\"num muted\">" + (i + 1) + "</td><td class=\"out baseline\">" + esc(s.baseline) +
        "</td><td class=\"out steered\">" + esc(s.steered) + "</td></tr>";
    }).join("");
    out.innerHTML = "<div class=\"prompt-box\"><span class=\"muted\">prompt</span> <span id=\"steer-prompt-shown\">" +
      esc(res.prompt) + "</span></div><table id=\"steer-samples\" class=\"samples\"><thead><tr><th></th>" +
      "<th>baseline continuation</th><th>steered continuation</th></tr></thead><tbody>" + table + "</tbody></table>" +
      "<p class=\"muted\">" + esc(what) + " \u00b7 seed " + res.seed + " \u00b7 temperature " + res.temperature +
      " \u00b7 top-p " + res.top_p + " \u00b7 " + res.samples.length + " sample" + (res.samples.length > 1 ? "s" : "") +
      " (baseline and steered draw the same random numbers)</p>";
  }

  // ------------------------------------------------------------------ attribution
  var attrForm = $("attr-form");
  if (attrForm) {
    attrForm.addEventListener("submit", function (ev) {
      ev.preventDefault();
      var err = $("attr-err"), out = $("attr-out");
      err.textContent = ""; out.innerHTML = "<span class=\"muted\">attributing\u2026</span>";
      var target = $("attr-target").value;
      post("/api/attribute", {text: $("attr-text").value, target: target === "" ? null : target,
        method: $("attr-method").value, top: 15}).then(function (res) { renderAttr(res, out); })
        .catch(function (e) { out.innerHTML = ""; err.textContent = e.message; });
    });
  }

  function renderAttr(res, out) {
    var text = res.display_tokens.map(function (s, j) {
      return "<span class=\"htok" + (j === res.position ? " target-pos" : "") + "\">" + tok(s) + "</span>";
    }).join("");
    var amax = Math.max.apply(null, res.features.map(function (f) { return Math.abs(f.attribution); }).concat([1e-12]));
    var grad = res.method === "gradient";
    var rows = res.features.map(function (f) {
      var w = (100 * Math.abs(f.attribution) / amax).toFixed(1);
      return "<tr><td class=\"num\"><a href=\"/feature/" + f.index + "\">" + f.index + "</a></td>" +
        (grad ? "<td class=\"num\">" + f.position + " <code>" + tok(res.display_tokens[f.position]) + "</code></td>" : "") +
        "<td class=\"num\">" + num(f.activation, 3) + "</td><td class=\"num\">" + (f.attribution >= 0 ? "+" : "") +
        num(f.attribution, 4) + "</td><td class=\"barcell\"><span class=\"bar " + (f.attribution >= 0 ? "pos" : "neg") +
        "\" style=\"width:" + w + "%\"></span></td><td class=\"label\">" + esc(f.label || "") + "</td></tr>";
    }).join("");
    var terms = grad ? "metric " + num(res.value, 4) + " \u00b7 SAE error node " + num(res.error, 4) :
      "logit " + num(res.value, 4) + " = features " + num(res.total - res.error - res.bias - res.rest - res.constant, 4) + " + SAE error " + num(res.error, 4) +
      " + SAE bias " + num(res.bias, 4) + " + rest of network " + num(res.rest, 4) + " + constant " + num(res.constant, 4);
    out.innerHTML = "<div class=\"heat\">" + text + " <span class=\"muted\">\u2192</span> <b id=\"attr-target-shown\">" +
      tok(res.target === null ? "(metric)" : res.target) + "</b></div><p class=\"muted\">" +
      (grad ? "gradient attribution (activation \u00d7 gradient) at each position" : "direct logit attribution") +
      " \u00b7 top " + res.features.length + " by |attribution| \u00b7 " + terms + "</p><table id=\"attr-table\">" +
      "<thead><tr><th>feature</th>" + (grad ? "<th>position</th>" : "") + "<th>activation</th><th>attribution</th>" +
      "<th></th><th>label</th></tr></thead><tbody>" + rows + "</tbody></table>";
  }
})();
