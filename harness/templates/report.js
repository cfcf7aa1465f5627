(function () {
  "use strict";
  // Draws the report from the JSON in #report-data. Text from the history is only ever
  // set with textContent or setAttribute, never parsed as markup.
  var NS = "http://www.w3.org/2000/svg";
  var DATA = JSON.parse(document.getElementById("report-data").textContent);
  var TYPES = ["ok", "fail", "info", "invoke"];
  var COLOURS = { ok: "#6DB6FE", fail: "#FEB5DA", info: "#FFAA26", invoke: "#eeeeee" };
  var POINT_COLOURS = { ok: "rgba(43,143,232,0.45)", fail: "#e05aa0", info: "#e08a00" };
  var LEFT = 64, RIGHT = 16;
  var MAX_BARS = 3000;
  var NODE_COLOURS = ["#8dd3c7", "#bebada", "#fb8072", "#80b1d3", "#fdb462", "#b3de69",
    "#fccde5", "#bc80bd", "#ccebc5", "#ffed6f"];
  var uid = 0;

  function el(tag, attrs, parent) {
    var node = document.createElementNS(NS, tag);
    for (var k in attrs) {
      if (Object.prototype.hasOwnProperty.call(attrs, k)) node.setAttribute(k, String(attrs[k]));
    }
    if (parent) parent.appendChild(node);
    return node;
  }
  function text(parent, x, y, s, cls, anchor) {
    var t = el("text", { x: x, y: y }, parent);
    if (cls) t.setAttribute("class", cls);
    if (anchor) t.setAttribute("text-anchor", anchor);
    t.textContent = s;
    return t;
  }
  function title(node, s) { el("title", {}, node).textContent = s; }
  function div(cls, parent, s) {
    var node = document.createElement("div");
    if (cls) node.className = cls;
    if (s !== undefined) node.textContent = s;
    if (parent) parent.appendChild(node);
    return node;
  }
  function scale(d0, d1, r0, r1) {
    var k = (r1 - r0) / ((d1 - d0) || 1);
    var f = function (v) { return r0 + (v - d0) * k; };
    f.invert = function (p) { return d0 + (p - r0) / k; };
    return f;
  }
  function step(span, n) {
    var raw = span / Math.max(1, n);
    var mag = Math.pow(10, Math.floor(Math.log10(raw || 1)));
    var best = mag;
    [1, 2, 5, 10].forEach(function (m) { if (mag * m <= raw * 1.5) best = mag * m; });
    return best;
  }
  function fmtS(ms, stepMs) {
    var digits = stepMs >= 1000 ? 0 : stepMs >= 100 ? 1 : stepMs >= 10 ? 2 : 3;
    return (ms / 1000).toFixed(digits) + " s";
  }
  function width(container) { return Math.max(480, container.clientWidth || 1000); }

  function timeAxis(svg, x, t0, t1, top, bottom) {
    var g = el("g", { class: "axis" }, svg);
    var s = step(t1 - t0, 8);
    for (var t = Math.ceil(t0 / s) * s; t <= t1; t += s) {
      var px = x(t);
      el("line", { class: "grid", x1: px, x2: px, y1: top, y2: bottom }, g);
      text(g, px, bottom + 13, fmtS(t, s), "", "middle");
    }
    el("line", { x1: x(t0), x2: x(t1), y1: bottom, y2: bottom }, g);
  }

  function faultBands(svg, x, t0, t1, top, bottom, labels) {
    var g = el("g", { class: "faults" }, svg), labelEnd = -Infinity;
    DATA.faults.forEach(function (f) {
      if (f.end < t0 || f.start > t1) return;
      var a = x(Math.max(f.start, t0)), b = x(Math.min(f.end, t1));
      var r = el("rect", { class: "fault-band", x: a, y: top, width: Math.max(1, b - a),
        height: bottom - top, "data-fault": f.fault }, g);
      title(r, f.label + " (" + (f.start / 1000).toFixed(3) + " s to " +
        (f.end / 1000).toFixed(3) + " s)");
      if (!labels || b - a <= 30 || a + 2 < labelEnd) return;
      // A label runs past its band, so one that would overlap the last one drawn is left out.
      var t = text(g, a + 2, top + 10, f.label, "fault-label");
      labelEnd = a + 2 + t.getComputedTextLength() + 6;
    });
    return g;
  }

  function nodeColour(name) {
    var h = 0;
    var s = String(name);
    for (var i = 0; i < s.length; i++) h = (h * 31 + s.charCodeAt(i)) >>> 0;
    return NODE_COLOURS[h % NODE_COLOURS.length];
  }

  function leaderTrack(svg, x, t0, t1, y, h) {
    var g = el("g", { class: "leaders" }, svg);
    DATA.leaders.forEach(function (seg) {
      if (seg.end < t0 || seg.start > t1) return;
      var a = x(Math.max(seg.start, t0)), b = x(Math.min(seg.end, t1));
      var label = seg.leader === null ? "no leader" :
        seg.leader + (seg.term === null ? "" : " · term " + seg.term);
      var r = el("rect", { class: "leader-seg" + (seg.leader === null ? " leader-none" : ""),
        x: a, y: y, width: Math.max(1, b - a), height: h }, g);
      if (seg.leader !== null) r.setAttribute("fill", nodeColour(seg.leader));
      title(r, label + " (" + (seg.start / 1000).toFixed(3) + " s to " +
        (seg.end / 1000).toFixed(3) + " s)");
      if (b - a > label.length * 6 + 4) text(g, a + 3, y + h - 3, label);
    });
    return g;
  }

  function anomalyTimes(svg, x, top, bottom) {
    DATA.timelines.forEach(function (tl) {
      var i = tl.ops.i.indexOf(tl.blocker);
      if (i < 0) return;
      var px = x(tl.ops.s[i]);
      var line = el("line", { class: "read-start", x1: px, x2: px, y1: top, y2: bottom }, svg);
      title(line, "anomaly on key " + tl.key);
    });
  }

  // ---- overview: leader, latency, throughput ----

  function leaderChart() {
    var box = document.getElementById("leader-chart");
    var w = width(box), h = 52, t1 = Math.max(1, DATA.end_ms);
    var svg = el("svg", { width: w, height: h, class: "leader-chart" }, box);
    var x = scale(0, t1, LEFT, w - RIGHT);
    faultBands(svg, x, 0, t1, 0, 30, false);
    if (DATA.leaders.length === 0) text(svg, LEFT + 4, 20, "no leader samples in this run");
    leaderTrack(svg, x, 0, t1, 6, 18);
    text(svg, 4, 19, "leader");
    timeAxis(svg, x, 0, t1, 0, 32);
  }

  function membershipChart() {
    var box = document.getElementById("membership-chart");
    if (!box || !DATA.membership) return;
    var m = DATA.membership, lane = 14, top = 4;
    var w = width(box), h = top + m.nodes.length * lane + 22, t1 = Math.max(1, DATA.end_ms);
    var svg = el("svg", { width: w, height: h, class: "membership-chart" }, box);
    var x = scale(0, t1, LEFT, w - RIGHT), bottom = top + m.nodes.length * lane;
    faultBands(svg, x, 0, t1, 0, bottom, false);
    m.nodes.forEach(function (node, i) {
      text(svg, 4, top + i * lane + 11, node, "lane-label");
    });
    var g = el("g", { class: "members" }, svg);
    m.segments.forEach(function (seg) {
      var i = m.nodes.indexOf(seg.node);
      var a = x(seg.start), b = x(Math.min(seg.end, t1));
      var r = el("rect", { class: "member-seg member-" + seg.role, x: a, y: top + i * lane + 1,
        width: Math.max(1, b - a), height: lane - 2, "data-node": seg.node,
        "data-role": seg.role }, g);
      r.setAttribute("fill", nodeColour(seg.node));
      title(r, seg.node + ": " + seg.role + " (" + (seg.start / 1000).toFixed(3) + " s to " +
        (seg.end / 1000).toFixed(3) + " s)");
    });
    timeAxis(svg, x, 0, t1, 0, bottom + 2);
  }

  function latencyChart() {
    var box = document.getElementById("latency-chart");
    var w = width(box), h = 280, top = 8, bottom = h - 22;
    var p = DATA.perf.points, t1 = Math.max(1, DATA.end_ms);
    var lo = Infinity, hi = 0;
    for (var i = 0; i < p.lat.length; i++) {
      if (p.lat[i] > 0 && p.lat[i] < lo) lo = p.lat[i];
      if (p.lat[i] > hi) hi = p.lat[i];
    }
    if (!isFinite(lo)) { lo = 0.1; hi = 10; }
    lo = Math.pow(10, Math.floor(Math.log10(Math.max(lo, 0.01))));
    hi = Math.pow(10, Math.ceil(Math.log10(Math.max(hi, lo * 10))));
    var x = scale(0, t1, LEFT, w - RIGHT);
    var ly = scale(Math.log10(lo), Math.log10(hi), bottom, top);
    var y = function (v) { return ly(Math.log10(Math.max(v, lo))); };
    var canvas = document.createElement("canvas");
    var ratio = window.devicePixelRatio || 1;
    canvas.width = w * ratio; canvas.height = h * ratio;
    canvas.style.width = w + "px"; canvas.style.height = h + "px";
    box.appendChild(canvas);
    var ctx = canvas.getContext("2d");
    ctx.scale(ratio, ratio);
    // Common outcomes first, so rare ones stay visible on top.
    [0, 1, 2].forEach(function (type) {
      ctx.fillStyle = POINT_COLOURS[TYPES[type]];
      for (var j = 0; j < p.t.length; j++) {
        if (p.type[j] === type) ctx.fillRect(x(p.t[j]) - 1, y(p.lat[j]) - 1, 2.2, 2.2);
      }
    });
    var svg = el("svg", { width: w, height: h, class: "latency-chart" }, box);
    faultBands(svg, x, 0, t1, top, bottom, true);
    var g = el("g", { class: "axis" }, svg);
    for (var d = lo; d <= hi * 1.001; d *= 10) {
      el("line", { class: "grid", x1: LEFT, x2: w - RIGHT, y1: y(d), y2: y(d) }, g);
      text(g, LEFT - 4, y(d) + 4, d >= 1000 ? d / 1000 + " s" : d + " ms", "", "end");
    }
    timeAxis(svg, x, 0, t1, top, bottom);
    var b = DATA.perf.bucket_ms;
    ["p50", "p95", "p99"].forEach(function (name) {
      var values = DATA.perf.quantiles[name], path = "", pen = "M";
      for (var k = 0; k < values.length; k++) {
        if (values[k] === null) { pen = "M"; continue; }
        path += pen + x((k + 0.5) * b).toFixed(1) + "," + y(values[k]).toFixed(1);
        pen = "L";
      }
      if (path) el("path", { class: "qline q" + name.slice(1), d: path }, svg);
    });
    anomalyTimes(svg, x, top, bottom);
    if (p.thinned) text(svg, w - RIGHT, top + 10, "ok points thinned: " + p.total + " ops", "", "end");
  }

  function rateChart() {
    var box = document.getElementById("rate-chart");
    var w = width(box), h = 170, top = 8, bottom = h - 22, t1 = Math.max(1, DATA.end_ms);
    var rate = DATA.perf.rate, b = DATA.perf.bucket_ms, hi = 1;
    ["ok", "fail", "info"].forEach(function (t) {
      rate[t].forEach(function (v) { if (v > hi) hi = v; });
    });
    var x = scale(0, t1, LEFT, w - RIGHT), y = scale(0, hi * 1.1, bottom, top);
    var svg = el("svg", { width: w, height: h, class: "rate-chart" }, box);
    faultBands(svg, x, 0, t1, top, bottom, false);
    var g = el("g", { class: "axis" }, svg);
    var s = step(hi, 4);
    for (var v = 0; v <= hi * 1.1; v += s) {
      el("line", { class: "grid", x1: LEFT, x2: w - RIGHT, y1: y(v), y2: y(v) }, g);
      text(g, LEFT - 4, y(v) + 4, String(Math.round(v)), "", "end");
    }
    timeAxis(svg, x, 0, t1, top, bottom);
    ["ok", "fail", "info"].forEach(function (t) {
      var path = "";
      rate[t].forEach(function (val, k) {
        path += (k ? "L" : "M") + x((k + 0.5) * b).toFixed(1) + "," + y(val).toFixed(1);
      });
      if (path) el("path", { class: "rate rate-" + t, d: path }, svg);
    });
    anomalyTimes(svg, x, top, bottom);
  }

  // ---- per-key timelines ----

  function procOrder(ops) {
    var seen = {}, procs = [];
    ops.p.forEach(function (p) {
      var k = typeof p + ":" + p;
      if (!seen[k]) { seen[k] = true; procs.push(p); }
    });
    procs.sort(function (a, b) {
      if (typeof a === typeof b) return a < b ? -1 : a > b ? 1 : 0;
      return typeof a === "number" ? -1 : 1;
    });
    var lane = {};
    procs.forEach(function (p, i) { lane[typeof p + ":" + p] = i; });
    return { procs: procs, lane: function (p) { return lane[typeof p + ":" + p]; } };
  }

  function opText(ops, i) {
    var f = ops.f[i], v = ops.v[i], t = TYPES[ops.type[i]];
    var head = "p" + ops.p[i] + " " + f + " " + v + " → " + (t === "invoke" ? "no completion" : t);
    var when = "invoked at " + (ops.s[i] / 1000).toFixed(6) + " s";
    if (ops.e[i] !== null) {
      when += ", completed at " + (ops.e[i] / 1000).toFixed(6) + " s (" +
        (ops.e[i] - ops.s[i]).toFixed(3) + " ms)";
    }
    return head + "\n" + when + "\nhistory line " + (ops.i[i] + 1);
  }

  function shortLabel(ops, i) {
    var f = ops.f[i];
    return (f === "read" ? "r " : f === "write" ? "w " : f + " ") + ops.v[i];
  }

  function Timeline(tl, host) {
    this.tl = tl;
    this.id = ++uid;
    this.order = procOrder(tl.ops);
    this.pos = {};
    for (var i = 0; i < tl.ops.i.length; i++) this.pos[tl.ops.i[i]] = i;
    this.inWindow = {};
    var self = this;
    tl.window.forEach(function (idx) { self.inWindow[idx] = true; });
    this.box = div("timeline", host);
    this.box.id = tl.anchor;
    this.box.setAttribute("data-key", tl.key);
    var h3 = document.createElement("h3");
    h3.textContent = "key " + tl.key + ": " + tl.anomaly.name;
    this.box.appendChild(h3);
    div("story", this.box, this.story());
    this.controls();
    this.plot = div("plot", this.box);
    var last = 0, first = Infinity;
    for (var j = 0; j < tl.ops.s.length; j++) {
      first = Math.min(first, tl.ops.s[j]);
      last = Math.max(last, tl.ops.e[j] === null ? tl.ops.s[j] : tl.ops.e[j]);
    }
    this.extent = [first, Math.max(last, first + 1)];
    this.reset();
    this.interact();
  }

  Timeline.prototype.story = function () {
    var tl = this.tl, s = tl.stale;
    var b = this.pos[tl.blocker];
    var who = b === undefined ? "" : "p" + tl.ops.p[b] + " " + tl.ops.f[b] + " " + tl.ops.v[b];
    if (s) {
      return "The read (" + who + ") began at " + (s.read_start / 1000).toFixed(6) +
        " s and returned " + s.value + ", but the write of " + s.newest_value +
        " had certainly completed " + s.by_ms.toFixed(3) + " ms earlier (at " +
        (s.newest_end / 1000).toFixed(6) + " s). " + (tl.summary || "");
    }
    return (tl.anomaly.reason || "") + (tl.summary ? " " + tl.summary : "");
  };

  Timeline.prototype.controls = function () {
    var self = this, bar = div("controls", this.box);
    function button(label, role, fn) {
      var b = document.createElement("button");
      b.type = "button";
      b.textContent = label;
      b.setAttribute("data-role", role);
      b.addEventListener("click", fn);
      bar.appendChild(b);
    }
    button("anomaly", "view-anomaly", function () { self.reset(); });
    button("failing window", "view-window", function () {
      self.show(self.tl.window_span[0], self.tl.window_span[1], 0.05);
    });
    button("all shown ops", "view-all", function () { self.show(self.extent[0], self.extent[1], 0); });
    button("zoom in", "zoom-in", function () { self.zoom(0.5, 0.5); });
    button("zoom out", "zoom-out", function () { self.zoom(2, 0.5); });
    this.shown = div("shown", bar);
  };

  Timeline.prototype.reset = function () { this.show(this.tl.view[0], this.tl.view[1], 0.25); };

  Timeline.prototype.show = function (t0, t1, pad) {
    var span = Math.max(t1 - t0, 1);
    this.t0 = t0 - span * pad;
    this.t1 = t1 + span * pad;
    this.render();
  };

  Timeline.prototype.zoom = function (factor, at) {
    var span = (this.t1 - this.t0) * factor, mid = this.t0 + (this.t1 - this.t0) * at;
    this.t0 = mid - span * at;
    this.t1 = this.t0 + span;
    this.render();
  };

  Timeline.prototype.interact = function () {
    var self = this, drag = null, pending = false;
    function later() {
      if (pending) return;
      pending = true;
      window.requestAnimationFrame(function () { pending = false; self.render(); });
    }
    this.plot.addEventListener("mousedown", function (e) {
      drag = { x: e.clientX, t0: self.t0, t1: self.t1 };
    });
    window.addEventListener("mouseup", function () { drag = null; });
    window.addEventListener("mousemove", function (e) {
      if (!drag) return;
      var dt = (e.clientX - drag.x) * (drag.t1 - drag.t0) / Math.max(1, self.w - LEFT - RIGHT);
      self.t0 = drag.t0 - dt;
      self.t1 = drag.t1 - dt;
      later();
    });
    this.plot.addEventListener("wheel", function (e) {
      e.preventDefault();
      var at = Math.min(1, Math.max(0, (e.offsetX - LEFT) / Math.max(1, self.w - LEFT - RIGHT)));
      var factor = e.deltaY > 0 ? 1.25 : 0.8;
      var span = (self.t1 - self.t0) * factor, mid = self.t0 + (self.t1 - self.t0) * at;
      self.t0 = mid - span * at;
      self.t1 = self.t0 + span;
      later();
    }, { passive: false });
  };

  Timeline.prototype.visible = function () {
    var ops = this.tl.ops, t0 = this.t0, t1 = this.t1, out = [];
    for (var i = 0; i < ops.s.length; i++) {
      var end = ops.e[i] === null ? Infinity : ops.e[i];
      if (ops.s[i] <= t1 && end >= t0) out.push(i);
    }
    if (out.length <= MAX_BARS) return { idx: out, total: out.length };
    // Too many to draw: the ops nearest the middle of the view, and every marked one.
    var mid = (t0 + t1) / 2, self = this;
    var keep = out.slice().sort(function (a, b) {
      return Math.abs(ops.s[a] - mid) - Math.abs(ops.s[b] - mid);
    }).slice(0, MAX_BARS);
    out.forEach(function (i) { if (self.marked(ops.i[i]) && keep.indexOf(i) < 0) keep.push(i); });
    return { idx: keep, total: out.length };
  };

  Timeline.prototype.marked = function (index) {
    var s = this.tl.stale;
    return index === this.tl.blocker || (s !== null && (index === s.saw || index === s.newest));
  };

  Timeline.prototype.render = function () {
    var tl = this.tl, ops = tl.ops, lanes = this.order.procs.length;
    var laneH = 16, w = width(this.plot);
    this.w = w;
    while (this.plot.firstChild) this.plot.removeChild(this.plot.firstChild);
    var svg = el("svg", { width: w, class: "timeline-svg" }, this.plot);
    var x = scale(this.t0, this.t1, LEFT, w - RIGHT);
    var flags = this.flags(x);
    var rows = layoutLabels(svg, flags, this.markLines(x), LEFT, w - RIGHT);
    var top = FIRST_ROW + rows * ROW_H, h = top + lanes * laneH + 24, bottom = h - 24;
    svg.setAttribute("height", h);
    var clipId = "clip-" + this.id;
    var clip = el("clipPath", { id: clipId }, el("defs", {}, svg));
    el("rect", { x: LEFT, y: 0, width: w - LEFT - RIGHT, height: h }, clip);
    var body = el("g", { "clip-path": "url(#" + clipId + ")" }, svg);
    timeAxis(body, x, this.t0, this.t1, 18, bottom);
    faultBands(body, x, this.t0, this.t1, 18, bottom, true);
    var ws = tl.window_span;
    var wb = el("rect", { class: "window-band", x: x(ws[0]), y: 30, height: bottom - 30,
      width: Math.max(2, x(ws[1]) - x(ws[0])) }, body);
    title(wb, "smallest failing window found: " + tl.window_ops + " ops");
    leaderTrack(body, x, this.t0, this.t1, 2, 14);
    text(svg, 4, 13, "leader", "lane-label");
    for (var l = 0; l < lanes; l++) {
      var ly = top + l * laneH;
      el("line", { class: "lane-rule", x1: LEFT, x2: w - RIGHT, y1: ly + laneH, y2: ly + laneH }, svg);
      text(svg, LEFT - 6, ly + 12, "p" + this.order.procs[l], "lane-label", "end");
    }
    var vis = this.visible();
    this.shown.textContent = vis.idx.length < vis.total ?
      "drawing " + vis.idx.length + " of " + vis.total + " ops in view: zoom in for the rest" :
      vis.total + " ops in view";
    var self = this;
    vis.idx.forEach(function (i) { self.bar(body, x, i, top, laneH); });
    this.marks(body, x, flags, top, laneH, bottom);
  };

  Timeline.prototype.bar = function (g, x, i, top, laneH) {
    var ops = this.tl.ops, type = TYPES[ops.type[i]], index = ops.i[i];
    var a = Math.max(x(ops.s[i]), LEFT - 4);
    var end = ops.e[i] === null ? this.t1 : ops.e[i];
    var b = Math.min(x(end), this.w + 4);
    var y = top + this.order.lane(ops.p[i]) * laneH + 2;
    var cls = "op " + type;
    if (this.inWindow[index]) cls += " in-window";
    if (index === this.tl.blocker) cls += " blocker";
    var s = this.tl.stale;
    if (s && index === s.saw) cls += " saw";
    if (s && index === s.newest) cls += " newest";
    var r = el("rect", { class: cls, x: a, y: y, width: Math.max(2, b - a), height: laneH - 4,
      "data-index": index }, g);
    title(r, opText(ops, i));
    var label = shortLabel(ops, i);
    if (b - a > label.length * 6 + 6) text(g, a + 3, y + laneH - 7, label, "op-label");
  };

  // The markers' labels sit in rows above the lanes, the first row under the fault labels.
  var FIRST_ROW = 44, ROW_H = 14, LABEL_GAP = 6;

  // The marked ops in view, most important first: the op that cannot be placed, then the
  // writes.
  Timeline.prototype.flags = function (x) {
    var tl = this.tl, ops = tl.ops, s = tl.stale, self = this, out = [];
    function add(index, label, cls, markerCls) {
      var i = self.pos[index];
      if (i === undefined) return;
      var end = ops.e[i] === null ? ops.s[i] : ops.e[i];
      var cx = (x(ops.s[i]) + x(end)) / 2;
      if (cx < LEFT || cx > self.w - RIGHT) return;
      out.push({ i: i, label: label, cls: cls, markerCls: markerCls, cx: cx });
    }
    add(tl.blocker, "cannot be placed: " + tl.anomaly.name, "marker-label", "anomaly-marker");
    if (s) {
      add(s.newest, "newest completed write: " + s.newest_value, "mark-label", "mark");
      if (s.saw !== null) add(s.saw, "wrote " + s.value + " (the value read)", "mark-label", "mark");
    }
    return out;
  };

  // Where the stale read's lines cross every label row: the newer write's end, the read's start.
  Timeline.prototype.markLines = function (x) {
    var s = this.tl.stale;
    return s ? [x(s.newest_end), x(s.read_start)] : [];
  };

  function labelBox(f, side) {
    return side > 0 ? [f.cx + 8, f.cx + 8 + f.width] : [f.cx - 8 - f.width, f.cx - 8];
  }

  // Gives each flag a row and a side (1: text right of its marker, -1: left) so that no two
  // labels overlap and no marker's line (which runs down from its row) crosses a label: the
  // first row and side that fit between `left` and `right` (a new row included), else a new
  // row with the text on the right, where no other label is. Returns the number of rows.
  function layoutLabels(svg, flags, lines, left, right) {
    var probe = el("g", { visibility: "hidden" }, svg);
    flags.forEach(function (f) {
      f.width = text(probe, 0, 0, f.label, f.cls).getComputedTextLength();
    });
    svg.removeChild(probe);
    var placed = [], rows = 0;
    function crosses(px, box) { return px >= box[0] - LABEL_GAP && px <= box[1] + LABEL_GAP; }
    function fits(f, row, box) {
      if (box[0] < left || box[1] > right) return false;
      if (lines.some(function (px) { return crosses(px, box); })) return false;
      return placed.every(function (p) {
        if (p.row === row) return box[1] + LABEL_GAP <= p.box[0] || p.box[1] + LABEL_GAP <= box[0];
        return p.row < row ? !crosses(p.cx, box) : !crosses(f.cx, p.box);
      });
    }
    flags.forEach(function (f) {
      var spot = null;
      for (var row = 0; row <= rows && spot === null; row++) {
        for (var side = 1; side >= -1 && spot === null; side -= 2) {
          if (fits(f, row, labelBox(f, side))) spot = [row, side];
        }
      }
      spot = spot || [rows, 1];
      f.row = spot[0];
      f.side = spot[1];
      f.box = labelBox(f, f.side);
      rows = Math.max(rows, f.row + 1);
      placed.push(f);
    });
    return Math.max(rows, 1);
  }

  Timeline.prototype.marks = function (g, x, flags, top, laneH, bottom) {
    var s = this.tl.stale, ops = this.tl.ops, self = this;
    if (s) {
      var ne = x(s.newest_end), rs = x(s.read_start);
      el("line", { class: "newest-end", x1: ne, x2: ne, y1: 30, y2: bottom }, g);
      var rl = el("line", { class: "read-start", x1: rs, x2: rs, y1: 30, y2: bottom }, g);
      title(rl, "the read began here, " + s.by_ms.toFixed(3) + " ms after the newer write completed");
    }
    flags.slice().reverse().forEach(function (f) {
      var up = FIRST_ROW + f.row * ROW_H, cx = f.cx;
      var y = top + self.order.lane(ops.p[f.i]) * laneH;
      var tri = el("path", { class: f.markerCls, "data-role": f.markerCls,
        d: "M" + (cx - 6) + "," + (up - 8) + "L" + (cx + 6) + "," + (up - 8) + "L" + cx + "," + up + "Z" }, g);
      title(tri, f.label);
      el("line", { class: f.markerCls === "anomaly-marker" ? "read-start" : "newest-end",
        x1: cx, x2: cx, y1: up, y2: y }, g);
      text(g, cx + 8 * f.side, up - 1, f.label, f.cls, f.side > 0 ? null : "end");
    });
  };

  // ---- page ----

  var timelines = [];
  function draw() {
    leaderChart();
    membershipChart();
    latencyChart();
    rateChart();
    var host = document.getElementById("timelines");
    DATA.timelines.forEach(function (tl) { timelines.push(new Timeline(tl, host)); });
    var jump = document.getElementById("jump-first");
    if (jump && timelines.length) {
      jump.addEventListener("click", function () { timelines[0].reset(); });
    }
  }

  function redrawCharts() {
    ["leader-chart", "membership-chart", "latency-chart", "rate-chart"].forEach(function (id) {
      var box = document.getElementById(id);
      while (box && box.firstChild) box.removeChild(box.firstChild);
    });
    leaderChart();
    membershipChart();
    latencyChart();
    rateChart();
    timelines.forEach(function (t) { t.render(); });
  }

  var resizeTimer = null;
  window.addEventListener("resize", function () {
    if (resizeTimer) window.clearTimeout(resizeTimer);
    resizeTimer = window.setTimeout(redrawCharts, 200);
  });
  draw();
})();
