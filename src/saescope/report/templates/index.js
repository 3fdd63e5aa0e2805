// Feature index: search by label or index, sort by index, label, density, max or mean activation.
(function () {
  var data = JSON.parse(document.getElementById("features-data").textContent);
  var table = document.getElementById("features");
  var link = table.getAttribute("data-link");
  var q = document.getElementById("q"), sort = document.getElementById("sort");
  var more = document.getElementById("more"), count = document.getElementById("count");
  var shown = 200;
  function esc(s) { return String(s).replace(/[&<>"']/g, function (c) { return "&#" + c.charCodeAt(0) + ";"; }); }
  // statistics are null when the store holds no finite value
  function exp2(x) { return x === null ? "\u2013" : x.toExponential(2); }
  function fix3(x) { return x === null ? "\u2013" : x.toFixed(3); }
  function render() {
    var term = q.value.trim().toLowerCase(), key = sort.value;
    var rows = data.filter(function (r) {
      return !term || String(r[0]) === term || (r[4] && r[4].toLowerCase().indexOf(term) >= 0);
    });
    var col = {index: 0, density: 1, max: 2, mean: 3, label: 4}[key];
    rows.sort(function (a, b) {
      if (key === "index") return a[0] - b[0];
      if (key === "label") {
        if (!a[4] !== !b[4]) return a[4] ? -1 : 1;
        return (a[4] || "").localeCompare(b[4] || "") || a[0] - b[0];
      }
      return (b[col] === null ? -Infinity : b[col]) - (a[col] === null ? -Infinity : a[col]) || a[0] - b[0];
    });
    count.textContent = rows.length + " features";
    var html = [];
    rows.slice(0, shown).forEach(function (r) {
      html.push('<tr><td class="num"><a href="' + link.replace("{id}", r[0]) + '">' + r[0] + "</a></td>" +
        '<td class="label">' + esc(r[4] || "") + '</td><td class="num">' + exp2(r[1]) +
        '</td><td class="num">' + fix3(r[2]) + '</td><td class="num">' + exp2(r[3]) + "</td></tr>");
    });
    table.tBodies[0].innerHTML = html.join("");
    more.style.display = rows.length > shown ? "" : "none";
  }
  q.addEventListener("input", function () { shown = 200; render(); });
  sort.addEventListener("change", render);
  more.addEventListener("click", function () { shown += 500; render(); });
  Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th) {
    th.addEventListener("click", function () { if (th.dataset.sort) { sort.value = th.dataset.sort; render(); } });
  });
  render();
})();
