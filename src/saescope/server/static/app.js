// saescope local app: search by inference (POST /api/read) and the steering playground (POST /api/steer).
(function () {
  function $(id) { return document.getElementById(id); }
  function esc(s) { return String(s).replace(/[&<>"']/g, function (c) { return "&#" + c.charCodeAt(0) + ";"; }); }
  function tok(s) { return esc(s.replace(/\n/g, "\u21b5").replace(/\t/g, "\u21e5")); }
  function post(url, body) {
    return fetch(url, {method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)})
      .then(function (r) {
        return r.json().then(function (j) {
          if (!r.ok) {
            var d = j.detail;
            throw new Error(typeof d === "string" ? d : (d && d.length ? d.map(function (e) { return e.msg; }).join("; ") : r.statusText));
          }
          return j;
        });
      });
  }

  var readForm = $("read-form");
  if (readForm) {
    readForm.addEventListener("submit", function (ev) {
      ev.preventDefault();
      var out = $("read-out"), err = $("read-err");
      err.textContent = ""; out.innerHTML = "<span class=\"muted\">reading\u2026</span>";
      post("/api/read", {text: $("read-text").value, top_k: parseInt($("read-top").value || "5", 10)})
        .then(function (res) {
          var html = res.tokens.map(function (t) {
            var feats = t.features.map(function (f) {
              return "<a class=\"feat\" href=\"/feature/" + f.index + "\" title=\"" + esc(f.label || "") + "\">" +
                f.index + ": " + f.activation.toFixed(3) + (f.label ? " " + esc(f.label) : "") + "</a>";
            }).join("<br>");
            return "<div class=\"rtok\"><b>" + tok(t.token) + "</b><br>" + (feats || "<span class=\"muted\">none</span>") + "</div>";
          }).join("");
          out.innerHTML = html + "<p class=\"muted\">mean L0 " + res.mean_l0.toFixed(1) + "</p>";
        })
        .catch(function (e) { out.innerHTML = ""; err.textContent = e.message; });
    });
  }

  var steerForm = $("steer-form");
  if (steerForm) {
    steerForm.addEventListener("submit", function (ev) {
      ev.preventDefault();
      var err = $("steer-err");
      err.textContent = "";
      $("steer-baseline").textContent = "\u2026"; $("steer-steered").textContent = "\u2026";
      var feats = $("steer-features").value.split(/[\s,]+/).filter(Boolean).map(function (x) { return parseInt(x, 10); });
      var strengths = $("steer-strength").value.split(/[\s,]+/).filter(Boolean).map(parseFloat);
      post("/api/steer", {
        prompt: $("steer-prompt").value, feature: feats, strength: strengths, method: $("steer-method").value,
        max_new_tokens: parseInt($("steer-max").value || "24", 10), temperature: parseFloat($("steer-temp").value || "0"),
        seed: 0
      }).then(function (res) {
        $("steer-baseline").textContent = res.prompt + res.baseline;
        $("steer-steered").textContent = res.prompt + res.steered;
      }).catch(function (e) {
        $("steer-baseline").textContent = ""; $("steer-steered").textContent = ""; err.textContent = e.message;
      });
    });
  }
})();
