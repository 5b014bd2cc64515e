// The ssah search page: upload, drop or pick a random database image; show the nearest items.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { stats: null, classNames: null, queryUrl: null };

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = false;
}

function clearError() {
  $("error").hidden = true;
  $("error").textContent = "";
}

function labelText(label) {
  if (label === undefined || label === null) return "";
  const name = (c) => (state.classNames && state.classNames[c] !== undefined &&
                       state.classNames[c] !== String(c)) ? `${c} ${state.classNames[c]}` : String(c);
  if (Array.isArray(label)) return label.length ? label.map(name).join(", ") : "none";
  return label < 0 ? "unknown" : name(label);
}

function known(label) {
  if (label === undefined || label === null) return false;
  return Array.isArray(label) ? label.length > 0 : label >= 0;
}

function sameLabel(a, b) {
  if (Array.isArray(a) && Array.isArray(b)) return a.some((c) => b.includes(c));
  return a === b;
}

async function fetchJSON(url, options) {
  let response;
  try {
    response = await fetch(url, options);
  } catch (e) {
    throw new Error(`the server cannot be reached (${e.message})`);
  }
  let body = null;
  try {
    body = await response.json();
  } catch (e) {
    body = null;
  }
  if (!response.ok) {
    const why = body && body.error ? body.error : `${response.status} ${response.statusText}`;
    throw new Error(why);
  }
  return body;
}

async function loadStats() {
  try {
    const s = await fetchJSON("/stats");
    state.stats = s;
    state.classNames = s.class_names;
    const m = s.model || {};
    $("stats").textContent =
      `${s.count.toLocaleString()} items · ${s.bits} bits · engine ${s.engine}` +
      ` · model ${m.backbone} (${m.dataset}, ${m.variant}, epoch ${m.epoch})` +
      (s.writable ? " · writable" : " · read-only");
    $("k").max = s.limits.max_k;
  } catch (e) {
    $("stats").textContent = "index stats unavailable";
    showError(`Could not load the index stats: ${e.message}`);
  }
}

function options() {
  const opts = {};
  const k = $("k").value.trim();
  if (k) opts.k = k;
  const label = $("label").value.trim();
  if (label) opts.label = label;
  return opts;
}

function setQuery(src, info) {
  if (state.queryUrl) URL.revokeObjectURL(state.queryUrl);
  state.queryUrl = src.startsWith("blob:") ? src : null;
  $("query-img").src = src;
  $("query-info").textContent = info;
  $("query-panel").hidden = false;
}

function resetResults() {
  $("results").replaceChildren();
  $("summary").textContent = "";
}

function render(result, roundTripMs) {
  const q = result.query;
  const qLabel = known(q.label) ? q.label : null;
  const info = [];
  if (q.type === "id") info.push(`database item #${q.id}`);
  if (q.type === "image") info.push(`uploaded image ${q.name}`);
  if (q.type === "code") info.push("code query");
  info.push(qLabel !== null ? `label ${labelText(qLabel)}` : "label unknown");
  info.push(`code ${q.code}`);
  $("query-info").textContent = info.join(" · ");

  const cards = result.results.map((r) => {
    const card = document.createElement("figure");
    card.className = "card";
    card.dataset.id = r.id;
    card.title = `search with item #${r.id}`;
    const img = document.createElement("img");
    img.src = `${r.image_url}?size=96`;
    img.alt = `item ${r.id}`;
    img.loading = "lazy";
    const cap = document.createElement("figcaption");
    const dist = document.createElement("div");
    dist.className = "distance";
    dist.textContent = `d = ${r.distance}`;
    const meta = document.createElement("div");
    meta.textContent = `#${r.id}` + (known(r.label) ? ` · label ${labelText(r.label)}` : "");
    cap.append(dist, meta);
    if (qLabel !== null && known(r.label)) {
      const match = sameLabel(qLabel, r.label);
      card.classList.add(match ? "match" : "miss");
      const badge = document.createElement("span");
      badge.className = "badge";
      badge.textContent = match ? "same label" : "other label";
      cap.append(badge);
    }
    card.append(img, cap);
    card.addEventListener("click", () => searchId(r.id));
    return card;
  });
  $("results").replaceChildren(...cards);

  let summary = `${result.results.length} results of ${result.count.toLocaleString()} items` +
    ` · search ${result.took_ms.toFixed(1)} ms on the server` +
    (result.encode_ms !== undefined ? ` (encoding ${result.encode_ms.toFixed(1)} ms)` : "") +
    ` · ${roundTripMs.toFixed(0)} ms round trip`;
  if (qLabel !== null) {
    const labelled = result.results.filter((r) => known(r.label));
    const same = labelled.filter((r) => sameLabel(qLabel, r.label)).length;
    if (labelled.length) summary += ` · ${same} of ${labelled.length} share the query's label`;
  }
  if (result.truncated) summary += " · more items lie within the radius";
  $("summary").textContent = summary;
}

async function run(request, query) {
  clearError();
  const t0 = performance.now();
  try {
    const result = await request();
    if (query) query();
    render(result, performance.now() - t0);
  } catch (e) {
    resetResults();
    $("query-panel").hidden = true;
    showError(`Search failed: ${e.message}`);
  }
}

function searchFile(file) {
  if (!file) {
    showError("Drop an image file (nothing usable was dropped).");
    return;
  }
  const form = new FormData();
  form.append("image", file, file.name);
  for (const [key, value] of Object.entries(options())) form.append(key, value);
  const src = URL.createObjectURL(file);
  return run(() => fetchJSON("/search", { method: "POST", body: form }),
             () => setQuery(src, ""));
}

function searchId(id) {
  const body = { id: Number(id), ...options() };
  if (body.k) body.k = Number(body.k);
  if (body.label && !body.label.includes(",")) body.label = Number(body.label);
  return run(() => fetchJSON("/search", {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  }), () => setQuery(`/items/${id}/image?size=96`, ""));
}

async function searchRandom() {
  clearError();
  try {
    const { id } = await fetchJSON("/random");
    await searchId(id);
  } catch (e) {
    showError(`No random image: ${e.message}`);
  }
}

function setUp() {
  const drop = $("drop");
  ["dragenter", "dragover"].forEach((type) => drop.addEventListener(type, (e) => {
    e.preventDefault();
    drop.classList.add("over");
  }));
  ["dragleave", "dragend"].forEach((type) => drop.addEventListener(type, () => {
    drop.classList.remove("over");
  }));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    const files = e.dataTransfer ? e.dataTransfer.files : null;
    searchFile(files && files.length ? files[0] : null);
  });
  // a file dropped outside the zone must not navigate away from the page
  window.addEventListener("dragover", (e) => e.preventDefault());
  window.addEventListener("drop", (e) => e.preventDefault());
  $("file").addEventListener("change", (e) => {
    const file = e.target.files[0];
    e.target.value = "";
    searchFile(file);
  });
  $("random").addEventListener("click", searchRandom);
  loadStats();
}

setUp();
