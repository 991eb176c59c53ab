// thingline console charts: small SVG line and bar charts, our own code.
"use strict";
(function () {
  const NS = "http://www.w3.org/2000/svg";
  function el(name, attrs, parent) {
    const e = document.createElementNS(NS, name);
    // Styles go through the CSSOM: the console's CSP refuses style attributes.
    for (const k in attrs) if (k === "style") Object.assign(e.style, attrs[k]); else e.setAttribute(k, attrs[k]);
    if (parent) parent.appendChild(e);
    return e;
  }
  function text(parent, x, y, s, cls, anchor) {
    const t = el("text", { x: x, y: y, class: cls || "axis", "text-anchor": anchor || "start" }, parent);
    t.textContent = s;
    return t;
  }
  // niceTicks returns about n round values covering [lo, hi].
  function niceTicks(lo, hi, n) {
    if (!(hi > lo)) { const d = Math.abs(lo) * 0.1 || 1; lo -= d; hi += d; }
    const raw = (hi - lo) / n, mag = Math.pow(10, Math.floor(Math.log10(raw)));
    const step = [1, 2, 2.5, 5, 10].map(m => m * mag).find(s => s >= raw) || 10 * mag;
    const out = [];
    // From the tick at or below the lowest value to the one at or above the
    // highest, so that every point sits between two labelled lines.
    const end = Math.ceil(hi / step - 1e-9) * step;
    for (let v = Math.floor(lo / step + 1e-9) * step; v <= end + step * 1e-9; v += step) out.push(+v.toFixed(10));
    // Enough decimals to tell neighbouring ticks apart (0.25 needs two).
    const dec = Math.max(0, -Math.floor(Math.log10(step) + 1e-9) + (String(step / mag).includes(".") ? 1 : 0));
    return { ticks: out, lo: Math.min(lo, out[0]), hi: Math.max(hi, out[out.length - 1]), dec: Math.min(dec, 6) };
  }
  const timeSteps = [1e3, 5e3, 15e3, 30e3, 60e3, 300e3, 900e3, 1800e3, 3600e3, 3 * 3600e3, 6 * 3600e3, 12 * 3600e3, 86400e3, 2 * 86400e3, 7 * 86400e3];
  function timeTicks(t0, t1, n) {
    const raw = (t1 - t0) / n, step = timeSteps.find(s => s >= raw) || 30 * 86400e3;
    const off = new Date().getTimezoneOffset() * 60e3, out = [];
    for (let t = Math.ceil((t0 - off) / step) * step + off; t <= t1; t += step) out.push(t);
    return { ticks: out, step: step };
  }
  function fmtTime(t, step) {
    const d = new Date(t), p = v => String(v).padStart(2, "0");
    if (step >= 86400e3) return (d.getMonth() + 1) + "/" + d.getDate();
    if (step < 60e3) return p(d.getHours()) + ":" + p(d.getMinutes()) + ":" + p(d.getSeconds());
    return p(d.getHours()) + ":" + p(d.getMinutes());
  }
  function fmtNum(v) {
    const a = Math.abs(v);
    if (a >= 1e6) return (v / 1e6).toFixed(1) + "M";
    if (a >= 1e4) return (v / 1e3).toFixed(1) + "k";
    return String(+v.toFixed(a < 10 ? 2 : 1));
  }
  // thin keeps the minimum and maximum of each pixel column, so a long
  // history draws as fast as a short one and no spike is lost.
  function thin(pts, t0, t1, width) {
    if (pts.length <= width * 2) return pts;
    const out = [], per = (t1 - t0) / width;
    let col = -1, mn = null, mx = null;
    const flush = () => { if (mn) { if (mn[0] <= mx[0]) out.push(mn, mx); else out.push(mx, mn); } };
    for (const p of pts) {
      const c = Math.floor((p[0] - t0) / per);
      if (c !== col) { flush(); col = c; mn = mx = p; continue; }
      if (p[1] < mn[1]) mn = p;
      if (p[1] > mx[1]) mx = p;
    }
    flush();
    return out;
  }

  // Line is a time series chart. opts: label, unit, onZoom(t0, t1), onReset().
  class Line {
    constructor(box, opts) {
      this.box = box; this.opts = opts || {}; this.pts = []; this.win = null;
      this.svg = el("svg", { role: "img", tabindex: "0", "aria-label": this.opts.label || "chart" }, box);
      this.svg.addEventListener("dblclick", () => this.opts.onReset && this.opts.onReset());
      this.svg.addEventListener("keydown", e => { if (e.key === "Escape" && this.opts.onReset) this.opts.onReset(); });
      this.drag = null;
      this.svg.addEventListener("pointerdown", e => this.down(e));
      this.svg.addEventListener("pointermove", e => this.move(e));
      this.svg.addEventListener("pointerup", e => this.up(e));
      this.svg.addEventListener("pointerleave", () => { this.hover = null; if (!this.drag) this.draw(); });
      // Redraw on a change of width only, in the next frame: drawing
      // inside the observer's callback would resize what it observes.
      let lastW = -1;
      new ResizeObserver(() => {
        if (box.clientWidth === lastW) return;
        lastW = box.clientWidth;
        requestAnimationFrame(() => this.draw());
      }).observe(box);
    }
    set(pts, t0, t1) { this.pts = pts; this.win = t0 != null ? [t0, t1] : null; this.draw(); }
    push(t, v, keepMs) {
      if (this.pts.length && t <= this.pts[this.pts.length - 1][0]) return;
      this.pts.push([t, v]);
      if (keepMs) { const cut = t - keepMs; while (this.pts.length > 2 && this.pts[0][0] < cut) this.pts.shift(); }
      this.draw();
    }
    frame() {
      const w = Math.max(this.box.clientWidth - 2, 200), h = 200;
      return { w: w, h: h, l: 44, r: 10, t: 8, b: 22 };
    }
    xOf(f, t) { return f.l + (t - f.t0) / (f.t1 - f.t0 || 1) * (f.w - f.l - f.r); }
    tOf(f, x) { return f.t0 + (x - f.l) / (f.w - f.l - f.r) * (f.t1 - f.t0); }
    draw() {
      const f = this.frame(), svg = this.svg;
      svg.setAttribute("viewBox", "0 0 " + f.w + " " + f.h);
      while (svg.firstChild) svg.removeChild(svg.firstChild);
      const pts = this.pts;
      f.t0 = this.win ? this.win[0] : (pts.length ? pts[0][0] : Date.now() - 60e3);
      f.t1 = this.win ? this.win[1] : (pts.length ? pts[pts.length - 1][0] : Date.now());
      if (f.t1 <= f.t0) f.t0 = f.t1 - 60e3;
      this.f = f;
      const vis = pts.filter(p => p[0] >= f.t0 && p[0] <= f.t1);
      let lo = Infinity, hi = -Infinity;
      for (const p of vis) { if (p[1] < lo) lo = p[1]; if (p[1] > hi) hi = p[1]; }
      if (!vis.length) { lo = 0; hi = 1; }
      const yt = niceTicks(lo, hi, 4);
      f.lo = yt.lo; f.hi = yt.hi;
      const yOf = v => f.t + (1 - (v - f.lo) / (f.hi - f.lo || 1)) * (f.h - f.t - f.b);
      for (const v of yt.ticks) {
        const y = yOf(v);
        el("line", { x1: f.l, x2: f.w - f.r, y1: y, y2: y, class: "grid" }, svg);
        text(svg, f.l - 6, y + 4, Math.abs(v) >= 1e4 ? fmtNum(v) : v.toFixed(yt.dec), "axis", "end");
      }
      const tt = timeTicks(f.t0, f.t1, Math.max(2, Math.floor((f.w - f.l) / 90)));
      for (const t of tt.ticks) text(svg, this.xOf(f, t), f.h - 6, fmtTime(t, tt.step), "axis", "middle");
      if (!vis.length) {
        text(svg, f.w / 2, f.h / 2, "no data in this range", "axis", "middle");
      } else {
        const th = thin(vis, f.t0, f.t1, f.w - f.l - f.r);
        let d = "";
        th.forEach((p, i) => { d += (i ? "L" : "M") + this.xOf(f, p[0]).toFixed(1) + " " + yOf(p[1]).toFixed(1); });
        const base = yOf(f.lo);
        el("path", { d: d + "L" + this.xOf(f, th[th.length - 1][0]).toFixed(1) + " " + base + "L" + this.xOf(f, th[0][0]).toFixed(1) + " " + base + "Z", class: "area" }, svg);
        el("path", { d: d, class: "line" }, svg);
        if (th.length < 60) for (const p of th) el("circle", { cx: this.xOf(f, p[0]), cy: yOf(p[1]), r: 2.2, class: "dot" }, svg);
        const last = vis[vis.length - 1];
        this.svg.setAttribute("aria-label", (this.opts.label || "") + ": " + vis.length + " values from " +
          new Date(f.t0).toLocaleString() + " to " + new Date(f.t1).toLocaleString() + ", between " + fmtNum(lo) + " and " + fmtNum(hi) +
          ", last " + fmtNum(last[1]) + ". Drag to zoom, Escape to zoom out.");
      }
      if (this.hover != null && vis.length) {
        const t = this.tOf(f, this.hover);
        let best = vis[0];
        for (const p of vis) if (Math.abs(p[0] - t) < Math.abs(best[0] - t)) best = p;
        const x = this.xOf(f, best[0]);
        el("line", { x1: x, x2: x, y1: f.t, y2: f.h - f.b, class: "cursor" }, svg);
        const lbl = fmtNum(best[1]) + " · " + new Date(best[0]).toLocaleTimeString();
        text(svg, Math.min(Math.max(x + 6, f.l), f.w - 120), f.t + 12, lbl, "barlabel");
      }
      if (this.drag) {
        const a = Math.min(this.drag.x0, this.drag.x1), b = Math.max(this.drag.x0, this.drag.x1);
        el("rect", { x: a, y: f.t, width: b - a, height: f.h - f.t - f.b, class: "sel" }, svg);
      }
    }
    px(e) { const r = this.svg.getBoundingClientRect(); return (e.clientX - r.left) * (this.f.w / r.width); }
    down(e) { if (e.button !== 0) return; this.drag = { x0: this.px(e), x1: this.px(e) }; this.svg.setPointerCapture(e.pointerId); }
    move(e) {
      if (this.drag) { this.drag.x1 = this.px(e); } else { this.hover = this.px(e); }
      this.draw();
    }
    up() {
      const d = this.drag; this.drag = null;
      if (d && Math.abs(d.x1 - d.x0) > 8 && this.opts.onZoom) {
        const a = this.tOf(this.f, Math.min(d.x0, d.x1)), b = this.tOf(this.f, Math.max(d.x0, d.x1));
        this.opts.onZoom(Math.floor(a), Math.ceil(b));
      } else this.draw();
    }
  }

  // bars draws a bar chart of items {label, value, cls}; horizontal bars
  // suit long labels (firmware versions), vertical ones a histogram.
  function bars(box, items, opts) {
    opts = opts || {};
    while (box.firstChild) box.removeChild(box.firstChild);
    if (!items.length) { const p = document.createElement("p"); p.className = "empty"; p.textContent = opts.empty || "nothing yet"; box.appendChild(p); return; }
    const max = Math.max(1, ...items.map(i => i.value));
    const w = Math.max(box.clientWidth - 2, 260);
    const desc = items.map(i => i.label + ": " + i.value).join(", ");
    if (opts.horizontal) {
      const rowH = 26, lw = Math.min(140, w * 0.35), h = items.length * rowH + 4;
      const svg = el("svg", { viewBox: "0 0 " + w + " " + h, role: "img", "aria-label": (opts.label || "") + ": " + desc, style: { height: h + "px" } }, box);
      items.forEach((it, i) => {
        const y = i * rowH + 4, bw = (w - lw - 60) * it.value / max;
        text(svg, lw - 8, y + 15, it.label, "barlabel", "end");
        el("rect", { x: lw, y: y, width: Math.max(bw, 1), height: rowH - 8, rx: 3, class: "bar " + (it.cls || "") }, svg);
        text(svg, lw + bw + 6, y + 15, String(it.value), "barlabel");
      });
      return;
    }
    const h = 180, b = 36, t = 18, gap = 10, bw = (w - gap) / items.length - gap;
    const svg = el("svg", { viewBox: "0 0 " + w + " " + h, role: "img", "aria-label": (opts.label || "") + ": " + desc, style: { height: h + "px" } }, box);
    items.forEach((it, i) => {
      const x = gap + i * (bw + gap), bh = (h - b - t) * it.value / max;
      el("rect", { x: x, y: h - b - bh, width: bw, height: Math.max(bh, it.value ? 2 : 0), rx: 3, class: "bar " + (it.cls || "") }, svg);
      text(svg, x + bw / 2, h - b - bh - 5, String(it.value), "barlabel", "middle");
      text(svg, x + bw / 2, h - b + 16, it.label, "axis", "middle");
    });
    el("line", { x1: 0, x2: w, y1: h - b, y2: h - b, class: "grid" }, svg);
  }

  window.TLChart = { Line: Line, bars: bars, fmtNum: fmtNum };
})();
