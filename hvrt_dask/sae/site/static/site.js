/* hvrt_dask feature browser.
 *
 * Safety: every value from the data files reaches the page through textContent, setAttribute
 * (fixed attribute names) or CSSOM (numbers), never innerHTML/eval. Data files are scripts
 * from this folder ("HVRT.receive(key, JSON)"), the only way a file:// page can load data; the
 * Content-Security-Policy allows no other script.
 */
(function () {
  "use strict";
  var pending = {};
  var cache = {};
  var SPECIAL = 1, WORD_START = 2, TRUNCATED = 4;

  window.HVRT = {
    receive: function (key, value) {
      var p = pending[key];
      if (p) { delete pending[key]; p(value); }
    }
  };

  function load(key) {
    if (cache[key]) { return cache[key]; }
    cache[key] = new Promise(function (resolve, reject) {
      pending[key] = resolve;
      var s = document.createElement("script");
      s.src = "data/" + key + ".js";
      s.onload = function () {
        s.remove();
        if (pending[key]) { delete pending[key]; reject(new Error("data/" + key + ".js did not register its data")); }
      };
      s.onerror = function () {
        s.remove();
        delete pending[key];
        delete cache[key];
        reject(new Error("cannot load data/" + key + ".js (is the site complete?)"));
      };
      document.head.appendChild(s);
    });
    return cache[key];
  }

  function markReady() {
    window.HVRT_READY_MS = performance.now();  // render time since navigation start (benchmarks)
    document.body.setAttribute("data-ready", "1");
  }

  function pad(n, w) { var s = String(n); while (s.length < w) { s = "0" + s; } return s; }

  function el(tag, attrs, kids) {
    var e = document.createElement(tag);
    if (attrs) { Object.keys(attrs).forEach(function (k) { e.setAttribute(k, String(attrs[k])); }); }
    (kids || []).forEach(function (c) {
      e.appendChild(typeof c === "string" ? document.createTextNode(c) : c);
    });
    return e;
  }

  function svg(tag, attrs) {
    var e = document.createElementNS("http://www.w3.org/2000/svg", tag);
    Object.keys(attrs || {}).forEach(function (k) { e.setAttribute(k, String(attrs[k])); });
    return e;
  }

  function fmt(x) {
    if (x === null || x === undefined) { return "n/a"; }
    if (x === 0) { return "0"; }
    var a = Math.abs(x);
    return (a >= 1e-3 && a < 1e5) ? String(Number(x.toPrecision(4))) : x.toExponential(2);
  }

  function showError(err) {
    var e = document.getElementById("error");
    e.textContent = String(err && err.message ? err.message : err);
    e.hidden = false;
  }

  // ---------------------------------------------------------------- hover tip
  var tip;
  function tipOn(ev) {
    var t = ev.target.closest ? ev.target.closest("[data-tip]") : null;
    if (!t) { tip.hidden = true; return; }
    tip.textContent = t.getAttribute("data-tip");
    tip.hidden = false;
    tip.style.left = Math.min(ev.clientX + 12, window.innerWidth - 320) + "px";
    tip.style.top = (ev.clientY + 14) + "px";
  }

  // ---------------------------------------------------------------- tokens
  function tokenEntry(vocab, tid) {
    var e = vocab[tid];
    return e || ["[" + tid + "]", WORD_START];
  }

  // the display entries of every token id used by ``examples`` (loaded per vocabulary file)
  function vocabFor(meta, examples) {
    var vocab = {}, files = {};
    if (!meta.vocab_size) { return Promise.resolve(vocab); }
    examples.forEach(function (ex) {
      ex[3].forEach(function (t) { if (t >= 0 && t < meta.vocab_size) { files[Math.floor(t / meta.vocab_file)] = 1; } });
    });
    return Promise.all(Object.keys(files).map(function (p) {
      return load("vocab/" + pad(p, 6)).then(function (d) {
        d.entries.forEach(function (e, i) { vocab[d.v0 + i] = e; });
      });
    })).then(function () { return vocab; });
  }

  function tokenChip(e) {
    var s = el("span", {"class": "tok" + ((e[1] & SPECIAL) ? " special" : "")}, [e[0]]);
    if (e[1] & TRUNCATED) { s.setAttribute("data-tip", e[2]); s.setAttribute("title", e[2]); }
    return s;
  }

  function exampleRow(ex, vocab, offsets, fmax, label) {
    // ex = [sample, position, value, tokens, acts]
    var line = el("div", {"class": "ex"});
    line.appendChild(el("span", {"class": "exlabel"}, [label + " · sample " + ex[0] + " · pos " + ex[1] + " · " + fmt(ex[2])]));
    var text = el("span", {"class": "extext"});
    var toks = ex[3], acts = ex[4], first = true;
    for (var j = 0; j < toks.length; j++) {
      var tid = toks[j];
      if (tid < 0) { text.appendChild(el("span", {"class": "t pad", "data-tip": "outside the sequence"}, ["\u00b7"])); continue; }
      var e = tokenEntry(vocab, tid);
      if ((e[1] & WORD_START) && !first) { text.appendChild(document.createTextNode(" ")); }
      first = false;
      var a = acts[j] < 0 ? null : acts[j];  // -1: no activation (padding / outside the sequence)
      var cls = "t" + ((e[1] & SPECIAL) ? " special" : "") + (offsets[j] === 0 ? " prime" : "") + (a === null ? " masked" : "");
      var span = el("span", {"class": cls}, [e[0]]);
      var tipText = "activation " + (a === null ? "n/a (padding)" : fmt(a)) + " · token id " + tid + ((e[1] & TRUNCATED) ? " · " + e[2] : "");
      span.setAttribute("data-tip", tipText);
      span.setAttribute("data-act", a === null ? "" : String(a));
      if (a !== null && fmax > 0) {
        var alpha = Math.max(0, Math.min(1, a / fmax));
        span.style.backgroundColor = "rgba(255, 120, 0, " + alpha.toFixed(3) + ")";
      }
      text.appendChild(span);
    }
    line.appendChild(text);
    return line;
  }

  // ---------------------------------------------------------------- index page
  function initIndex(meta) {
    var st = {filter: "all", sort: "feature", rev: false, page: 0, q: ""};
    var h = new URLSearchParams(location.hash.slice(1));
    if (["all", "dead", "rare", "dense"].indexOf(h.get("filter")) >= 0) { st.filter = h.get("filter"); }
    if (["feature", "max_activation", "density", "frequency"].indexOf(h.get("sort")) >= 0) { st.sort = h.get("sort"); }
    st.rev = h.get("rev") === "1";
    st.page = Math.max(0, parseInt(h.get("page") || "0", 10) || 0);
    st.q = h.get("q") || "";
    var $ = function (id) { return document.getElementById(id); };
    $("filter").value = st.filter; $("sort").value = st.sort; $("q").value = st.q;

    function viewName() {
      if (st.filter === "all" && st.sort === "feature") { return null; }
      var name = st.filter + "-" + st.sort;
      if (!meta.views[name]) { name = st.filter + "-feature"; }
      return name;
    }

    function idsForPage() {
      var ps = meta.page_size;
      if (st.q) {
        return searchIds(meta, st.q).then(function (ids) {
          return {total: ids.length, ids: ids.slice(st.page * ps, st.page * ps + ps)};
        });
      }
      var name = viewName();
      var n = name === null ? meta.n : meta.views[name].n;
      var idx = [];
      for (var i = st.page * ps; i < Math.min(n, st.page * ps + ps); i++) { idx.push(st.rev ? n - 1 - i : i); }
      if (name === null) { return Promise.resolve({total: n, ids: idx.map(function (i) { return meta.f0 + i; })}); }
      var of = meta.order_file, files = {};
      idx.forEach(function (i) { files[Math.floor(i / of)] = 1; });
      return Promise.all(Object.keys(files).map(function (p) {
        return load("order/" + name + "/" + pad(p, 6)).then(function (d) { files[p] = d; });
      })).then(function () {
        return {total: n, ids: idx.map(function (i) { return files[Math.floor(i / of)][i % of]; })};
      });
    }

    function render() {
      var hs = new URLSearchParams({filter: st.filter, sort: st.sort, rev: st.rev ? "1" : "0", page: String(st.page)});
      if (st.q) { hs.set("q", st.q); }
      history.replaceState(null, "", "#" + hs.toString());
      document.querySelectorAll("th[data-sort]").forEach(function (th) {
        th.className = th.getAttribute("data-sort") === st.sort ? (st.rev ? "sorted rev" : "sorted") : "";
      });
      return idsForPage().then(function (res) {
        return rowsFor(meta, res.ids).then(function (rows) {
          var tb = $("rows");
          tb.replaceChildren();
          rows.forEach(function (r) {
            var link = el("a", {href: "feature.html#" + r.f}, [String(r.f)]);
            var tops = el("td", {"class": "tops"});
            r.top.forEach(function (e) { tops.appendChild(tokenChip(e)); tops.appendChild(document.createTextNode(" ")); });
            tb.appendChild(el("tr", {"data-feature": r.f, "class": r.dead ? "dead" : ""}, [
              el("td", null, [link]), el("td", {"class": "num"}, [fmt(r.max)]), el("td", {"class": "num"}, [fmt(r.density)]),
              el("td", {"class": "num"}, [fmt(r.frequency)]), el("td", {"class": "num"}, [String(r.n_active_tokens)]), tops]));
          });
          var pages = Math.max(1, Math.ceil(res.total / meta.page_size));
          $("pageinfo").textContent = "page " + (st.page + 1) + " of " + pages;
          $("prev").disabled = st.page === 0;
          $("next").disabled = st.page + 1 >= pages;
          $("status").textContent = (st.q ? res.total + " features with top token \u201c" + st.q + "\u201d"
            : res.total.toLocaleString() + " " + (st.filter === "all" ? "" : st.filter + " ") + "features")
            + " (" + meta.counts.dead.toLocaleString() + " dead, " + meta.counts.rare.toLocaleString() + " rare, "
            + meta.counts.dense.toLocaleString() + " dense of " + meta.n.toLocaleString() + ")";
          markReady();
        });
      }).catch(showError);
    }

    $("filter").addEventListener("change", function () { st.filter = this.value; st.page = 0; render(); });
    $("sort").addEventListener("change", function () { st.sort = this.value; st.rev = false; st.page = 0; render(); });
    $("dir").addEventListener("click", function () { st.rev = !st.rev; st.page = 0; render(); });
    document.querySelectorAll("th[data-sort]").forEach(function (th) {
      th.addEventListener("click", function () {
        var s = th.getAttribute("data-sort");
        if (st.sort === s) { st.rev = !st.rev; } else { st.sort = s; st.rev = false; }
        $("sort").value = st.sort; st.page = 0; render();
      });
    });
    $("controls").addEventListener("submit", function (ev) { ev.preventDefault(); st.q = $("q").value.trim(); st.page = 0; render(); });
    $("clear").addEventListener("click", function () { st.q = ""; $("q").value = ""; st.page = 0; render(); });
    $("prev").addEventListener("click", function () { st.page = Math.max(0, st.page - 1); render(); });
    $("next").addEventListener("click", function () { st.page += 1; render(); });
    $("jump").addEventListener("change", function () {
      var f = parseInt(this.value, 10);
      if (f >= meta.f0 && f < meta.f0 + meta.n) { location.href = "feature.html#" + f; }
      else { showError("feature " + this.value + " is not in this site (" + meta.f0 + "\u2013" + (meta.f0 + meta.n - 1) + ")"); }
    });
    render();
  }

  function rowsFor(meta, ids) {
    var rpf = meta.rows_per_file, files = {};
    ids.forEach(function (f) { files[Math.floor((f - meta.f0) / rpf)] = 1; });
    return Promise.all(Object.keys(files).map(function (p) {
      return load("rows/" + pad(p, 6)).then(function (d) { files[p] = d; });
    })).then(function () {
      return ids.map(function (f) {
        var d = files[Math.floor((f - meta.f0) / rpf)], i = f - d.f0;
        return {f: f, max: d.max[i], density: d.density[i], frequency: d.frequency[i],
                n_active_tokens: d.n_active_tokens[i], dead: d.dead[i] === 1, top: d.top[i]};
      });
    });
  }

  function searchKey(q) {
    var t = q.trim();
    if (t.slice(0, 2) === "##") { t = t.slice(2); }
    t = t.split("\u2581").join("").trim().toLowerCase();
    return t;
  }

  function bucket(key, n) {
    var h = 0x811c9dc5;
    for (var i = 0; i < key.length; i++) { h ^= key.charCodeAt(i); h = Math.imul(h, 0x01000193) >>> 0; }
    return (h >>> 0) % n;
  }

  function searchIds(meta, q) {
    var key = meta.by_id ? q.trim().replace(/^\[|\]$/g, "") : searchKey(q);
    if (!key) { return Promise.resolve([]); }
    return load("search/" + pad(bucket(key, meta.search_buckets), 3)).then(function (d) {
      return Object.prototype.hasOwnProperty.call(d, key) ? d[key] : [];
    });
  }

  // ---------------------------------------------------------------- feature page
  function histogram(meta, rec) {
    var box = document.getElementById("hist");
    box.replaceChildren();
    if (!rec.hist.length) { box.appendChild(el("p", {"class": "stat"}, ["No nonzero activation (dead feature)."])); return; }
    var lo = Math.max(0, rec.hist[0][0] - 1), hi = Math.min(meta.bin_lower.length - 1, rec.hist[rec.hist.length - 1][0] + 1);
    var counts = {}, cmax = 0;
    rec.hist.forEach(function (p) { counts[p[0]] = p[1]; cmax = Math.max(cmax, p[1]); });
    var nb = hi - lo + 1, W = 640, H = 180, L = 50, B = 30, bw = (W - L - 10) / nb;
    var s = svg("svg", {id: "histsvg", width: W, height: H, viewBox: "0 0 " + W + " " + H, role: "img"});
    var t = svg("title"); t.textContent = "Activation histogram of feature " + rec.f; s.appendChild(t);
    s.appendChild(svg("line", {x1: L, y1: H - B, x2: W - 10, y2: H - B, "class": "axis"}));
    s.appendChild(svg("line", {x1: L, y1: 10, x2: L, y2: H - B, "class": "axis"}));
    var ylab = svg("text", {x: L - 4, y: 16, "text-anchor": "end", "class": "lbl"}); ylab.textContent = String(cmax); s.appendChild(ylab);
    var y0 = svg("text", {x: L - 4, y: H - B, "text-anchor": "end", "class": "lbl"}); y0.textContent = "0"; s.appendChild(y0);
    for (var b = lo; b <= hi; b++) {
      var c = counts[b] || 0, bh = cmax ? (H - B - 10) * c / cmax : 0, x = L + (b - lo) * bw;
      var r = svg("rect", {x: x + 0.5, y: H - B - bh, width: Math.max(1, bw - 1), height: bh, "class": "bar",
                           "data-bin": b, "data-count": c});
      var ub = meta.bin_upper[b];
      var label = "(" + fmt(meta.bin_lower[b]) + ", " + (ub === null ? "\u221e" : fmt(ub)) + "]: " + c;
      r.setAttribute("data-tip", label);
      var rt = svg("title"); rt.textContent = label; r.appendChild(rt);
      s.appendChild(r);
      if ((b - lo) % Math.max(1, Math.ceil(nb / 6)) === 0) {
        var xl = svg("text", {x: x, y: H - B + 14, "class": "lbl"}); xl.textContent = fmt(meta.bin_lower[b]); s.appendChild(xl);
      }
    }
    var xt = svg("text", {x: W / 2, y: H - 2, "text-anchor": "middle", "class": "lbl"}); xt.textContent = "activation (log-spaced bins)";
    s.appendChild(xt);
    box.appendChild(s);
  }

  function initFeature(meta) {
    var f = parseInt(location.hash.slice(1), 10);
    if (!(f >= meta.f0 && f < meta.f0 + meta.n)) { f = meta.f0; }
    var fps = meta.features_per_shard, shard = Math.floor((f - meta.f0) / fps);
    var key = "feat/" + pad(Math.floor(shard / 1000), 4) + "/" + pad(shard, 6);
    var rec;
    return load(key).then(function (d) {
      rec = d.features[f - d.f0];
      var all = rec.top.slice();
      (rec.range || []).forEach(function (pair) { all = all.concat(pair[1]); });
      return vocabFor(meta, all);
    }).then(function (vocab) {
      document.title = "Feature " + f;
      document.getElementById("ftitle").textContent = "Feature " + f + (rec.dead ? " (dead)" : "");
      var prev = document.getElementById("prevf"), next = document.getElementById("nextf");
      if (f > meta.f0) { prev.setAttribute("href", "feature.html#" + (f - 1)); } else { prev.hidden = true; }
      if (f + 1 < meta.f0 + meta.n) { next.setAttribute("href", "feature.html#" + (f + 1)); } else { next.hidden = true; }
      var stats = document.getElementById("fstats");
      stats.replaceChildren();
      [["max activation", fmt(rec.max)], ["density (active / valid tokens)", fmt(rec.density)],
       ["frequency (active / samples)", fmt(rec.frequency)], ["active tokens", String(rec.n_active_tokens)],
       ["active samples", String(rec.n_active_samples)], ["mean (active tokens)", fmt(rec.mean)],
       ["std (active tokens)", fmt(rec.std)]].forEach(function (p) {
        stats.appendChild(el("tr", null, [el("th", null, [p[0]]), el("td", {"class": "num"}, [p[1]])]));
      });
      histogram(meta, rec);
      var top = document.getElementById("topk");
      top.replaceChildren();
      if (!rec.top.length) { top.appendChild(el("p", {"class": "stat"}, ["No examples (the feature never fired)."])); }
      rec.top.forEach(function (ex, i) { top.appendChild(exampleRow(ex, vocab, meta.window_offset, rec.max, "#" + (i + 1))); });
      var rng = document.getElementById("range");
      rng.replaceChildren();
      if (!meta.has_range) {
        rng.appendChild(el("p", {"class": "stat", id: "range-na"}, ["Not available: this output has no examples by activation range."]));
      } else if (!rec.range.length) {
        rng.appendChild(el("p", {"class": "stat"}, ["No examples (the feature never fired)."]));
      } else {
        rng.appendChild(el("p", {"class": "stat"}, ["Up to " + meta.range_m + " samples drawn uniformly from those whose maximum falls in each bin."]));
        rec.range.slice().reverse().forEach(function (pair) {
          var b = pair[0], ub = meta.bin_upper[b];
          var grp = el("div", {"class": "rangebin", "data-bin": b});
          grp.appendChild(el("h4", null, ["(" + fmt(meta.bin_lower[b]) + ", " + (ub === null ? "\u221e" : fmt(ub)) + "]"]));
          pair[1].forEach(function (ex) { grp.appendChild(exampleRow(ex, vocab, meta.window_offset, rec.max, "bin " + b)); });
          rng.appendChild(grp);
        });
      }
      markReady();
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    tip = document.getElementById("tip");
    document.addEventListener("mouseover", tipOn);
    var page = document.body.getAttribute("data-page");
    load("meta").then(function (meta) {
      if (page === "index") { return initIndex(meta); }
      window.addEventListener("hashchange", function () { initFeature(meta).catch(showError); });
      return initFeature(meta);
    }).catch(showError);
  });
}());
