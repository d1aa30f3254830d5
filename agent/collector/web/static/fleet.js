// The fleet page: every host (state, last seen, spool, GPUs, firing alarms), sorted and
// filtered by label, and a heat map of every GPU. Rows are built once and then only the
// cells that changed are touched, so a 1 Hz feed of a large fleet stays cheap.
"use strict";
const hosts = new Map();           // name -> {data, row, cells}
const GPU_RANGES = [[20, 90], [0, 100], [0, 100], [0, 400]];  // the heat map's colour scales
let figures = [], hotCelsius = 70, sortKey = "host", sortDesc = false, now = Date.now() / 1000;
const labelKeys = new Set(), filters = {};
const tbody = document.querySelector("#hosts tbody");
const COLUMNS = [["host", "Host"], ["state", "State"], ["last_seen", "Last seen"], ["backlog", "Spool backlog"],
                 ["dropped", "Dropped"], ["gpus", "GPUs"], ["alarms", "Firing alarms"]];

function header() {
  const cols = [...COLUMNS.slice(0, 1), ...[...labelKeys].sort().map(k => ["label:" + k, k]), ...COLUMNS.slice(1)];
  document.getElementById("head").innerHTML = cols.map(([key, title]) =>
    `<th data-key="${egs.esc(key)}" class="${key === sortKey ? "sorted" + (sortDesc ? " desc" : "") : ""}">${egs.esc(title)}</th>`).join("");
  for (const th of document.querySelectorAll("#head th")) {
    th.onclick = () => { sortDesc = sortKey === th.dataset.key ? !sortDesc : false; sortKey = th.dataset.key; header(); order(); };
  }
  // Every row at once from one HTML string (one parse for the whole table, not one a row).
  const list = sorted();
  tbody.innerHTML = list.map(h => rowHtml(h.data)).join("");
  list.forEach((h, i) => { h.row = tbody.children[i]; bind(h); h.row.hidden = !matches(h.data); });
  filterControls();
}

function filterControls() {
  const box = document.getElementById("label-filters");
  box.innerHTML = [...labelKeys].sort().map(k => {
    const values = [...new Set([...hosts.values()].map(h => h.data.labels[k]).filter(v => v !== undefined))].sort();
    return `<label>${egs.esc(k)} <select data-label="${egs.esc(k)}"><option value="">any</option>` +
      values.map(v => `<option${filters[k] === v ? " selected" : ""}>${egs.esc(v)}</option>`).join("") + "</select></label>";
  }).join(" ");
  for (const sel of box.querySelectorAll("select")) {
    sel.onchange = () => { filters[sel.dataset.label] = sel.value; applyFilter(); };
  }
}

function matches(d) {
  const text = document.getElementById("search").value.trim();
  if (text && !d.host.includes(text)) return false;
  return Object.entries(filters).every(([k, v]) => !v || d.labels[k] === v);
}

function applyFilter() {
  let shown = 0;
  for (const h of hosts.values()) {
    const ok = matches(h.data);
    h.row.hidden = !ok;
    shown += ok;
  }
  document.getElementById("shown").textContent = `${shown} of ${hosts.size} hosts`;
  heatmap();
}

function sortValue(d) {
  if (sortKey.startsWith("label:")) return d.labels[sortKey.slice(6)] ?? "";
  if (sortKey === "gpus") return d.gpus.length;
  if (sortKey === "alarms") return d.alarms.length;
  return d[sortKey] ?? "";
}

function sorted() {
  return [...hosts.values()].sort((a, b) => {
    const x = sortValue(a.data), y = sortValue(b.data);
    const c = x < y ? -1 : x > y ? 1 : a.data.host < b.data.host ? -1 : 1;
    return sortDesc ? -c : c;
  });
}

function order() {
  const list = sorted();
  let i = 0, same = true;
  for (const row of tbody.children) { if (row !== list[i++]?.row) { same = false; break; } }
  if (!same || tbody.children.length !== list.length) tbody.replaceChildren(...list.map(h => h.row));
}

function gpuHtml(gpus) {
  return `${gpus.length} ` + gpus.map(([gpu, state, temp]) =>
    `<span class="gpu gpu-${state}" data-gpu="${egs.esc(gpu)}" title="GPU ${egs.esc(gpu)}: ${state}, ${egs.num(temp)} C"></span>`).join("");
}

function set(cell, text, cls) {
  if (cell.textContent !== text) cell.textContent = text;
  if (cls !== undefined && cell.className !== cls) cell.className = cls;
}

const count = v => v === null ? "-" : String(v);
const gpuKey = d => d.gpus.map(g => g[0] + g[1]).join();

// A row as HTML, with its values: the table is built from these in one go.
function rowHtml(d) {
  return `<tr data-host="${egs.esc(d.host)}"><td><a href="/host/${encodeURIComponent(d.host)}">${egs.esc(d.host)}</a></td>` +
    [...labelKeys].sort().map(k => `<td>${egs.esc(d.labels[k] ?? "")}</td>`).join("") +
    `<td class="state state-${d.state}">${d.state}</td><td class="num seen">${egs.age(now - d.last_seen)}</td>` +
    `<td class="num backlog">${count(d.backlog)}</td><td class="num dropped">${count(d.dropped)}</td>` +
    `<td class="gpus">${gpuHtml(d.gpus)}</td><td class="alarms alarm">${egs.esc(d.alarms.join(", "))}</td></tr>`;
}

// The row's cells, by position (a row's columns: host, the label keys, then COLUMNS[1:]).
function bind(h) {
  const cells = h.row.children, n = labelKeys.size;
  h.cells = { labels: [...cells].slice(1, 1 + n), state: cells[1 + n], seen: cells[2 + n], backlog: cells[3 + n],
              dropped: cells[4 + n], gpus: cells[5 + n], alarms: cells[6 + n] };
  h.gpuKey = gpuKey(h.data);
}

function render(h) {
  const d = h.data;
  if (!h.row) {
    const t = document.createElement("tbody");
    t.innerHTML = rowHtml(d);
    h.row = t.firstChild;
    bind(h);
    h.row.hidden = !matches(d);
    return;
  }
  const c = h.cells;
  [...labelKeys].sort().forEach((k, i) => set(c.labels[i], d.labels[k] ?? ""));
  set(c.state, d.state, "state state-" + d.state);
  set(c.seen, egs.age(now - d.last_seen));
  set(c.backlog, count(d.backlog));
  set(c.dropped, count(d.dropped));
  const key = gpuKey(d);
  if (key !== h.gpuKey) { c.gpus.innerHTML = gpuHtml(d.gpus); h.gpuKey = key; }
  set(c.alarms, d.alarms.join(", "));
}

function update(msg) {
  now = msg.now; hotCelsius = msg.hot_celsius; figures = msg.figures || figures;
  let newLabels = false;
  for (const d of msg.hosts) {
    for (const k of Object.keys(d.labels)) if (!labelKeys.has(k)) { labelKeys.add(k); newLabels = true; }
    let h = hosts.get(d.host);
    if (!h) { h = { data: d, row: null }; hosts.set(d.host, h); } else h.data = d;
  }
  if (newLabels) { header(); } else {
    for (const d of msg.hosts) render(hosts.get(d.host));
    if (sortKey !== "host" || msg.hosts.some(d => !hosts.get(d.host).row.parentNode)) order();
  }
  for (const h of hosts.values()) set(h.cells.seen, egs.age(now - h.data.last_seen));
  summary();
  heatmap();
}

function summary() {
  let gpus = 0, connected = 0, hot = 0;
  for (const h of hosts.values()) {
    gpus += h.data.gpus.length; connected += h.data.state === "connected";
    hot += h.data.gpus.filter(g => g[1] !== "ok").length;
  }
  document.getElementById("summary").textContent =
    `${hosts.size} hosts (${connected} connected), ${gpus} GPUs, ${hot} not ok`;
  applyFilterCount();
}

function applyFilterCount() {
  let shown = 0;
  for (const h of hosts.values()) shown += !h.row.hidden;
  document.getElementById("shown").textContent = `${shown} of ${hosts.size} hosts`;
}

// --- the heat map: one square per GPU, hosts side by side in the table's order --------------
const canvas = document.getElementById("heatmap"), ctx = canvas.getContext("2d");
let CELL = 7;
const GAP = 3;
let cellsAt = [];  // [x, y, host, gpu] for the pointer

function colour(v, [lo, hi]) {
  if (v === null || v === undefined) return "#ccc";
  const t = Math.max(0, Math.min(1, (v - lo) / (hi - lo)));
  return `hsl(${Math.round(220 - 220 * t)}, 75%, ${Math.round(55 - 10 * t)}%)`;
}

function heatmap() {
  const which = Number(document.getElementById("metric").value);
  const shown = [...tbody.children].map(r => hosts.get(r.dataset.host)).filter(h => h && !h.row.hidden);
  const total = shown.reduce((n, h) => n + h.data.gpus.length, 0);
  CELL = total <= 256 ? 18 : total <= 2048 ? 10 : 7;
  const width = Math.max(400, canvas.parentElement.clientWidth - 40);
  const perHost = Math.max(1, ...shown.map(h => h.data.gpus.length)) * CELL + GAP;
  const columns = Math.max(1, Math.floor(width / perHost));
  const height = Math.max(1, Math.ceil(shown.length / columns)) * (CELL + GAP) + GAP;
  if (canvas.width !== width) canvas.width = width;
  if (canvas.height !== height) canvas.height = height;
  ctx.clearRect(0, 0, width, height);
  cellsAt = [];
  shown.forEach((h, i) => {
    const x0 = (i % columns) * perHost, y = Math.floor(i / columns) * (CELL + GAP) + GAP;
    h.data.gpus.forEach((g, j) => {
      const x = x0 + j * CELL;
      ctx.fillStyle = h.data.state === "disconnected" ? "#9e9e9e" : colour(g[2 + which], GPU_RANGES[which]);
      ctx.fillRect(x, y, CELL - 1, CELL - 1);
      if (g[1] !== "ok") { ctx.strokeStyle = g[1] === "hot" ? "#000" : "#6a1b9a"; ctx.strokeRect(x + .5, y + .5, CELL - 2, CELL - 2); }
      cellsAt.push([x, y, h.data.host, g]);
    });
  });
  const [lo, hi] = GPU_RANGES[which];
  document.getElementById("legend").innerHTML =
    `<span style="background:${colour(lo, [lo, hi])}">${lo}</span><span style="background:${colour((lo + hi) / 2, [lo, hi])}">${(lo + hi) / 2}</span>` +
    `<span style="background:${colour(hi, [lo, hi])}">${hi}</span> outlined: not ok (hot at ${hotCelsius} C)`;
}

function cellAt(e) {
  const r = canvas.getBoundingClientRect(), x = e.clientX - r.left, y = e.clientY - r.top;
  return cellsAt.find(([cx, cy]) => x >= cx && x < cx + CELL && y >= cy && y < cy + CELL);
}
canvas.onmousemove = e => {
  const c = cellAt(e);
  canvas.title = c ? `${c[2]} GPU ${c[3][0]}: ${c[3][1]}, ` +
    figures.map((f, i) => `${f.replace(/^gpu_/, "")} ${egs.num(c[3][2 + i])}`).join(", ") : "";
};
canvas.onclick = e => { const c = cellAt(e); if (c) location.href = "/host/" + encodeURIComponent(c[2]); };
document.getElementById("metric").onchange = heatmap;
document.getElementById("search").oninput = applyFilter;

(async () => {
  const t0 = performance.now(), first = await egs.get("/api/fleet"), t1 = performance.now();
  update(first);
  window.egsTimings = { scriptStart: t0, fetched: t1 - t0, updated: performance.now() - t1 };  // bench/web.py
  // bench/web.py reads it: ms from navigation start to the first frame painted with the fleet.
  requestAnimationFrame(() => setTimeout(() => { window.egsFirstRender = performance.now(); }));
  egs.live("", { fleet: update });
})();
