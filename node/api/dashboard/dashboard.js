// Phalanx dashboard: polls this node's API once a second (/v1/dashboard for the cluster and the
// charts, /v1/blocks for the recent blocks) and draws everything by hand: no libraries, no CDN,
// no build step. Only same-origin requests: the other validators are seen through this node.
"use strict";

const POLL_MS = 1000;
const RECENT_BLOCKS = 15;
const SVG_NS = "http://www.w3.org/2000/svg";

const state = { head: 0, lastCommitMs: null, selected: null, timer: null, failures: 0 };

function $(id) { return document.getElementById(id); }

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const child of children) {
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

async function getJson(path) {
  const response = await fetch(path, { headers: { Accept: "application/json" } });
  const body = await response.json();
  return { status: response.status, body };
}

function short(hex) { return typeof hex === "string" ? hex.slice(0, 12) + "…" : "–"; }
function show(v) { return v === null || v === undefined ? "–" : String(v); }

function ago(ms) {
  if (ms === null || ms === undefined) return "–";
  if (ms < 1000) return "now";
  const s = Math.round(ms / 1000);
  return s < 120 ? `${s} s` : `${Math.round(s / 60)} min`;
}

// ---- cluster and stats ----------------------------------------------------------------------

function renderCluster(data) {
  const status = data.status;
  const names = {};
  for (const v of data.validators) names[v.pubkey] = v.name;
  $("chain").textContent = status.chain_id;
  $("node").textContent = `node ${status.name} · v${status.version}`;
  const healthy = data.health.status === "ok";
  const badge = $("health");
  badge.textContent = healthy ? "healthy" : "unhealthy";
  badge.className = "badge " + (healthy ? "ok" : "bad");
  $("unhealthy-reasons").textContent = healthy ? "" : "this node: " + data.health.reasons.join("; ");
  $("head-seq").textContent = status.seq;
  $("view").textContent = status.view;
  $("primary").textContent = names[status.primary] || short(status.primary);
  $("pool").textContent = show(data.pool_size);
  const series = data.series;
  const last10 = series.slice(-11, -1).reduce((sum, p) => sum + p.txs, 0);
  $("tps").textContent = (last10 / 10).toFixed(1);
  const body = $("cluster").querySelector("tbody");
  body.replaceChildren();
  for (const v of data.validators) {
    const isPrimary = v.view !== null && v.primary === v.pubkey;
    const role = (v.pubkey === status.primary ? "primary" : "backup") + (v.self ? " (this node)" : "");
    const health = v.healthy === null ? el("span", { class: "muted" }, "unknown")
      : el("span", { class: v.healthy ? "ok" : "bad" }, v.healthy ? "ok" : "unhealthy");
    body.append(el("tr", { "data-name": v.name, class: isPrimary ? "primary-row" : "" },
      el("td", {}, v.name),
      el("td", {}, role),
      el("td", {}, show(v.view)),
      el("td", { class: "seq" }, show(v.seq)),
      el("td", {}, health),
      el("td", {}, show(v.peers_connected)),
      el("td", { class: v.connected ? "ok" : "bad" }, v.connected ? "up" : "down"),
      el("td", {}, ago(v.age_ms))));
  }
  const evidenceCount = data.evidence_count;
  if (data.has_evidence_endpoint && evidenceCount) {
    $("evidence-section").hidden = false;
    loadEvidence();
  }
}

async function loadEvidence() {
  const { status, body } = await getJson("/v1/evidence");
  if (status !== 200) return;
  const box = $("evidence");
  box.replaceChildren();
  for (const item of body.evidence || []) {
    box.append(el("div", {}, `${item.kind} by ${short(item.validator)}`), el("pre", {}, JSON.stringify(item, null, 2)));
  }
}

// ---- charts ---------------------------------------------------------------------------------

function drawChart(svg, points, unit) {
  const width = Math.max(200, Math.round(svg.clientWidth || 600));
  const height = 160;
  const pad = { left: 40, right: 6, top: 8, bottom: 16 };
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("preserveAspectRatio", "none");
  svg.replaceChildren();
  const values = points.map((p) => p.y).filter((y) => y !== null);
  const max = Math.max(1, ...values) * 1.1;
  const n = points.length;
  const x = (i) => pad.left + (i / Math.max(1, n - 1)) * (width - pad.left - pad.right);
  const y = (v) => height - pad.bottom - (v / max) * (height - pad.top - pad.bottom);
  for (const frac of [0, 0.5, 1]) {
    const gy = y(max * frac / 1.1);
    const line = document.createElementNS(SVG_NS, "line");
    line.setAttribute("class", "grid");
    line.setAttribute("x1", pad.left); line.setAttribute("x2", width - pad.right);
    line.setAttribute("y1", gy); line.setAttribute("y2", gy);
    svg.append(line);
    const label = document.createElementNS(SVG_NS, "text");
    label.setAttribute("x", 2); label.setAttribute("y", gy + 3);
    label.textContent = (max * frac / 1.1).toFixed(max < 10 ? 1 : 0) + unit;
    svg.append(label);
  }
  for (const [text, at] of [["-5 min", pad.left], ["now", width - pad.right - 18]]) {
    const label = document.createElementNS(SVG_NS, "text");
    label.setAttribute("x", at); label.setAttribute("y", height - 3);
    label.textContent = text;
    svg.append(label);
  }
  let d = "";
  let pen = false;
  points.forEach((p, i) => {
    if (p.y === null) { pen = false; return; }
    d += `${pen ? "L" : "M"}${x(i).toFixed(1)},${y(p.y).toFixed(1)}`;
    pen = true;
  });
  if (d) {
    const path = document.createElementNS(SVG_NS, "path");
    path.setAttribute("class", "line");
    path.setAttribute("d", d);
    svg.append(path);
  }
}

function renderCharts(series) {
  drawChart($("chart-tps"), series.map((p) => ({ y: p.txs })), "");
  drawChart($("chart-latency"), series.map((p) => ({ y: p.latency_ms })), "");
}

// ---- blocks and drill-down ------------------------------------------------------------------

async function refreshBlocks(head) {
  const from = Math.max(1, head - RECENT_BLOCKS + 1);
  const { status, body } = await getJson(`/v1/blocks?from_seq=${from}&limit=${RECENT_BLOCKS}`);
  if (status !== 200) return;
  const blocks = body.blocks.slice().reverse();
  const withTxs = blocks.find((b) => b.tx_count > 0);
  if (withTxs) state.lastCommitMs = Math.max(state.lastCommitMs || 0, withTxs.time_ms);
  const tbody = $("blocks").querySelector("tbody");
  tbody.replaceChildren();
  for (const b of blocks) {
    const time = b.time_ms ? new Date(b.time_ms).toLocaleTimeString([], { hour12: false })
      : "(null batch)";
    const row = el("tr", { class: "clickable" + (state.selected === b.seq ? " selected" : ""),
                           onclick: () => showBlock(b.seq) },
      el("td", {}, b.seq), el("td", {}, time), el("td", {}, b.tx_count),
      el("td", { class: "hash" }, short(b.hash)));
    tbody.append(row);
  }
}

async function showBlock(seq) {
  state.selected = seq;
  const { status, body } = await getJson(`/v1/dashboard/block/${seq}`);
  const box = $("detail");
  box.replaceChildren();
  if (status !== 200) { box.append(el("p", { class: "bad" }, body.detail || "not found")); return; }
  const block = body.block;
  $("detail-title").textContent = `block ${seq}`;
  box.append(
    el("div", {}, "hash ", el("code", {}, block.hash)),
    el("div", {}, "prev ", el("code", {}, block.prev_hash)),
    el("h3", {}, `transactions (${body.tx_ids.length}): click one for its receipt`));
  const list = el("ol", {});
  body.tx_ids.forEach((txId, i) => {
    const result = (block.results || [])[i];
    const ok = result && result.ok;
    list.append(el("li", {},
      el("a", { onclick: () => showReceipt(txId) }, short(txId)), " ",
      el("span", { class: ok ? "ok" : "bad" }, ok ? "ok" : (result && result.error) || "?")));
  });
  box.append(el("div", { id: "receipt" }), list);
  box.append(el("h3", {}, "commit certificate"), el("pre", {}, JSON.stringify(block.certificate, null, 2)));
  if (block.execution !== undefined) {
    box.append(el("h3", {}, "execution certificate"), el("pre", {}, JSON.stringify(block.execution, null, 2)));
  }
  box.append(el("h3", {}, "batch"), el("pre", {}, JSON.stringify(block.batch, null, 2)));
}

async function showReceipt(txId) {
  const { body } = await getJson(`/v1/tx/${txId}`);
  const box = $("receipt");
  box.replaceChildren(el("h3", {}, `receipt of ${short(txId)}`), el("pre", {}, JSON.stringify(body, null, 2)));
}

// ---- the loop -------------------------------------------------------------------------------

async function poll() {
  try {
    const { status, body } = await getJson("/v1/dashboard");
    if (status !== 200) throw new Error(body.detail || `HTTP ${status}`);
    renderCluster(body);
    renderCharts(body.series);
    if (body.status.seq !== state.head) {
      state.head = body.status.seq;
      await refreshBlocks(state.head);
    }
    $("since-commit").textContent = state.lastCommitMs ? ago(Date.now() - state.lastCommitMs) : "–";
    $("updated").textContent = "updated " + new Date().toLocaleTimeString();
    state.failures = 0;
  } catch (err) {
    state.failures += 1;
    $("updated").textContent = `node unreachable (${state.failures}): ${err.message}`;
  }
}

poll();
state.timer = setInterval(poll, POLL_MS);
