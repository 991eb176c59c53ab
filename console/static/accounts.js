// thingline console: users (admins) and one's own tokens and password.
"use strict";
(window.TLViews = window.TLViews || []).push(function (TL) {
  const { api, h, fill, status, when, empty } = TL;
  const $ = s => document.querySelector(s);
  const enc = encodeURIComponent;

  TL.views.users = function () {
    const load = async () => {
      const r = await api("GET", "/v1/users?limit=1000");
      fill($("#users"), r.users.length ? r.users.map(u => h("tr", {},
        h("td", {}, u.username), h("td", {}, h("span", { class: "badge" }, u.role)),
        h("td", {}, u.disabled ? h("span", { class: "badge bad" }, "disabled") : h("span", { class: "badge online" }, "active")),
        h("td", {}, when(u.createdAt)), h("td", { class: "hide-sm" }, when(u.passwordChangedAt)),
        h("td", {},
          h("button", { type: "button", class: "ghost", "aria-label": (u.disabled ? "Enable " : "Disable ") + u.username, onclick: async () => {
            try { await api("PATCH", "/v1/users/" + enc(u.username), { disabled: !u.disabled }); status((u.disabled ? "Enabled " : "Disabled ") + u.username); load(); } catch (e) { status(e.message, true); }
          } }, u.disabled ? "Enable" : "Disable"), " ",
          h("button", { type: "button", class: "danger", "aria-label": "Delete " + u.username, onclick: async () => {
            if (!confirm("Delete " + u.username + "? Their devices are released.")) return;
            try { await api("DELETE", "/v1/users/" + enc(u.username)); status("Deleted " + u.username); load(); } catch (e) { status(e.message, true); }
          } }, "Delete")))) : empty(6, "no users yet"));
    };
    $("#user-form").addEventListener("submit", async e => {
      e.preventDefault();
      try {
        await api("POST", "/v1/users", { username: $("#nu-name").value.trim(), password: $("#nu-pass").value, role: $("#nu-role").value });
        status("Added " + $("#nu-name").value.trim());
        e.target.reset();
        load();
      } catch (err) { status(err.message, true); }
    });
    load().catch(e => status(e.message, true));
    api("GET", "/v1/ownership/policy").then(p => { $("#pol-reset").value = p.onReset; $("#pol-keep").value = p.keepDays; }).catch(e => status(e.message, true));
    $("#policy-form").addEventListener("submit", async e => {
      e.preventDefault();
      try { await api("PUT", "/v1/ownership/policy", { onReset: $("#pol-reset").value, keepDays: Number($("#pol-keep").value) }); status("Policy saved"); }
      catch (err) { status(err.message, true); }
    });
  };

  TL.views.account = function () {
    const load = async () => {
      const r = await api("GET", "/v1/tokens");
      const now = Date.now();
      const live = r.tokens.filter(t => !t.revokedAt && new Date(t.expiresAt) > now);
      fill($("#tokens"), live.length ? live.map(t => h("tr", {},
        h("td", {}, t.name || "–"), h("td", {}, t.kind), h("td", {}, t.scopes.join(", ")), h("td", {}, when(t.createdAt)), h("td", {}, when(t.expiresAt)),
        h("td", {}, h("button", { type: "button", class: "danger", "aria-label": "Revoke token " + (t.name || t.id), onclick: async () => {
          if (!confirm("Revoke " + (t.name || "this token") + "?" + (t.kind === "session" ? " A session revoked here is signed out." : ""))) return;
          try { await api("DELETE", "/v1/tokens/" + t.id); status("Revoked"); load(); } catch (e) { status(e.message, true); }
        } }, "Revoke")))) : empty(6, "no live tokens"));
    };
    const epochs = async () => {
      const r = await api("GET", "/v1/ownership/epochs");
      const now = Date.now();
      fill($("#epochs"), r.epochs.length ? r.epochs.map(e => h("tr", {},
        h("td", {}, e.until ? e.device : TL.devLink(e.device)), h("td", {}, when(e.since)),
        h("td", {}, e.until ? when(e.until) : h("span", { class: "badge online" }, "yours")), h("td", {}, e.ended || ""),
        h("td", {}, e.keepUntil ? when(e.keepUntil) : e.until ? "not kept" : ""),
        h("td", {}, e.until && e.keepUntil && new Date(e.keepUntil) > now && e.ended !== "deleted" ?
          h("a", { href: "/console/api/v1/ownership/epochs/" + e.id + "/telemetry?limit=10000", download: e.device + "-epoch-" + e.id + ".json" }, "Export telemetry") : null))) :
        empty(6, "you have not owned a device yet"));
    };
    epochs().catch(e => status(e.message, true));
    $("#token-form").addEventListener("submit", async e => {
      e.preventDefault();
      try {
        const t = await api("POST", "/v1/tokens", { name: $("#tk-name").value.trim(), scopes: $("#tk-scope").value.split(","), expiresIn: $("#tk-exp").value });
        fill($("#new-token"), h("div", { class: "panel" }, h("strong", {}, "Copy this token now; it is not shown again: "),
          h("pre", { class: "mono", tabindex: "0" }, t.token)));
        e.target.reset();
        load();
      } catch (err) { status(err.message, true); }
    });
    $("#pass-form").addEventListener("submit", async e => {
      e.preventDefault();
      try {
        await api("PUT", "/v1/users/me/password", { oldPassword: $("#pw-old").value, password: $("#pw-new").value });
        status("Password changed");
        e.target.reset();
      } catch (err) { status(err.message, true); }
    });
    load().catch(e => status(e.message, true));
  };
});
