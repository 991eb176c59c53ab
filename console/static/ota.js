// thingline console: firmware packages and staged rollouts, and a device's
// update state on its page.
"use strict";
(window.TLViews = window.TLViews || []).push(function (TL) {
  const { api, h, fill, status, when, empty, every, live, devLink } = TL;
  const $ = s => document.querySelector(s);
  const enc = encodeURIComponent;
  const size = n => n >= 1 << 20 ? (n / (1 << 20)).toFixed(1) + " MiB" : n >= 1024 ? (n / 1024).toFixed(1) + " KiB" : n + " B";
  const stateClass = { UPDATED: "online", FAILED: "bad", CANCELED: "bad", completed: "online", aborted: "bad", paused: "warn", running: "" };
  const badge = s => h("span", { class: "badge " + (stateClass[s] || "") }, String(s).toLowerCase());
  // amount keeps "10%" as text and "5" as a number, as the API reads them.
  const amount = v => { v = v.trim(); return v === "" ? undefined : v.endsWith("%") ? v : Number(v); };

  // progressBar is the share of devices updated, failed and in progress.
  function progressBar(p) {
    const seg = (n, cls) => n ? h("span", { class: "seg " + cls, style: { width: (100 * n / p.total) + "%" } }) : null;
    return h("div", { class: "progress", role: "img", "aria-label": p.updated + " of " + p.total + " updated, " + p.failed + " failed, " + p.inProgress + " in progress" },
      seg(p.updated, "ok"), seg(p.failed, "bad"), seg(p.inProgress, "run"));
  }

  TL.views.ota = function () {
    let packages = [];
    const loadPackages = async () => {
      const r = await api("GET", "/v1/ota/packages");
      packages = r.packages || [];
      fill($("#packages"), packages.length ? packages.map(p => h("tr", {}, h("td", {}, p.id), h("td", {}, p.title), h("td", {}, p.version), h("td", {}, size(p.size)),
        h("td", { class: "hide-sm mono" }, p.checksumAlgorithm + " " + String(p.checksum).slice(0, 16) + "…"), h("td", {}, when(p.createdAt)),
        h("td", {}, TL.role === "admin" ? h("button", { type: "button", class: "danger", "aria-label": "Delete package " + p.title + " " + p.version, onclick: async () => {
          if (!confirm("Delete " + p.title + " " + p.version + "?")) return;
          try { await api("DELETE", "/v1/ota/packages/" + p.id); loadPackages(); } catch (e) { status(e.message, true); }
        } }, "Delete") : null))) : empty(7, "no package uploaded yet"));
      const sel = $("#ro-pkg"), keep = sel.value;
      fill(sel, packages.map(p => h("option", { value: p.id }, p.title + " " + p.version)));
      if (keep) sel.value = keep;
    };
    // Which rollouts' details are open, so that a refresh keeps them open.
    const opened = new Set();
    const loadRollouts = async () => {
      const r = await api("GET", "/v1/ota/rollouts");
      const list = (r.rollouts || []).slice(0, 20);
      const reports = await Promise.all(list.map(x => api("GET", "/v1/ota/rollouts/" + x.id)));
      const box = $("#rollouts");
      box.dataset.loads = String(+(box.dataset.loads || 0) + 1); // for tests: one more refresh
      fill(box, reports.length ? reports.map(rep => {
        const p = rep.progress, act = (verb, label, cls) => h("button", { type: "button", class: cls || "ghost", onclick: async () => {
          try { await api("POST", "/v1/ota/rollouts/" + rep.id + "/" + verb, {}); status(label); loadRollouts(); } catch (e) { status(e.message, true); }
        } }, label);
        return h("article", { class: "rollout", "data-rollout": rep.id },
          h("header", {}, h("h3", {}, "#" + rep.id + " → " + rep.target.title + " " + rep.target.version, " ", badge(rep.status)),
            h("span", { class: "muted" }, (rep.profile ? "profile " + rep.profile + " · " : "") + p.updated + "/" + p.total + " updated" + (p.failed ? ", " + p.failed + " failed" : "") +
              " · wave " + (rep.currentWave + 1) + " of " + rep.waves.length + (rep.pauseReason ? " · " + rep.pauseReason : "")),
            h("span", { class: "actions" }, rep.status === "running" ? act("pause", "Pause") : null, rep.status === "paused" ? act("resume", "Resume", "primary") : null,
              rep.status === "running" || rep.status === "paused" ? act("abort", "Abort", "danger") : null)),
          progressBar(p),
          h("details", { open: opened.has(rep.id), ontoggle: e => { if (e.target.open) opened.add(rep.id); else opened.delete(rep.id); } }, h("summary", {}, "Waves and devices"),
            h("table", { class: "data" }, h("thead", {}, h("tr", {}, ["Wave", "Size", "Updated", "Failed", "In progress", "Queued"].map(t => h("th", { scope: "col" }, t)))),
              h("tbody", {}, p.waves.map(w => h("tr", {}, h("td", {}, w.wave + 1), h("td", {}, w.size), h("td", {}, w.updated), h("td", {}, w.failed), h("td", {}, w.inProgress), h("td", {}, w.queued))))),
            h("table", { class: "data" }, h("thead", {}, h("tr", {}, ["Device", "Wave", "State", "Since"].map(t => h("th", { scope: "col" }, t)))),
              h("tbody", {}, rep.devices.slice(0, 200).map(d => h("tr", {}, h("td", {}, devLink(d.device)), h("td", {}, d.wave + 1),
                h("td", {}, badge(d.state), d.error ? " " + d.error : ""), h("td", {}, when(d.updatedAt))))))));
      }) : h("p", { class: "empty" }, "no rollout yet"));
    };
    api("GET", "/v1/fleet").then(f => {
      const sel = $("#ro-profile");
      fill(sel, h("option", { value: "" }, "(named devices)"), Object.keys(f.profiles).sort().map(p => h("option", { value: p }, p)));
    }).catch(() => {});
    every(10000, loadPackages);
    const poll = every(3000, loadRollouts);
    let soon = null;
    live("types=ota", { ota: () => { if (!soon) soon = setTimeout(() => { soon = null; poll.now(); }, 500); } });
    $("#pkg-form").addEventListener("submit", async e => {
      e.preventDefault();
      const f = $("#pk-file").files[0];
      if (!f) return;
      const q = new URLSearchParams({ title: $("#pk-title").value.trim(), version: $("#pk-version").value.trim(), checksumAlgorithm: $("#pk-alg").value });
      try { await api("POST", "/v1/ota/packages?" + q, f); status("Uploaded"); e.target.reset(); loadPackages(); } catch (err) { status(err.message, true); }
    });
    $("#rollout-form").addEventListener("submit", async e => {
      e.preventDefault();
      const body = { package: Number($("#ro-pkg").value) };
      if ($("#ro-profile").value) body.profile = $("#ro-profile").value;
      else body.devices = $("#ro-devices").value.split(",").map(s => s.trim()).filter(s => s);
      const waves = $("#ro-waves").value.split(",").map(amount).filter(v => v !== undefined);
      if (waves.length) body.waves = waves;
      const s = amount($("#ro-success").value), fl = amount($("#ro-failure").value);
      if (s !== undefined) body.successThreshold = s;
      if (fl !== undefined) body.failureThreshold = fl;
      try { const r = await api("POST", "/v1/ota/rollouts", body); status("Rollout " + r.id + " started"); poll.now(); } catch (err) { status(err.message, true); }
    });
  };

  // deviceOTA fills the device page's firmware facts: the running version,
  // the update in progress, and for staff the assignment of a package.
  TL.deviceOTA = function (name) {
    const box = $("#dev-ota");
    if (!box) return;
    const fact = (k, ...v) => h("div", {}, h("dt", {}, k), h("dd", {}, ...v));
    let packages = null;
    const assign = TL.staff ? fact("Assign firmware", h("form", { class: "assign", onsubmit: async e => {
      e.preventDefault();
      const id = Number(e.target.elements.pkg.value);
      if (!id) return;
      try { await api("PUT", "/v1/devices/" + enc(name) + "/ota", { package: id }); status("Update assigned"); load(); } catch (err) { status(err.message, true); }
    } }, h("label", { for: "ota-pkg", class: "sr-only" }, "Package"), h("select", { id: "ota-pkg", name: "pkg" }), " ", h("button", { type: "submit", class: "ghost" }, "Assign"))) : null;
    const load = async () => {
      const r = await api("GET", "/v1/devices/" + enc(name) + "/ota");
      const s = r.state;
      let running = s && s.currentVersion ? (s.currentTitle || "") + " " + s.currentVersion : null;
      if (!running && TL.role !== "operator") {
        // Before any update the device's own report says what it runs.
        const a = await api("GET", "/v1/devices/" + enc(name) + "/attributes?scope=client&keys=fw_title,fw_version");
        const c = a.client || {};
        if (c.fw_version) running = (c.fw_title ? c.fw_title.value + " " : "") + c.fw_version.value;
      }
      const facts = [fact("Firmware running", running || "–"),
        fact("Firmware update", s ? [badge(s.state), " ", r.target ? r.target.title + " " + r.target.version : "", s.error ? " · " + s.error : "", " · " + when(s.stateAt)] : "none assigned")];
      if (assign) {
        if (!packages) {
          packages = (await api("GET", "/v1/ota/packages")).packages || [];
          fill(assign.querySelector("select"), packages.map(p => h("option", { value: p.id }, p.title + " " + p.version)));
        }
        if (packages.length) facts.push(assign);
      }
      fill(box, facts);
    };
    every(5000, load);
    live("types=ota&device=" + enc(name), { ota: () => load() });
  };
});
