// thingline console: alarms (list, acknowledge, clear), alarm rules per
// profile, and a device's alarms on its page.
"use strict";
(window.TLViews = window.TLViews || []).push(function (TL) {
  const { api, h, fill, status, when, empty, every, live, devLink } = TL;
  const $ = s => document.querySelector(s);
  const enc = encodeURIComponent;
  const sevClass = { CRITICAL: "bad", MAJOR: "bad", MINOR: "warn", WARNING: "warn" };
  const sevBadge = s => h("span", { class: "badge " + (sevClass[s] || "") }, s.toLowerCase());
  const statusText = s => s.toLowerCase().replace("_", ", ").replace("unack", "unacknowledged").replace(/\back\b/, "acknowledged");
  // detail says why, shortly: a rule's condition and the value that met it.
  const detail = d => d == null ? "" : typeof d !== "object" ? String(d) : d.condition ? d.condition + (d.value !== undefined ? " · value " + JSON.stringify(d.value) : "") :
    Object.entries(d).map(([k, v]) => k + " " + JSON.stringify(v)).join(", ");

  // rows renders alarms with the actions the caller's role has.
  function rows(list, reload, withDevice) {
    return list.map(a => h("tr", { "data-alarm": a.id },
      h("td", {}, sevBadge(a.severity)), withDevice ? h("td", { class: "nowrap" }, devLink(a.device)) : null, h("td", {}, a.type),
      h("td", { class: "alarm-status" }, statusText(a.status)), h("td", {}, a.count), h("td", {}, TL.timeEl(a.startTime)),
      h("td", { class: "hide-sm" }, TL.timeEl(a.lastTime)), h("td", { class: "hide-sm small" }, detail(a.detail)),
      h("td", { class: "nowrap" }, TL.staff && !a.ackTime ? h("button", { type: "button", class: "ghost ack", "aria-label": "Acknowledge " + a.type + " on " + a.device, onclick: async () => {
        try { await api("POST", "/v1/alarms/" + a.id + "/ack"); status("Acknowledged"); reload(); } catch (e) { status(e.message, true); }
      } }, "Acknowledge") : null, " ",
      TL.staff && !a.clearTime ? h("button", { type: "button", class: "danger clear", "aria-label": "Clear " + a.type + " on " + a.device, onclick: async () => {
        try { await api("POST", "/v1/alarms/" + a.id + "/clear"); status("Cleared"); reload(); } catch (e) { status(e.message, true); }
      } }, "Clear") : null)));
  }
  TL.alarmRows = rows;

  TL.views.alarms = function () {
    const form = $("#alarm-filters");
    const qs = new URLSearchParams(location.search);
    for (const k of ["status", "severity", "device"]) if (qs.get(k)) form.elements[k].value = qs.get(k);
    const load = async () => {
      const p = new URLSearchParams({ limit: "200", status: form.elements.status.value });
      if (form.elements.severity.value) p.set("severity", form.elements.severity.value);
      if (form.elements.device.value.trim()) p.set("device", form.elements.device.value.trim());
      history.replaceState(null, "", "?" + p);
      const r = await api("GET", "/v1/alarms?" + p);
      $("#alarm-count").textContent = "· " + r.alarms.length + (r.next ? "+" : "");
      fill($("#alarms"), r.alarms.length ? rows(r.alarms, () => poll.now(), true) : empty(9, "no alarm matches"));
    };
    const poll = every(5000, load);
    let soon = null;
    live("types=alarms", { alarms: () => { if (!soon) soon = setTimeout(() => { soon = null; poll.now(); }, 200); } });
    let typing;
    form.addEventListener("input", () => { clearTimeout(typing); typing = setTimeout(() => poll.now(), 250); });
    form.addEventListener("submit", e => e.preventDefault());
    rules();
  };

  function cond(c) { return c ? c.op + " " + JSON.stringify(c.value) + (c.duration ? " for " + c.duration : "") : "by hand"; }
  function rules() {
    if (TL.role !== "admin") for (const e of document.querySelectorAll(".admin-only")) e.remove();
    const sel = $("#rule-profile");
    const settings = async () => {
      const ps = await api("GET", "/v1/profiles/" + enc(sel.value) + "/settings");
      $("#ps-inactive").value = ps.inactivityTimeout || "";
      $("#ps-tele").value = ps.telemetryRetention || "";
      $("#ps-events").value = ps.eventRetention || "";
    };
    const sform = $("#settings-form");
    if (TL.role !== "admin") for (const i of sform.querySelectorAll("input")) i.readOnly = true;
    sform.addEventListener("submit", async e => {
      e.preventDefault();
      const body = {};
      for (const [id, k] of [["#ps-inactive", "inactivityTimeout"], ["#ps-tele", "telemetryRetention"], ["#ps-events", "eventRetention"]]) {
        if ($(id).value.trim()) body[k] = $(id).value.trim();
      }
      try { await api("PUT", "/v1/profiles/" + enc(sel.value) + "/settings", body); status("Settings saved"); settings(); } catch (err) { status(err.message, true); }
    });
    const load = async () => {
      if (!sel.value) return;
      settings().catch(e => status(e.message, true));
      const r = await api("GET", "/v1/profiles/" + enc(sel.value) + "/alarm-rules");
      fill($("#rules"), r.rules.length ? r.rules.map(x => h("tr", {}, h("td", {}, x.type), h("td", {}, sevBadge(x.severity)),
        h("td", { class: "mono" }, x.key + " " + cond(x.raise)), h("td", { class: "mono" }, x.clear ? x.key + " " + cond(x.clear) : "by hand"),
        h("td", {}, TL.role === "admin" ? h("button", { type: "button", class: "danger", "aria-label": "Delete rule " + x.type, onclick: async () => {
          try { await api("DELETE", "/v1/profiles/" + enc(sel.value) + "/alarm-rules/" + x.id); load(); } catch (e) { status(e.message, true); }
        } }, "Delete") : null))) : empty(5, "no rules for this profile"));
    };
    api("GET", "/v1/fleet").then(f => {
      const ps = Object.keys(f.profiles).sort();
      if (!ps.includes("default")) ps.unshift("default");
      fill(sel, ps.map(p => h("option", { value: p }, p)));
      load().catch(e => status(e.message, true));
    }).catch(e => status(e.message, true));
    sel.addEventListener("change", () => load().catch(e => status(e.message, true)));
    const form = $("#rule-form");
    if (!form) return;
    const val = v => { const n = Number(v); return v.trim() !== "" && !isNaN(n) ? n : v; };
    form.addEventListener("submit", async e => {
      e.preventDefault();
      const rule = { type: $("#r-type").value.trim(), key: $("#r-key").value.trim(), severity: $("#r-sev").value,
        raise: { op: $("#r-op").value, value: val($("#r-val").value) } };
      if ($("#r-dur").value.trim()) rule.raise.duration = $("#r-dur").value.trim();
      if ($("#r-cop").value) rule.clear = { op: $("#r-cop").value, value: val($("#r-cval").value) };
      try { await api("POST", "/v1/profiles/" + enc(sel.value) + "/alarm-rules", rule); status("Rule added"); form.reset(); load(); } catch (err) { status(err.message, true); }
    });
  }

  // deviceAlarms fills the device page's Alarms tab, when it has one.
  TL.deviceAlarms = function (name) {
    const body = $("#dev-alarms");
    if (!body) return;
    const load = async () => {
      const r = await api("GET", "/v1/alarms?status=ANY&limit=100&device=" + enc(name));
      fill(body, r.alarms.length ? rows(r.alarms, load, false) : empty(8, "no alarms"));
    };
    document.addEventListener("tabshown", e => { if (e.target.id === "tab-alarms") load().catch(err => status(err.message, true)); });
    live("types=alarms&device=" + enc(name), { alarms: () => { if (!$("#p-alarms").hidden) load(); } });
    if (location.hash === "#alarms") load();
  };
});
