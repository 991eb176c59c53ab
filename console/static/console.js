// thingline console: fills the server-rendered page shells from the REST
// API (through /console/api, with the session's token) and keeps them live.
"use strict";
(function () {
  const $ = (sel, root) => (root || document).querySelector(sel);
  // Script errors and refusals of the content security policy are counted
  // on the page (and in the browser's log), so that the browser tests
  // fail on them instead of on their consequences.
  const count = k => { document.body.dataset[k] = String(+(document.body.dataset[k] || 0) + 1); };
  window.addEventListener("error", e => { count("jsErrors"); document.body.dataset.lastError = e.message; });
  window.addEventListener("unhandledrejection", e => { if (!(e.reason && e.reason.code)) { count("jsErrors"); document.body.dataset.lastError = String(e.reason); } });
  document.addEventListener("securitypolicyviolation", e => { count("cspViolations"); console.warn("CSP refused", e.violatedDirective, e.blockedURI); });
  const $$ = (sel, root) => Array.from((root || document).querySelectorAll(sel));
  const csrf = ($('meta[name="csrf-token"]') || {}).content || "";
  const view = document.body.dataset.view, param = document.body.dataset.param, role = document.body.dataset.role;
  // The role only shapes the page (no panel the API would refuse); what
  // data arrives is the API's decision alone.
  const staff = role === "admin" || role === "operator";
  const account = document.body.dataset.account === "true";
  // Parts of a page for some callers only.
  function prune() {
    if (role !== "admin") for (const e of $$(".admin-only")) e.remove();
    if (!account) for (const e of $$(".account-only")) e.remove();
  }

  // h builds an element: h("td", {class: "x"}, "text", child...).
  function h(tag, attrs, ...kids) {
    const e = document.createElement(tag);
    for (const k in attrs || {}) {
      const v = attrs[k];
      if (v == null || v === false) continue;
      if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
      // Styles go through the CSSOM: the console's CSP refuses style attributes.
      else if (k === "style") Object.assign(e.style, v);
      else if (k === "text") e.textContent = v;
      else e.setAttribute(k, v === true ? "" : v);
    }
    for (const c of kids.flat()) if (c != null) e.append(c instanceof Node ? c : String(c));
    return e;
  }
  function fill(parent, ...kids) { parent.replaceChildren(...kids.flat().filter(k => k != null)); }

  let statusTimer;
  function status(msg, isError) {
    const s = $("#status");
    if (!s) return;
    s.textContent = msg;
    s.classList.toggle("error", !!isError);
    clearTimeout(statusTimer);
    if (msg) statusTimer = setTimeout(() => { s.textContent = ""; }, isError ? 8000 : 3000);
  }

  class APIError extends Error { constructor(code, msg) { super(msg); this.code = code; } }
  // api calls the REST API as the signed-in user.
  async function api(method, path, body) {
    const opts = { method: method, headers: {}, credentials: "same-origin" };
    if (method !== "GET") opts.headers["X-CSRF-Token"] = csrf;
    if (body instanceof Blob || body instanceof ArrayBuffer) { opts.headers["Content-Type"] = "application/octet-stream"; opts.body = body; }
    else if (body !== undefined) { opts.headers["Content-Type"] = "application/json"; opts.body = typeof body === "string" ? body : JSON.stringify(body); }
    const r = await fetch("/console/api" + path, opts);
    if (r.status === 401) {
      location.assign("/console/login?expired=1&next=" + encodeURIComponent(location.pathname + location.search));
      throw new APIError(401, "signed out");
    }
    const ct = r.headers.get("Content-Type") || "";
    const data = r.status === 204 ? null : ct.includes("json") ? await r.json() : await r.text();
    if (!r.ok) throw new APIError(r.status, (data && data.error) || ("HTTP " + r.status));
    return data;
  }
  const enc = encodeURIComponent;

  // every runs fn now and then every ms while the page is visible.
  function every(ms, fn) {
    let t = null;
    const tick = async () => {
      t = null;
      if (document.hidden) return;
      try { await fn(); } catch (e) { if (e.code !== 401) status(e.message, true); }
      t = setTimeout(tick, ms);
    };
    document.addEventListener("visibilitychange", () => { if (!document.hidden && t === null) tick(); });
    tick();
    return { now: () => { clearTimeout(t); tick(); } };
  }

  // live follows the API's event stream (server-sent events) with the
  // session's cookie, calling on[type](notice) for each event. It returns
  // an object whose open tells whether events flow now; while they do,
  // pages skip the polling that stands in for them. A server without the
  // stream (or a refusal) closes it at once and polling carries on.
  function live(params, on) {
    const st = { open: false };
    if (!window.EventSource) return st;
    const es = new EventSource("/console/api/v1/stream?" + params);
    const mark = () => { document.body.dataset.live = st.open ? "on" : "off"; if (st.onchange) st.onchange(st.open); };
    es.onopen = () => { st.open = true; mark(); };
    es.onerror = () => { st.open = false; mark(); };
    for (const t in on) es.addEventListener(t, e => { let n; try { n = JSON.parse(e.data); } catch (_) { return; } on[t](n); });
    window.addEventListener("pagehide", () => es.close());
    return st;
  }

  function ago(t) {
    if (!t) return "never";
    const s = Math.round((Date.now() - new Date(t).getTime()) / 1000);
    if (s < 2) return "just now";
    if (s < 60) return s + " s ago";
    if (s < 3600) return Math.floor(s / 60) + " min ago";
    if (s < 86400) return Math.floor(s / 3600) + " h ago";
    return Math.floor(s / 86400) + " d ago";
  }
  const when = t => t ? new Date(t).toLocaleString() : "–";
  const timeEl = t => h("time", { datetime: t ? new Date(t).toISOString() : null, title: when(t) }, ago(t));
  const stateBadge = on => h("span", { class: "badge " + (on ? "online" : "offline") }, on ? "online" : "offline");
  const devLink = name => h("a", { href: "/console/devices/" + enc(name) }, name);
  const show = v => typeof v === "string" ? v : JSON.stringify(v);
  const empty = (cols, msg) => h("tr", {}, h("td", { colspan: cols, class: "empty" }, msg));

  // ---- overview ----
  function overview() {
    if (!staff) return ownOverview();
    if (role === "operator") $("#h-events").closest("section").hidden = true;
    const rate = [];
    let last = null;
    const rateChart = new TLChart.Line($("#rate-chart"), { label: "Messages per second" });
    every(5000, async () => {
      const f = await api("GET", "/v1/fleet");
      $("#n-devices").textContent = f.devices;
      $("#n-online").textContent = f.online;
      $("#n-offline").textContent = f.devices - f.online;
      TLChart.bars($("#expiry-chart"), f.certExpiry.map((b, i) => ({ label: b.label, value: b.count, cls: "b" + i })),
        { label: "Devices by certificate expiry" });
      const fw = Object.entries(f.firmware).sort((a, b) => b[1] - a[1]).map(([k, v]) => ({ label: k || "unknown", value: v }));
      TLChart.bars($("#fw-chart"), fw, { horizontal: true, label: "Devices per firmware version", empty: "no device reported a version" });
      // Events are device data: operators do not get them.
      if (role === "operator") return;
      const ev = await api("GET", "/v1/events?limit=10");
      fill($("#events"), ev.events.length ? ev.events.map(e => h("tr", {},
        h("td", {}, timeEl(e.time)), h("td", {}, e.device ? devLink(e.device) : "–"),
        h("td", {}, h("span", { class: "badge" + (e.kind === "refused" ? " bad" : "") }, e.kind), " ", e.reason || ""))) : empty(3, "no events yet"));
    });
    const alarms = async () => {
      const [a, u] = await Promise.all([api("GET", "/v1/alarms?status=ACTIVE&limit=1000"), api("GET", "/v1/alarms?status=ACTIVE_UNACK&limit=1000")]);
      $("#n-alarms").textContent = a.alarms.length + (a.next ? "+" : "");
      $("#card-alarms").classList.toggle("bad", a.alarms.length > 0);
      $("#n-alarms-unack").textContent = u.alarms.length + (u.next ? "+" : "") + " unacknowledged";
    };
    const ap = every(10000, alarms);
    live("types=alarms", { alarms: () => ap.now() });
    every(2000, async () => {
      const m = await api("GET", "/metrics");
      let n = 0;
      for (const line of m.split("\n")) if (line.startsWith("thingline_gateway_messages_total")) n += parseFloat(line.split(" ").pop()) || 0;
      const now = Date.now();
      if (last) {
        const r = Math.max(0, (n - last.n) / ((now - last.t) / 1000));
        $("#n-rate").textContent = TLChart.fmtNum(r);
        rateChart.push(now, r, 15 * 60e3);
      }
      last = { n: n, t: now };
      rate.push(n);
    });
  }

  // ownOverview is an owner's: their devices only, from the device list.
  function ownOverview() {
    for (const id of ["#h-expiry", "#h-fw", "#h-rate", "#h-events"]) $(id).closest("section").hidden = true;
    $("#n-rate").closest(".card").hidden = true;
    $("#card-alarms").hidden = true;
    every(5000, async () => {
      const [all, on] = await Promise.all([api("GET", "/v1/devices?limit=1&count=true"), api("GET", "/v1/devices?limit=1&count=true&online=true")]);
      $("#n-devices").textContent = all.total;
      $("#n-online").textContent = on.total;
      $("#n-offline").textContent = all.total - on.total;
    });
  }

  // ---- device list ----
  function devices() {
    const form = $("#filters");
    const qs = new URLSearchParams(location.search);
    if (!staff) for (const e of $$(".staff-only")) e.remove();
    claimForm(() => restart());
    const keys = staff ? ["q", "online", "profile", "firmware", "owner", "sort", "limit"] : ["q", "online", "profile", "firmware", "sort", "limit"];
    for (const k of keys) if (qs.get(k)) form.elements[k].value = qs.get(k);
    let stack = [], cursor = qs.get("after") || "", next = "";
    const addOpts = (sel, values, cur) => {
      const keep = sel.value || cur;
      fill(sel, h("option", { value: "" }, "Any"), values.map(v => h("option", { value: v }, v || "(none)")));
      sel.value = keep || "";
    };
    api("GET", "/v1/fleet").then(f => {
      addOpts(form.elements.profile, Object.keys(f.profiles).sort(), qs.get("profile"));
      addOpts(form.elements.firmware, Object.keys(f.firmware).filter(v => v).sort(), qs.get("firmware"));
    }).catch(() => {});
    const params = () => {
      const p = new URLSearchParams();
      for (const k of keys) {
        const v = form.elements[k].value.trim();
        if (v && !(k === "sort" && v === "name")) p.set(k, v);
      }
      return p;
    };
    const load = async () => {
      const p = params();
      if (cursor) p.set("after", cursor);
      history.replaceState(null, "", "?" + p.toString());
      p.set("count", "true");
      const t0 = performance.now();
      const r = await api("GET", "/v1/devices?" + p.toString());
      next = r.next || "";
      $("#total").textContent = "· " + r.total.toLocaleString() + (r.total === 1 ? " device" : " devices");
      fill($("#rows"), r.devices.length ? r.devices.map(d => h("tr", {},
        h("td", {}, devLink(d.name)), h("td", {}, stateBadge(d.online)), h("td", {}, d.profile || "–"),
        h("td", {}, d.firmware || "–"), staff ? h("td", {}, d.owner || "–") : null, h("td", {}, timeEl(d.lastSeenAt)), h("td", { class: "hide-sm" }, d.node || "–"))) :
        empty(staff ? 7 : 6, "no device matches"));
      $("#pageinfo").textContent = "page " + (stack.length + 1) + " · " + Math.round(performance.now() - t0) + " ms";
      $("#prev").disabled = $("#first").disabled = stack.length === 0;
      $("#next").disabled = !next;
    };
    const poll = every(4000, load);
    let soon = null;
    // A device connecting or leaving shows at once, not at the next poll.
    live("types=state", { state: () => { if (!soon) soon = setTimeout(() => { soon = null; poll.now(); }, 300); } });
    const restart = () => { stack = []; cursor = ""; poll.now(); };
    let typing;
    form.addEventListener("input", e => { clearTimeout(typing); typing = setTimeout(restart, e.target.tagName === "INPUT" ? 250 : 0); });
    form.addEventListener("submit", e => { e.preventDefault(); restart(); });
    $("#next").addEventListener("click", () => { if (!next) return; stack.push(cursor); cursor = next; poll.now(); });
    $("#prev").addEventListener("click", () => { cursor = stack.pop() || ""; poll.now(); });
    $("#first").addEventListener("click", restart);
  }

  // claimForm claims a device for the signed-in account, as the phone app
  // does with the secret the device published.
  function claimForm(done) {
    const form = $("#claim-form");
    if (!form) return;
    form.addEventListener("submit", async e => {
      e.preventDefault();
      const sn = $("#cl-sn").value.trim(), out = $("#claim-result");
      try {
        const r = await api("POST", "/v1/devices/" + enc(sn) + "/claim", { secretKey: $("#cl-secret").value });
        out.className = "ok";
        out.textContent = sn + (r.outcome === "transferred" ? " is yours now (transferred from its previous owner)." : r.outcome === "same-owner" ? " was already yours." : " is yours now.");
        form.reset();
        done();
      } catch (err) {
        out.className = "error";
        out.textContent = err.message;
      }
    });
  }

  // owners fills the Owners tab (admins): every ownership epoch, the audit
  // log and a claim request in waiting.
  function owners(name) {
    const box = $("#owners");
    if (!box) return;
    const load = async () => {
      const r = await api("GET", "/v1/devices/" + enc(name) + "/owners");
      fill(box,
        h("table", { class: "data" }, h("thead", {}, h("tr", {}, ["Owner", "Since", "Until", "How", "Ended"].map(t => h("th", { scope: "col" }, t)))),
          h("tbody", {}, r.owners.length ? r.owners.map(o => h("tr", {}, h("td", {}, o.username || "#" + o.userId), h("td", {}, when(o.since)),
            h("td", {}, o.until ? when(o.until) : h("span", { class: "badge online" }, "current")), h("td", {}, o.how), h("td", {}, o.ended || "")))
            : empty(5, "never owned"))),
        r.pendingClaim ? h("p", {}, h("span", { class: "badge warn" }, "claim request waiting"), " " + r.pendingClaim.kind +
          (r.pendingClaim.reset ? " after a factory reset" : "") + ", until " + when(r.pendingClaim.expiresAt)) : null,
        h("h2", {}, "Audit"),
        h("table", { class: "data" }, h("thead", {}, h("tr", {}, ["Time", "Action", "Detail"].map(t => h("th", { scope: "col" }, t)))),
          h("tbody", {}, r.audit.length ? r.audit.map(a => h("tr", {}, h("td", {}, when(a.at)), h("td", {}, a.action), h("td", {}, a.detail || ""))) : empty(3, "nothing yet"))));
    };
    document.addEventListener("tabshown", e => { if (e.target.id === "tab-owners") load().catch(err => status(err.message, true)); });
    if (location.hash === "#owners") load();
  }

  // release lets the owner (or an admin) give the device up.
  function release(name) {
    const box = $("#release-box");
    if (!box || !(role === "admin" || role === "user")) return;
    box.hidden = false;
    if (role === "admin") box.querySelector(".muted").textContent = "Ends the current owner's ownership; the device can then be claimed again.";
    const del = $("#delete-device");
    if (del) del.addEventListener("click", async () => {
      if (!confirm("Delete " + name + " with its credentials, attributes and telemetry? The audit trail stays; the device is disconnected and provisioned afresh if it connects again.")) return;
      try { await api("DELETE", "/v1/devices/" + enc(name)); location.assign("/console/devices"); } catch (e) { status(e.message, true); }
    });
    $("#release").addEventListener("click", async () => {
      if (!confirm("Release " + name + "? " + (role === "admin" ? "Its owner loses it." : "You lose access to it and its data."))) return;
      try { await api("POST", "/v1/devices/" + enc(name) + "/release", {}); status("Released"); if (role !== "admin") location.assign("/console/devices"); }
      catch (e) { status(e.message, true); }
    });
  }

  // ---- device page ----
  function tabs(root) {
    const tabs = $$('[role="tab"]', root);
    const select = (t, focus) => {
      for (const o of tabs) {
        const on = o === t;
        o.setAttribute("aria-selected", on); o.tabIndex = on ? 0 : -1;
        $("#" + o.getAttribute("aria-controls")).hidden = !on;
      }
      if (focus) t.focus();
      history.replaceState(null, "", "#" + t.id.slice(4));
      t.dispatchEvent(new CustomEvent("tabshown", { bubbles: true }));
    };
    tabs.forEach((t, i) => {
      t.addEventListener("click", () => select(t));
      t.addEventListener("keydown", e => {
        const d = e.key === "ArrowRight" ? 1 : e.key === "ArrowLeft" ? -1 : 0;
        if (d) { e.preventDefault(); select(tabs[(i + d + tabs.length) % tabs.length], true); }
        if (e.key === "Home") { e.preventDefault(); select(tabs[0], true); }
        if (e.key === "End") { e.preventDefault(); select(tabs[tabs.length - 1], true); }
      });
    });
    const want = tabs.find(t => "#" + t.id.slice(4) === location.hash);
    if (want) select(want);
  }

  function device() {
    const name = param, base = "/v1/devices/" + enc(name);
    if (role === "operator") {
      // Operators see a device's state and certificates, never its data.
      for (const t of ["telemetry", "attributes", "rpc", "events"]) { $("#tab-" + t).remove(); $("#p-" + t).remove(); }
      if (!location.hash) history.replaceState(null, "", "#certs");
    }
    tabs(document);
    const fact = (k, v) => h("div", {}, h("dt", {}, k), h("dd", {}, v));
    every(5000, async () => {
      const d = await api("GET", base);
      const st = $("#dev-state");
      st.className = "badge " + (d.online ? "online" : "offline");
      st.textContent = d.online ? "online" : "offline";
      const facts = [fact("Profile", d.profile || "–"), fact("Last seen", timeEl(d.lastSeenAt)),
        fact("Address", d.lastSeenAddr || "–"), fact("Node", d.node || "–"), fact("Created", when(d.createdAt))];
      if (d.produced != null) facts.push(fact("Factory", d.produced ? "produced unit" : h("span", { class: "badge bad" }, "not produced")));
      for (const [k, v] of Object.entries(d.counters || {})) facts.push(fact(k, v));
      fill($("#dev-facts"), facts);
    });
    if (role !== "operator") { telemetry(base); attributes(base); rpc(base); events(name); }
    certs(base);
    if (TL.deviceAlarms) TL.deviceAlarms(name);
    if (TL.deviceOTA) TL.deviceOTA(name);
    owners(name);
    release(name);
  }

  // telemetry keeps one chart per numeric key: live (appending the latest
  // values as they arrive) or a history range, zoomable by dragging.
  function telemetry(base) {
    const LIVE = 10 * 60e3;
    const charts = {};
    let range = "live", zoom = null;
    const chartFor = key => {
      if (charts[key]) return charts[key];
      const now = h("span", { class: "now" });
      const box = h("div", { class: "chart" }, h("h3", {}, h("span", {}, key), now));
      $("#charts").append(box);
      const c = new TLChart.Line(box, { label: key, onZoom: (a, b) => { zoom = [a, b]; history_(); }, onReset: () => { zoom = null; range === "live" ? loadLive() : history_(); } });
      c.now = now; c.key = key;
      return charts[key] = c;
    };
    const num = v => typeof v === "number" ? v : (typeof v === "string" && v.trim() !== "" && !isNaN(+v) ? +v : null);
    const history_ = async () => {
      let to = Date.now(), from = range === "live" ? to - LIVE : to - +range;
      if (zoom) [from, to] = zoom;
      const res = await api("GET", base + "/telemetry?from=" + from + "&to=" + to + "&limit=10000&order=asc");
      for (const [k, pts] of Object.entries(res)) {
        const ps = pts.map(p => [p.ts, num(p.value)]).filter(p => p[1] !== null);
        if (ps.length) chartFor(k).set(ps, from, to);
      }
      for (const c of Object.values(charts)) if (!res[c.key]) c.set([], from, to);
    };
    const loadLive = async () => { zoom = null; const to = Date.now(); await history_(); for (const c of Object.values(charts)) c.win = null, c.draw(); return to; };
    $$(".range button").forEach(b => b.addEventListener("click", () => {
      $$(".range button").forEach(o => o.setAttribute("aria-pressed", o === b));
      range = b.dataset.range; zoom = null;
      $("#live-note").textContent = range === "live" ? "Live: the last minutes, as values arrive." : "History: " + b.textContent + " up to now.";
      if (range === "live") liveNote();
      (range === "live" ? loadLive() : history_()).catch(e => status(e.message, true));
    }));
    loadLive().catch(e => status(e.message, true));
    const latestRows = {};
    const showLatest = (k, ts, value) => {
      const row = h("tr", { "data-key": k }, h("td", {}, k), h("td", { class: "mono" }, show(value)), h("td", {}, timeEl(ts)));
      const old = latestRows[k];
      latestRows[k] = row;
      if (old && old.isConnected) { old.replaceWith(row); return; }
      const keys = Object.keys(latestRows).sort(), body = $("#latest");
      fill(body, keys.map(key => latestRows[key]));
    };
    const liveNote = () => {
      if (range === "live") $("#live-note").textContent = stream.open ? "Live: each value as it arrives (streaming)." : "Live: the latest values every 2 s.";
    };
    const stream = live("types=telemetry&device=" + enc(param), {
      telemetry: n => {
        for (const [k, v] of Object.entries(n.values || {})) {
          showLatest(k, n.ts, v);
          const x = num(v);
          if (x === null) continue;
          const c = chartFor(k);
          c.now.textContent = TLChart.fmtNum(x);
          if (range === "live" && !zoom) c.push(n.ts, x, LIVE);
        }
      },
    });
    stream.onchange = liveNote;
    every(2000, async () => {
      if (stream.open && Object.keys(latestRows).length) return;
      const latest = await api("GET", base + "/telemetry/latest");
      const keys = Object.keys(latest).sort();
      if (!keys.length) fill($("#latest"), empty(3, "no telemetry yet"));
      for (const k of keys) showLatest(k, latest[k].ts, latest[k].value);
      for (const k of keys) {
        const v = num(latest[k].value);
        if (v === null) continue;
        const c = chartFor(k);
        c.now.textContent = TLChart.fmtNum(v);
        if (range === "live" && !zoom) c.push(latest[k].ts, v, LIVE);
      }
    });
  }

  function attributes(base) {
    const load = async () => {
      const a = await api("GET", base + "/attributes");
      const out = [];
      for (const scope of ["client", "shared", "server"]) {
        const kv = a[scope] || {};
        const keys = Object.keys(kv).sort();
        const editable = scope !== "client";
        out.push(h("h2", {}, scope[0].toUpperCase() + scope.slice(1) + " attributes",
          h("span", { class: "muted small" }, scope === "client" ? " · reported by the device" : scope === "shared" ? " · pushed to the device" : " · kept by the server")));
        out.push(h("table", { class: "data" }, h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Key"), h("th", { scope: "col" }, "Value"), h("th", { scope: "col" }, "Updated"), editable ? h("th", { scope: "col" }, h("span", { class: "sr-only" }, "Edit")) : null)),
          h("tbody", {}, keys.length ? keys.map(k => h("tr", {}, h("td", {}, k), h("td", { class: "mono" }, JSON.stringify(kv[k].value)), h("td", {}, timeEl(kv[k].lastUpdateTs)),
            editable ? h("td", {}, h("button", { type: "button", class: "ghost", "aria-label": "Edit " + k, onclick: () => {
              $("#a-scope").value = scope; $("#a-key").value = k; $("#a-value").value = JSON.stringify(kv[k].value); $("#a-value").focus();
            } }, "Edit"), " ", h("button", { type: "button", class: "danger", "aria-label": "Delete " + k, onclick: async () => {
              if (!confirm("Delete the " + scope + " attribute " + k + "?")) return;
              try {
                const r = await api("DELETE", base + "/attributes?scope=" + scope + "&keys=" + enc(k));
                status("Deleted" + (r && r.pushed ? " and told the device" : ""));
                await load();
              } catch (err) { status(err.message, true); }
            } }, "Delete")) : null)) : empty(editable ? 4 : 3, "none"))));
      }
      fill($("#attrs"), out);
    };
    document.addEventListener("tabshown", e => { if (e.target.id === "tab-attributes") load().catch(err => status(err.message, true)); });
    if (location.hash === "#attributes") load();
    $("#attr-form").addEventListener("submit", async e => {
      e.preventDefault();
      let v;
      try { v = JSON.parse($("#a-value").value); } catch (_) { v = $("#a-value").value; }
      try {
        const r = await api("POST", base + "/attributes?scope=" + $("#a-scope").value, { [$("#a-key").value]: v });
        status("Saved" + (r.pushed ? " and pushed to the device" : ""));
        await load();
      } catch (err) { status(err.message, true); }
    });
  }

  const rpcBadge = st => h("span", { class: "badge " + (st === "SUCCESSFUL" ? "online" : st === "FAILED" || st === "EXPIRED" ? "bad" : st === "TIMEOUT" ? "warn" : "") }, st.toLowerCase());
  function rpc(base) {
    const calls = async () => {
      const r = await api("GET", base + "/rpc?limit=20");
      fill($("#rpc-calls"), r.rpc.length ? r.rpc.map(c => h("tr", { "data-id": c.id }, h("td", {}, c.id), h("td", {}, c.method), h("td", { class: "rpc-status" }, rpcBadge(c.status)),
        h("td", {}, c.attempts + " / " + (c.retries + 1)), h("td", {}, timeEl(c.createdTime)),
        h("td", { class: "mono" }, c.error ? h("span", { class: "error" }, c.error) : c.response ? JSON.stringify(c.response) : "–"),
        h("td", {}, ["QUEUED", "SENT", "DELIVERED", "TIMEOUT"].includes(c.status) ? h("button", { type: "button", class: "ghost", "aria-label": "Cancel call " + c.id, onclick: async () => {
          try { await api("DELETE", "/v1/rpc/" + c.id); status("Cancelled"); calls(); } catch (e) { status(e.message, true); }
        } }, "Cancel") : null))) : empty(7, "no persistent calls"));
    };
    let poll = null;
    document.addEventListener("tabshown", e => {
      if (e.target.id === "tab-rpc" && !poll) poll = every(3000, () => $("#p-rpc").hidden ? null : calls());
    });
    if (location.hash === "#rpc") poll = every(3000, calls);
    $("#rpc-form").addEventListener("submit", async e => {
      e.preventDefault();
      const method = $("#rpc-method").value.trim(), raw = $("#rpc-params").value.trim();
      let params;
      if (raw) { try { params = JSON.parse(raw); } catch (err) { status("Params are not JSON: " + err.message, true); $("#rpc-params").focus(); return; } }
      const persistent = $("#rpc-persistent").checked;
      const btn = $("#rpc-send");
      btn.disabled = true;
      const started = Date.now();
      const li = h("li", {}, h("strong", {}, method), " ", h("span", { class: "muted" }, "sent " + new Date().toLocaleTimeString() + " …"));
      $("#rpc-log").prepend(li);
      try {
        const r = await api("POST", base + "/rpc", { method: method, params: params, timeoutMs: 1000 * (+$("#rpc-timeout").value || 10), persistent: persistent || undefined });
        if (persistent) {
          fill(li, h("strong", {}, method), " ", h("span", { class: "muted" }, "queued as call " + r.id + "; its progress is in the table below"));
          calls();
        } else {
          fill(li, h("strong", {}, method), " ", h("span", { class: "muted" }, "answered in " + (Date.now() - started) + " ms"), h("pre", { class: "rpc-reply" }, JSON.stringify(r, null, 2)));
          if (r && r.error) li.classList.add("err");
        }
      } catch (err) {
        li.classList.add("err");
        fill(li, h("strong", {}, method), " ", h("span", { class: "error rpc-error" }, err.message));
      } finally { btn.disabled = false; }
    });
  }

  function certs(base) {
    const load = async () => {
      const c = await api("GET", base + "/credentials");
      fill($("#certs"), c.credentials.length ? c.credentials.map(k => {
        const days = Math.round((new Date(k.notAfter) - Date.now()) / 86400e3), rev = k.revocation;
        const badge = k.status === "revoked" ? h("span", { class: "badge bad" }, "revoked") : days < 0 ? h("span", { class: "badge bad" }, "expired") :
          k.status === "retiring" ? h("span", { class: "badge warn" }, "retiring " + when(k.retireAt)) :
          days < 30 ? h("span", { class: "badge warn" }, "expires in " + days + " d") : h("span", { class: "badge online" }, k.status || "valid");
        return h("article", { class: "panel cert" },
          h("header", {}, h("h2", {}, "Serial ", h("span", { class: "mono" }, k.serial), " ", badge),
            rev || role !== "admin" ? null : h("button", { type: "button", class: "danger", onclick: async () => {
              if (!confirm("Revoke certificate " + k.serial + "? The device is disconnected and refused from now on.")) return;
              try { await api("POST", base + "/credentials/revoke", { serial: k.serial, reason: "revoked from the console" }); status("Revoked"); load(); } catch (err) { status(err.message, true); }
            } }, "Revoke")),
          h("dl", { class: "facts" }, h("div", {}, h("dt", {}, "Subject"), h("dd", {}, k.subject)), h("div", {}, h("dt", {}, "Issuer"), h("dd", {}, k.issuer)),
            h("div", {}, h("dt", {}, "Valid"), h("dd", {}, when(k.notBefore) + " → " + when(k.notAfter))),
            h("div", {}, h("dt", {}, "Seen"), h("dd", {}, when(k.firstSeen) + " → " + when(k.lastSeen))),
            h("div", {}, h("dt", {}, "SHA-256"), h("dd", { class: "mono" }, k.sha256)),
            rev ? h("div", {}, h("dt", {}, "Revoked"), h("dd", {}, when(rev.revokedAt) + " · " + rev.reason)) : null),
          k.pem ? h("details", {}, h("summary", {}, "PEM"), h("pre", {}, k.pem)) : null);
      }) : h("p", { class: "empty" }, "no certificate seen yet"));
    };
    document.addEventListener("tabshown", e => { if (e.target.id === "tab-certs") load().catch(err => status(err.message, true)); });
    if (location.hash === "#certs") load();
  }

  function events(name) {
    let before = 0;
    const load = async more => {
      const r = await api("GET", "/v1/events?limit=50&device=" + enc(name) + (more && before ? "&before=" + before : ""));
      const rows = r.events.map(e => h("tr", {}, h("td", {}, when(e.time)), h("td", {}, h("span", { class: "badge" + (e.kind === "refused" ? " bad" : "") }, e.kind)),
        h("td", {}, e.reason || ""), h("td", { class: "hide-sm mono" }, e.addr || ""), h("td", { class: "hide-sm" }, e.node || "")));
      if (more) $("#dev-events").append(...rows); else fill($("#dev-events"), rows.length ? rows : empty(5, "no events"));
      before = r.next || 0;
      $("#more-events").hidden = !before;
    };
    $("#more-events").addEventListener("click", () => load(true).catch(e => status(e.message, true)));
    document.addEventListener("tabshown", e => { if (e.target.id === "tab-events") load(false).catch(err => status(err.message, true)); });
    if (location.hash === "#events") load(false);
  }

  const views = { overview: overview, devices: devices, device: device };
  window.TL = { api: api, h: h, fill: fill, status: status, every: every, live: live, timeEl: timeEl, when: when, empty: empty, devLink: devLink, views: views, role: role, staff: staff };
  document.addEventListener("DOMContentLoaded", () => {
    prune();
    for (const s of window.TLViews || []) s(window.TL);
    if (views[view]) views[view]();
  });
})();
