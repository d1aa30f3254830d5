// The host page: live values of every GPU, 15-minute charts with min/avg/max bands from the
// collector's 10 s rollups, alarms and health with their history, NIC state, and flight
// recordings plotted sample by sample.
"use strict";
const host = decodeURIComponent(location.pathname.replace(/^\/host\//, ""));
const CHARTED = ["gpu_temperature_celsius", "gpu_utilization_percent", "gpu_memory_used_percent", "gpu_power_watts",
                 "gpu_sm_clock_mhz", "gpu_memory_busy_percent"];
const COLOURS = ["#1565c0", "#c62828", "#2e7d32", "#6a1b9a", "#ef6c00", "#00838f", "#5d4037", "#ad1457"];
const live = new Map();  // gpu -> metric -> value
window.egsCharts = {};   // metric -> the uPlot instance (tests compare its data with `egs-collector query`)
document.getElementById("name").textContent = host;
document.title = "egs-collector: " + host;

function gpuTable() {
  const gpus = [...live.keys()].filter(g => g !== "").sort((a, b) => Number(a) - Number(b));
  const metrics = [...new Set(gpus.flatMap(g => [...live.get(g).keys()]))].sort();
  const thead = document.querySelector("#gpus thead"), tbody = document.querySelector("#gpus tbody");
  const head = "<tr><th>metric</th>" + gpus.map(g => `<th>GPU ${egs.esc(g)}</th>`).join("") + "</tr>";
  if (thead.innerHTML !== head) thead.innerHTML = head;
  tbody.innerHTML = metrics.map(m => `<tr><td>${egs.esc(m)}</td>` +
    gpus.map(g => `<td class="num" data-gpu="${egs.esc(g)}" data-metric="${egs.esc(m)}">${egs.num(live.get(g).get(m), 2)}</td>`).join("") +
    "</tr>").join("");
}

function takeValues(values) {
  for (const [metric, labels, , last] of values) {
    const gpu = labels.gpu ?? "";
    if (!live.has(gpu)) live.set(gpu, new Map());
    live.get(gpu).set(metric, last);
  }
  gpuTable();
}

function view(v) {
  if (!v) return;
  document.getElementById("summary").textContent =
    `${v.state}, last seen ${egs.time(v.last_seen)}, spool backlog ${v.backlog ?? "-"}, dropped ${v.dropped ?? "-"}` +
    (v.health ? `, stream ${v.health}` : "");
}

function alarms(list) {
  document.querySelector("#firing tbody").innerHTML = list.firing.length ? list.firing.map(a =>
    `<tr class="alarm"><td>${egs.esc(a.rule)}</td><td>${egs.esc(egs.labels(a.labels))}</td><td>${egs.esc(a.severity ?? "")}</td>` +
    `<td>${egs.esc(a.metric)} ${egs.num(a.value, 2)} ${egs.esc(a.operator)} ${egs.esc(a.threshold)}</td><td>since ${egs.time(a.fired)}</td></tr>`).join("")
    : '<tr><td class="muted">none</td></tr>';
}

function events(list) {
  document.querySelector("#events tbody").innerHTML = list.length ? list.slice().reverse().map(e =>
    `<tr class="${e.data.state === "alarm" ? "alarm" : ""}"><td>${egs.time(e.ts)}</td><td>${egs.esc(e.kind)}</td>` +
    `<td>${egs.esc(e.data.rule ?? "")}</td><td>${egs.esc(egs.labels(e.labels))}</td>` +
    `<td>${egs.esc(e.data.previous ?? "")} &rarr; ${egs.esc(e.data.state ?? "")}</td>` +
    `<td>${egs.esc(e.data.value !== undefined ? egs.num(e.data.value, 2) : (e.data.cause?.detail ?? ""))}</td></tr>`).join("")
    : '<tr><td class="muted">none</td></tr>';
}

// One chart per metric: per GPU an average line and a min..max band, on the union of the
// GPUs' bucket times (null where a GPU has no bucket).
function chart(metric, series, box, title) {
  series = series.slice().sort((a, b) => Number(a.labels.gpu ?? 0) - Number(b.labels.gpu ?? 0));
  const xs = [...new Set(series.flatMap(s => s.points.map(p => p[0])))].sort((a, b) => a - b);
  const at = new Map(xs.map((x, i) => [x, i]));
  const data = [xs], opts = { title: title || metric, width: 440, height: 200, series: [{}], bands: [],
                             scales: { x: { time: true } }, legend: { show: false } };
  series.forEach((s, i) => {
    const lo = new Array(xs.length).fill(null), avg = lo.slice(), hi = lo.slice();
    for (const [ts, count, sum, min, max] of s.points) {
      const j = at.get(ts);
      lo[j] = min; hi[j] = max; avg[j] = count ? sum / count : null;
    }
    const c = COLOURS[i % COLOURS.length], name = s.labels.gpu !== undefined ? "GPU " + s.labels.gpu : egs.labels(s.labels);
    const base = data.length;
    data.push(hi, avg, lo);
    opts.series.push({ label: name + " max", stroke: c + "55", width: 1 }, { label: name + " avg", stroke: c, width: 2 },
                     { label: name + " min", stroke: c + "55", width: 1 });
    opts.bands.push({ series: [base, base + 2], fill: c + "22" });
  });
  const div = document.createElement("div");
  div.className = "chart";
  div.dataset.metric = metric;
  div.innerHTML = '<div class="muted">' + series.map((s, i) => `<span style="color:${COLOURS[i % COLOURS.length]}">&#9632;</span> ` +
    egs.esc(s.labels.gpu !== undefined ? "GPU " + s.labels.gpu : egs.labels(s.labels))).join(" &nbsp; ") + "</div>";
  box.appendChild(div);
  return new uPlot(opts, data, div);
}

async function charts() {
  const q = CHARTED.map(m => "metric=" + encodeURIComponent(m)).join("&");
  const h = await egs.get(`/api/history?host=${encodeURIComponent(host)}&seconds=900&resolution=10s&${q}`);
  const box = document.getElementById("charts");
  for (const c of Object.values(window.egsCharts)) c.destroy();
  box.replaceChildren();
  window.egsCharts = {};
  window.egsHistory = h;
  for (const metric of CHARTED) {
    if ((h.metrics[metric] || []).length) window.egsCharts[metric] = chart(metric, h.metrics[metric], box);
  }
}

async function recording(id) {
  const r = await egs.get(`/api/recording?host=${encodeURIComponent(host)}&id=${encodeURIComponent(id)}`);
  const box = document.getElementById("recording");
  box.replaceChildren();
  const metrics = [...new Set((r.data || []).flatMap(g => Object.keys(g.values)))].sort();
  for (const metric of metrics) {
    const gpus = (r.data || []).filter(g => g.values[metric]);
    const xs = [...new Set(gpus.flatMap(g => g.timestamps))].sort((a, b) => a - b), at = new Map(xs.map((x, i) => [x, i]));
    const data = [xs], opts = { title: `${metric} (recording ${r.id})`, width: 440, height: 180, series: [{}],
                               scales: { x: { time: true } } };
    gpus.forEach((g, i) => {
      const ys = new Array(xs.length).fill(null);
      g.timestamps.forEach((t, k) => { ys[at.get(t)] = g.values[metric][k]; });
      data.push(ys);
      opts.series.push({ label: "GPU " + g.gpu, stroke: COLOURS[i % COLOURS.length], spanGaps: true });
    });
    const div = document.createElement("div");
    div.className = "chart";
    box.appendChild(div);
    new uPlot(opts, data, div);
  }
  if (r.truncated) box.insertAdjacentHTML("afterbegin", `<p class="muted">${egs.esc(r.truncated)}</p>`);
}

function recordings(list) {
  const tbody = document.querySelector("#recordings tbody");
  tbody.innerHTML = list.length ? list.map(r =>
    `<tr><td><a href="#" data-id="${egs.esc(r.id)}">${egs.esc(r.id)}</a></td><td>${egs.time(r.event_ts)}</td>` +
    `<td>${egs.esc(JSON.stringify(r.reason))}</td><td>GPU ${egs.esc((r.gpus || []).join(", "))}</td></tr>`).join("")
    : '<tr><td class="muted">none</td></tr>';
  for (const a of tbody.querySelectorAll("a[data-id]")) a.onclick = e => { e.preventDefault(); recording(a.dataset.id); };
}

(async () => {
  try {
    const h = await egs.get("/api/host/" + encodeURIComponent(host));
    view(h.view);
    takeValues(h.values);
    alarms(h.alarms);
    events(h.events);
    recordings(h.recordings);
    document.getElementById("nic").textContent = h.agent.nic ? JSON.stringify(h.agent.nic, null, 2) : "no NIC state reported";
    await charts();
    setInterval(charts, 30000);
  } catch (e) {
    document.getElementById("error").textContent = String(e);
  }
  egs.live("?host=" + encodeURIComponent(host), {
    fleet: m => view(m.hosts.find(v => v.host === host)),
    values: takeValues,
    alarms,
  });
})();
