/* solens atlas: search, filter and sort the neuron index (no framework, works from file://). */
(function () {
  "use strict";
  var rowsEl = document.getElementById("rows");
  if (!rowsEl || !window.ATLAS_DATA) { return; }
  var data = window.ATLAS_DATA;
  var q = document.getElementById("q");
  var layerSel = document.getElementById("layer");
  var sortSel = document.getElementById("sort");
  var dirSel = document.getElementById("dir");
  var count = document.getElementById("count");
  var more = document.getElementById("more");
  var PAGE = 300;
  var shown = PAGE;
  var COL = { polysemy: 5, "var": 6, frac: 7, cosine: 8 };

  function pct(x) { return x === null ? "–" : (100 * x).toFixed(1) + "%"; }
  function cell(text, cls) {
    var td = document.createElement("td");
    if (cls) { td.className = cls; }
    td.textContent = text;
    return td;
  }
  function readHash() {
    var p = new URLSearchParams(location.hash.slice(1));
    if (p.has("q")) { q.value = p.get("q"); }
    if (p.has("layer")) { layerSel.value = p.get("layer"); }
    if (p.has("sort")) { sortSel.value = p.get("sort"); }
    if (p.has("dir")) { dirSel.value = p.get("dir"); }
  }
  function writeHash() {
    var p = new URLSearchParams();
    if (q.value) { p.set("q", q.value); }
    if (layerSel.value) { p.set("layer", layerSel.value); }
    if (sortSel.value !== "order") { p.set("sort", sortSel.value); }
    if (dirSel.value !== "desc") { p.set("dir", dirSel.value); }
    var h = p.toString();
    history.replaceState(null, "", h ? "#" + h : location.pathname);
  }
  function matches(row, words, layer) {
    if (layer !== "" && String(row[0]) !== layer) { return false; }
    for (var i = 0; i < words.length; i++) {
      if (row[4].indexOf(words[i]) < 0) { return false; }
    }
    return true;
  }
  function render() {
    var words = q.value.toLowerCase().split(/\s+/).filter(Boolean);
    var layer = layerSel.value;
    var list = data.rows.filter(function (r) { return matches(r, words, layer); });
    var key = sortSel.value;
    var sign = dirSel.value === "asc" ? 1 : -1;
    if (key !== "order") {
      var c = COL[key];
      list.sort(function (a, b) {
        var x = a[c], y = b[c];
        if (x === null && y === null) { return 0; }
        if (x === null) { return 1; }
        if (y === null) { return -1; }
        return sign * (x - y) || (a[0] - b[0]) || (a[1] - b[1]);
      });
    }
    var frag = document.createDocumentFragment();
    list.slice(0, shown).forEach(function (r) {
      var tr = document.createElement("tr");
      tr.appendChild(cell(String(r[0])));
      var td = document.createElement("td");
      var a = document.createElement("a");
      a.href = r[2];
      a.textContent = String(r[1]);
      a.setAttribute("aria-label", "layer " + r[0] + ", neuron " + r[1]);
      td.appendChild(a);
      tr.appendChild(td);
      tr.appendChild(cell(r[3].join(", "), "terms"));
      tr.appendChild(cell(r[5].toFixed(2), "n"));
      tr.appendChild(cell(pct(r[6]), "n"));
      if (data.has_frac) { tr.appendChild(cell(pct(r[7]), "n")); }
      tr.appendChild(cell(r[8].toFixed(3), "n"));
      frag.appendChild(tr);
    });
    rowsEl.replaceChildren(frag);
    var n = list.length;
    count.textContent = n + " of " + data.rows.length + " neurons" +
      (n > shown ? " (showing the first " + shown + ")" : "");
    more.hidden = n <= shown;
  }
  function update() { shown = PAGE; writeHash(); render(); }
  var timer = null;
  q.addEventListener("input", function () {
    clearTimeout(timer);
    timer = setTimeout(update, 120);
  });
  [layerSel, sortSel, dirSel].forEach(function (el) { el.addEventListener("change", update); });
  more.addEventListener("click", function () { shown += PAGE; render(); });
  document.addEventListener("keydown", function (e) {
    if (e.key === "/" && document.activeElement !== q) { e.preventDefault(); q.focus(); }
  });
  readHash();
  render();
})();
