// Helpers the three pages share: JSON fetches, formatting, the live feed.
"use strict";
const egs = {
  async get(path) {
    const r = await fetch(path, { credentials: "same-origin" });
    if (r.status === 401) { location.reload(); throw new Error("unauthorized"); }
    const body = await r.json();
    if (!r.ok) throw new Error(body.error || r.statusText);
    return body;
  },
  esc(s) {
    return String(s ?? "").replace(/[&<>"']/g, c => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
  },
  age(seconds) {
    if (!seconds || seconds < 0) return "-";
    if (seconds < 90) return Math.round(seconds) + " s";
    if (seconds < 5400) return Math.round(seconds / 60) + " min";
    return Math.round(seconds / 3600) + " h";
  },
  num(v, digits = 1) { return v === null || v === undefined ? "-" : Number(v).toFixed(digits); },
  time(ts) { return ts ? new Date(ts * 1000).toLocaleTimeString() : "-"; },
  labels(obj) { return Object.entries(obj || {}).map(([k, v]) => `${k}=${v}`).join(", "); },
  // Server-sent events; `handlers` maps an event name to a function of its parsed data.
  live(query, handlers) {
    const source = new EventSource("/api/live" + query);
    const status = document.getElementById("live");
    source.onopen = () => { if (status) status.textContent = "live"; };
    source.onerror = () => { if (status) status.textContent = "reconnecting..."; };
    for (const [name, fn] of Object.entries(handlers)) {
      source.addEventListener(name, e => fn(JSON.parse(e.data)));
    }
    return source;
  },
};
