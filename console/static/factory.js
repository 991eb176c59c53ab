// thingline console: the factory's views (registry, batches, station yield,
// a unit's traveller).
"use strict";
(window.TLViews = window.TLViews || []).push(function (TL) {
  const { api, h, fill, status, when, empty, every } = TL;
  const $ = s => document.querySelector(s);
  const enc = encodeURIComponent;
  const stationNames = ["", "assembly", "flashing", "injection", "test", "label"];
  const testBadge = p => p == null ? h("span", { class: "badge" }, "not tested") :
    h("span", { class: "badge " + (p ? "online" : "bad") }, p ? "passed" : "failed");
  const pct = v => (Math.round(v * 10) / 10) + " %";

  TL.views.factory = function () {
    const form = $("#unit-filters");
    let after = "", next = "";
    const stations = async () => {
      const b = form.elements.batch.value;
      const r = await api("GET", "/v1/factory/stations" + (b ? "?batch=" + enc(b) : ""));
      $("#stations-scope").textContent = (b ? "· batch " + b : "· all batches") + " · " + r.events + " events";
      TLChart.bars($("#yield-chart"), r.stations.filter(s => s.unitsIn).map(s => ({ label: s.name, value: Math.round(s.yield) })),
        { label: "Yield per station, percent", empty: "no station events pushed yet (thingline factory push)" });
      fill($("#stations"), r.stations.map(s => h("tr", {}, h("td", {}, s.station + " " + s.name), h("td", {}, s.unitsIn), h("td", {}, s.unitsOut),
        h("td", {}, s.failed), h("td", {}, s.unitsIn ? pct(s.yield) : "–"), h("td", {}, s.unitsIn ? pct(s.firstPass) : "–"),
        h("td", {}, s.perHour ? Math.round(s.perHour) : "–"))));
    };
    const units = async () => {
      const p = new URLSearchParams({ limit: "50" });
      if (form.elements.q.value.trim()) p.set("q", form.elements.q.value.trim());
      if (form.elements.batch.value) p.set("batch", form.elements.batch.value);
      if (after) p.set("after", after);
      const r = await api("GET", "/v1/factory/units?" + p);
      next = r.next || "";
      fill($("#units"), r.units.length ? r.units.map(u => h("tr", {},
        h("td", {}, h("a", { href: "/console/factory/units/" + enc(u.sn) }, u.sn)), h("td", {}, u.batch || "–"), h("td", {}, when(u.producedAt)),
        h("td", {}, testBadge(u.testPassed)), h("td", { class: "hide-sm mono" }, u.certSerial), h("td", { class: "hide-sm" }, when(u.notAfter)))) :
        empty(6, "no unit in the registry (thingline factory push)"));
      $("#u-next").disabled = !next;
      $("#u-first").disabled = !after;
    };
    every(10000, async () => {
      const r = await api("GET", "/v1/factory/batches");
      fill($("#batches"), r.batches.length ? r.batches.map(b => h("tr", {},
        h("td", {}, h("button", { type: "button", class: "linkbtn", "aria-label": "Show batch " + (b.batch || "(none)"), onclick: () => { form.elements.batch.value = b.batch; after = ""; stations(); units(); } }, b.batch || "(none)")),
        h("td", {}, b.units), h("td", {}, b.testPassed), h("td", {}, b.testFailed),
        h("td", {}, when(b.firstProduced) + " – " + when(b.lastProduced)))) : empty(5, "no batch yet"));
      const sel = form.elements.batch, keep = sel.value;
      fill(sel, h("option", { value: "" }, "All"), r.batches.map(b => h("option", { value: b.batch }, b.batch || "(none)")));
      sel.value = keep;
      await stations();
      await units();
    });
    let typing;
    form.addEventListener("input", () => { clearTimeout(typing); typing = setTimeout(() => { after = ""; stations().then(units).catch(e => status(e.message, true)); }, 250); });
    form.addEventListener("submit", e => e.preventDefault());
    $("#u-next").addEventListener("click", () => { after = next; units(); });
    $("#u-first").addEventListener("click", () => { after = ""; units(); });
  };

  TL.views.unit = async function () {
    const sn = document.body.dataset.param;
    try {
      const u = await api("GET", "/v1/factory/units/" + enc(sn));
      const b = $("#unit-test");
      b.replaceWith(testBadge(u.testPassed));
      const fact = (k, v) => h("div", {}, h("dt", {}, k), h("dd", {}, v));
      fill($("#unit-facts"), fact("Batch", u.batch || "–"), fact("Produced", when(u.producedAt)),
        fact("Certificate serial", h("span", { class: "mono" }, u.certSerial)), fact("Valid until", when(u.notAfter)),
        fact("Device", u.device ? h("a", { href: "/console/devices/" + enc(u.device) }, u.device) : "never connected"));
      fill($("#traveller"), u.traveller.length ? u.traveller.map(e => h("li", { class: e.result === "pass" ? "pass" : "fail" },
        h("strong", {}, e.station + " " + (stationNames[e.station] || "")), " ",
        h("span", { class: "badge " + (e.result === "pass" ? "online" : "bad") }, e.result), " ",
        h("span", { class: "muted" }, when(e.time) + (e.operator ? " · " + e.operator : "") + (e.board && !e.sn ? " · board " + e.board : "")),
        e.detail ? h("div", { class: "small" }, e.detail) : null)) : h("li", { class: "empty" }, "no station events pushed for this unit"));
    } catch (e) { status(e.message, true); }
  };
});
