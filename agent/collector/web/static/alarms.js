// The alarms page: every firing and recently resolved alarm across the fleet, live.
"use strict";
const hostLink = h => `<a href="/host/${encodeURIComponent(h)}">${egs.esc(h)}</a>`;

function show(list) {
  document.querySelector("#firing tbody").innerHTML = list.firing.map(a =>
    `<tr class="alarm" data-host="${egs.esc(a.host)}" data-rule="${egs.esc(a.rule)}"><td>${hostLink(a.host)}</td><td>${egs.esc(a.rule)}</td>` +
    `<td>${egs.esc(egs.labels(a.labels))}</td><td>${egs.esc(a.severity ?? "")}</td>` +
    `<td>${egs.esc(a.metric ?? "")} ${egs.num(a.value, 2)} ${egs.esc(a.operator ?? "")} ${egs.esc(a.threshold ?? "")}</td>` +
    `<td>${egs.time(a.fired)}</td></tr>`).join("") || '<tr><td class="muted" colspan="6">none</td></tr>';
  document.querySelector("#resolved tbody").innerHTML = list.resolved.map(a =>
    `<tr class="resolved"><td>${hostLink(a.host)}</td><td>${egs.esc(a.rule)}</td><td>${egs.esc(egs.labels(a.labels))}</td>` +
    `<td>${egs.time(a.fired)}</td><td>${egs.time(a.resolved)}</td></tr>`).join("") || '<tr><td class="muted" colspan="5">none</td></tr>';
  document.getElementById("summary").textContent = `${list.firing.length} firing, ${list.resolved.length} resolved`;
}

(async () => {
  show(await egs.get("/api/alarms"));
  egs.live("", { alarms: show });
})();
