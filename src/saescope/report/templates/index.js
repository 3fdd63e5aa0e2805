// Feature index: search (the server's /api/search when the table names it, else labels and explanations on the
// page), sort, hide dense features. Rows: [index, density, max, mean, label, explanation, score, model].
(function () {
  var data = JSON.parse(document.getElementById("features-data").textContent);
  var table = document.getElementById("features");
  var link = table.getAttribute("data-link"), searchUrl = table.getAttribute("data-search");
  var denseAt = parseFloat(table.getAttribute("data-dense") || "0.01");
  var q = document.getElementById("q"), sort = document.getElementById("sort");
  var hideDense = document.getElementById("hide-dense");
  var more = document.getElementById("more"), count = document.getElementById("count");
  var shown = 200, hits = null, ranked = true, timer = null, asked = 0;
  var byIndex = {};
  data.forEach(function (r) { byIndex[r[0]] = r; });
  function esc(s) { return String(s).replace(/[&<>"']/g, function (c) { return "&#" + c.charCodeAt(0) + ";"; }); }
  // statistics are null when the store holds no finite value (or there are no statistics)
  function exp2(x) { return x === null ? "\u2013" : x.toExponential(2); }
  function fix3(x) { return x === null ? "\u2013" : x.toFixed(3); }
  function dense(r) { return r[1] !== null && r[1] > denseAt; }
  function localMatch(term) {
    return function (r) {
      return String(r[0]) === term || (r[4] && r[4].toLowerCase().indexOf(term) >= 0) ||
        (r[5] && r[5].toLowerCase().indexOf(term) >= 0);
    };
  }
  function sorted(rows) {
    var key = sort.value, col = {index: 0, density: 1, max: 2, mean: 3, label: 4, score: 6}[key];
    return rows.slice().sort(function (a, b) {
      if (key === "index") return a[0] - b[0];
      if (key === "label") {
        var la = a[5] || a[4], lb = b[5] || b[4];
        if (!la !== !lb) return la ? -1 : 1;
        return (la || "").localeCompare(lb || "") || a[0] - b[0];
      }
      return (b[col] === null ? -Infinity : b[col]) - (a[col] === null ? -Infinity : a[col]) || a[0] - b[0];
    });
  }
  function cell(r, hit) {
    var html = "";
    if (r[5]) html += '<span class="expl-text">' + esc(r[5]) + "</span><br>";
    if (r[4]) html += '<span class="label">' + esc(r[4]) + '</span> <span class="tag" title="automatic label">auto</span>';
    if (hit && hit.matched === "logit lens") html += ' <span class="tag lens">logit lens: ' + esc(hit.snippet) + "</span>";
    if (dense(r)) html += ' <span class="badge dense">dense</span>';
    return html;
  }
  function render() {
    var term = q.value.trim().toLowerCase();
    var rows, hitOf = {};
    if (term && hits) {                       // the server's ranking
      rows = [];
      hits.forEach(function (h) { if (byIndex[h.index]) { rows.push(byIndex[h.index]); hitOf[h.index] = h; } });
      if (!ranked) rows = sorted(rows);
    } else {
      rows = sorted(term ? data.filter(localMatch(term)) : data);
    }
    if (hideDense && hideDense.checked) rows = rows.filter(function (r) { return !dense(r); });
    count.textContent = rows.length + " features" + (term && hits ? " (search)" : "");
    var html = [];
    rows.slice(0, shown).forEach(function (r) {
      html.push('<tr' + (dense(r) ? ' class="dense"' : "") + '><td class="num"><a href="' + link.replace("{id}", r[0]) +
        '">' + r[0] + '</a></td><td class="label-cell">' + cell(r, hitOf[r[0]]) + '</td><td class="num">' +
        (r[6] === null ? "" : r[6].toFixed(2)) + '</td><td class="num">' + exp2(r[1]) +
        '</td><td class="num">' + fix3(r[2]) + '</td><td class="num">' + exp2(r[3]) + "</td></tr>");
    });
    table.tBodies[0].innerHTML = html.join("");
    more.style.display = rows.length > shown ? "" : "none";
  }
  function search() {
    var term = q.value.trim();
    hits = null;
    ranked = true;
    shown = 200;
    if (!term || !searchUrl || /^\d+$/.test(term)) { render(); return; }
    var mine = ++asked;
    fetch(searchUrl + "?limit=500&q=" + encodeURIComponent(term)).then(function (r) {
      if (!r.ok) throw new Error(r.statusText);
      return r.json();
    }).then(function (res) {
      if (mine !== asked) return;
      hits = res.features;
      render();
    }).catch(function () { if (mine === asked) { hits = null; render(); } });   // labels on the page instead
    render();
  }
  q.addEventListener("input", function () {   // the page's own matches at once, the server's ranking when it answers
    clearTimeout(timer); hits = null; asked++; shown = 200; render(); timer = setTimeout(search, 150);
  });
  sort.addEventListener("change", function () { ranked = false; render(); });
  if (hideDense) hideDense.addEventListener("change", render);
  more.addEventListener("click", function () { shown += 500; render(); });
  Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th) {
    th.addEventListener("click", function () { if (th.dataset.sort) { sort.value = th.dataset.sort; ranked = false; render(); } });
  });
  render();
})();
