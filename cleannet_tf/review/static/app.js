// cleannet-review page: no framework, no network beyond this server.
"use strict";

const state = {
  view: "queue",
  summary: null,
  queue: [],          // [{class, why, proposed, decided, correct, wrong, relabel, items}]
  classIndex: 0,      // the queue's current class
  cards: [],          // items of the grid the keyboard acts on
  cursor: 0,
  browseOffset: 0,
  retrainOffset: 0,
  retrainStarted: null,
  chain: Promise.resolve(),  // decisions and undos run one after another, in key order
};

function enqueue(action) {
  state.chain = state.chain.then(action).catch((error) => toast(error.message));
  return state.chain;
}

const $ = (id) => document.getElementById(id);

// This page's id, sent with each decision and undo (the log records who made what; undo takes back this
// page's own newest decision). Kept for the tab's life, so a reload still undoes its own decisions.
const CLIENT = (() => {
  let id = sessionStorage.getItem("cleannet-review-client");
  if (!id) {
    id = Array.from(crypto.getRandomValues(new Uint8Array(8)), (b) => b.toString(16).padStart(2, "0")).join("");
    sessionStorage.setItem("cleannet-review-client", id);
  }
  return id;
})();

async function api(path, body) {
  const options = body === undefined ? {} : {
    method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)};
  const response = await fetch(path, {credentials: "same-origin", ...options});
  const payload = await response.json().catch(() => ({error: `HTTP ${response.status}`}));
  if (!response.ok) throw new Error(payload.error || `HTTP ${response.status}`);
  return payload;
}

function toast(message, info) {
  const element = $("toast");
  element.textContent = message;
  element.className = info ? "info" : "";
  element.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { element.hidden = true; }, info ? 2500 : 6000);
}

function imageUrl(key, size) {
  return `/api/image?key=${encodeURIComponent(key)}&size=${size || 160}`;
}

function fmt(value, digits) {
  return value === null || value === undefined ? "n/a" : Number(value).toFixed(digits === undefined ? 3 : digits);
}

function pct(value) {
  return value === null || value === undefined ? "n/a" : (100 * value).toFixed(1) + "%";
}

// ---------------------------------------------------------------- summary

function showSummary(summary) {
  state.summary = summary;
  const c = summary.counts;
  const done = summary.proposed ? summary.proposed_decided / summary.proposed : 0;
  $("progress-fill").style.width = (100 * done).toFixed(1) + "%";
  $("progress-text").textContent = `${summary.proposed_decided} of ${summary.proposed} proposed decided · ` +
    `in all ${c.correct} correct, ${c.wrong} wrong, ${c.relabel} relabelled`;
  const m = summary.metrics;
  $("metrics-now").textContent = m ? `Now (WORKDIR/verify/metrics.json): detection error ${pct(m.detection_error)} ` +
    `on verified classes, ${pct(m.detection_error_heldout)} on held-out classes, ${pct(m.detection_error_all)} on ` +
    `all ${(m.n_val || 0) + (m.n_val_heldout || 0)} verified validation labels; ${m.n_flagged} of ${m.n_images} ` +
    `images flagged.` : "No WORKDIR/verify/metrics.json yet.";
  $("progress-text").title = `${summary.decided} decisions in all, saved in ${summary.review_file}`;
  $("progress-text").dataset.decided = summary.decided;
}

// ---------------------------------------------------------------- cards

function stateText(decision) {
  if (!decision) return "";
  if (decision.decision === "relabel") return "wrong → " + decision.chosen;
  return decision.decision === "correct" ? "label correct" : "label wrong";
}

function makeCard(item, index) {
  const card = document.createElement("div");
  card.className = "card";
  card.dataset.key = item.key;
  card.dataset.state = item.decision ? item.decision.decision : "open";
  const image = document.createElement("img");
  image.src = imageUrl(item.key);
  image.alt = item.key;
  image.loading = "lazy";
  card.appendChild(image);
  const meta = document.createElement("div");
  const suggests = item.suggested && item.suggested !== item.label ? `suggests <b></b>` : "";
  meta.innerHTML = `<div><b class="label"></b> · score <span class="score"></span>` +
    `${item.flagged ? ' <span class="flag">flagged</span>' : ""}</div><div class="suggests">${suggests}</div>` +
    `<div class="state"></div><div class="key"></div>`;
  meta.querySelector(".label").textContent = item.label;
  meta.querySelector(".score").textContent = fmt(item.score);
  if (suggests) meta.querySelector(".suggests b").textContent = item.suggested;
  if (item.plan_split === "val") meta.querySelector(".suggests").append(" (for validation)");
  else if (item.split !== "train") meta.querySelector(".suggests").append(` (${item.split} row: not reviewed)`);
  if (item.similarity !== undefined) meta.querySelector(".suggests").append(` cos ${fmt(item.similarity)}`);
  meta.querySelector(".state").textContent = stateText(item.decision);
  meta.querySelector(".key").textContent = item.key;
  card.appendChild(meta);
  if (index !== undefined) card.addEventListener("click", () => setCursor(index));
  return card;
}

function renderGrid(grid, items, append) {
  if (!append) grid.replaceChildren();
  const offset = append ? state.cards.length : 0;
  items.forEach((item, i) => grid.appendChild(makeCard(item, offset + i)));
  state.cards = append ? state.cards.concat(items) : items.slice();
}

function currentGrid() {
  return state.view === "browse" ? $("browse-grid") : $("queue-grid");
}

function cardElement(index) {
  return currentGrid().children[index];
}

function setCursor(index) {
  const previous = cardElement(state.cursor);
  if (previous) previous.classList.remove("cursor");
  state.cursor = Math.max(0, Math.min(index, state.cards.length - 1));
  const element = cardElement(state.cursor);
  if (element) {
    element.classList.add("cursor");
    element.scrollIntoView({block: "nearest"});
  }
}

function updateCard(index, item) {
  state.cards[index] = {...state.cards[index], ...item};
  const element = cardElement(index);
  if (!element) return;
  element.dataset.state = item.decision ? item.decision.decision : "open";
  element.querySelector(".state").textContent = stateText(item.decision);
}

function refsStrip(container, payload) {
  container.replaceChildren();
  if (!payload || !payload.items.length) { container.hidden = true; return; }
  container.hidden = false;
  const title = document.createElement("div");
  title.className = "refs-title";
  title.textContent = `Reference images of ${payload.class} (nearest its reference centres, largest first)`;
  container.appendChild(title);
  for (const item of payload.items) {
    const image = document.createElement("img");
    image.src = imageUrl(item.key, 96);
    image.alt = image.title = item.key;
    container.appendChild(image);
  }
}

async function showRefs(container, label) {
  if (!label) { refsStrip(container, null); return; }
  try { refsStrip(container, await api(`/api/references?label=${encodeURIComponent(label)}`)); }
  catch (error) { container.hidden = true; toast(error.message); }
}

// ---------------------------------------------------------------- queue

function renderClassList() {
  const list = $("class-list");
  list.replaceChildren();
  state.queue.forEach((group, i) => {
    const li = document.createElement("li");
    li.dataset.class = group.class;
    li.className = (i === state.classIndex ? "current " : "") + (group.decided === group.proposed ? "done" : "");
    li.innerHTML = `<span class="name"></span><span class="count"></span><span class="left"></span>` +
      `<div class="mini"><div></div></div>`;
    li.querySelector(".name").textContent = group.class;
    li.querySelector(".count").textContent = `${group.decided}/${group.proposed}` +
      (group.decided ? ` (${group.correct}✓ ${group.wrong + group.relabel}✗)` : "");
    // How many more decisions the plan asks for in this class before the scores can be calibrated.
    const left = li.querySelector(".left");
    left.dataset.train = group.left.train;
    left.dataset.val = group.left.val;
    left.textContent = group.left.train + group.left.val ?
      `${group.left.train + group.left.val} more: ${group.left.train} train, ${group.left.val} val` : "";
    left.title = "decisions the plan still asks for before the scores can be calibrated";
    li.querySelector(".mini div").style.width = (100 * group.decided / group.proposed).toFixed(0) + "%";
    li.addEventListener("click", () => selectClass(i));
    list.appendChild(li);
  });
}

function classHeader() {
  const group = state.queue[state.classIndex];
  if (!group) return;
  const threshold = state.summary ? ` · flagged: score below ${fmt(state.summary.threshold)}` : "";
  $("class-why").textContent = `${group.why}: ${group.decided} of ${group.proposed} proposed images decided ` +
    `(${group.correct} correct, ${group.wrong + group.relabel} wrong)${threshold}`;
}

function selectClass(index) {
  state.classIndex = index;
  renderClassList();
  const group = state.queue[index];
  $("queue-empty").hidden = Boolean(group);
  if (!group) {
    $("class-title").textContent = "";
    $("class-why").textContent = "";
    renderGrid($("queue-grid"), []);
    refsStrip($("queue-refs"), null);
    return;
  }
  $("class-title").textContent = group.class;
  renderGrid($("queue-grid"), group.items);
  classHeader();
  const first = group.items.findIndex((item) => !item.decision);
  setCursor(first < 0 ? 0 : first);
  showRefs($("queue-refs"), group.class);
}

async function loadQueue(selectKey) {
  const payload = await api("/api/queue");
  state.queue = payload.classes;
  let index = state.queue.findIndex((group) => group.items.some((item) => item.key === selectKey));
  if (index < 0) index = state.queue.findIndex((group) => group.items.length > 0);
  selectClass(index < 0 ? state.queue.length : index);
  if (selectKey) {
    const at = state.cards.findIndex((item) => item.key === selectKey);
    if (at >= 0) setCursor(at);
  }
}

function nextOpen(from) {
  for (let i = from; i < state.cards.length; i++) if (!state.cards[i].decision) return i;
  return -1;
}

function countDecision(key, decision, sign) {
  if (!decision) return;
  for (const group of state.queue) {
    const item = group.items.find((x) => x.key === key);
    if (item) {
      group.decided += sign;
      group[decision.decision] += sign;
      group.left[item.plan_split || "train"] -= sign;
    }
  }
}

// ---------------------------------------------------------------- decisions

function decide(decision, label) {
  return enqueue(() => decideNow(decision, label));
}

async function decideNow(decision, label) {
  const item = state.cards[state.cursor];
  if (!item) return;
  try {
    const body = {key: item.key, decision, client: CLIENT};
    if (label !== undefined) body.label = label;
    const payload = await api("/api/decide", body);
    countDecision(item.key, item.decision, -1);
    countDecision(item.key, payload.item.decision, +1);
    updateCard(state.cursor, payload.item);
    showSummary(payload.summary);
    if (state.view === "queue") {
      renderClassList();
      classHeader();
      const next = nextOpen(state.cursor + 1);
      if (next >= 0) setCursor(next);
      else {
        const earlier = nextOpen(0);
        if (earlier >= 0) setCursor(earlier);
        else {
          const after = state.queue.findIndex((g, i) => i > state.classIndex && g.items.some((x) => !x.decision));
          if (after >= 0) selectClass(after);
          else await loadQueue();
        }
      }
    } else {
      setCursor(state.cursor + 1);
    }
  } catch (error) {
    toast(error.message);
  }
}

function undo() {
  return enqueue(undoNow);
}

async function undoNow() {
  try {
    const payload = await api("/api/undo", {client: CLIENT});
    showSummary(payload.summary);
    const restored = payload.item;
    const index = state.cards.findIndex((item) => item.key === restored.key);
    if (index >= 0) {
      countDecision(restored.key, state.cards[index].decision, -1);
      countDecision(restored.key, restored.decision, +1);
      updateCard(index, restored);
      setCursor(index);
      if (state.view === "queue") { renderClassList(); classHeader(); }
    } else if (state.view === "queue") {
      await loadQueue(restored.key);
    }
    toast(`undone: ${restored.key}`, true);
  } catch (error) {
    toast(error.message);
  }
}

// ---------------------------------------------------------------- class picker

const picker = {open: false, options: [], active: 0, item: null};

function openPicker() {
  const item = state.cards[state.cursor];
  if (!item || !state.summary) return;
  picker.open = true;
  picker.item = item;
  $("picker-for").textContent = `${item.key} (given: ${item.label})`;
  $("picker").hidden = false;
  $("picker-input").value = "";
  filterPicker();
  $("picker-input").focus();
}

function closePicker() {
  picker.open = false;
  $("picker").hidden = true;
  $("picker-input").blur();
}

function filterPicker() {
  const text = $("picker-input").value.trim().toLowerCase();
  const item = picker.item;
  let names = state.summary.classes.filter((name) => name !== item.label);
  if (text) {
    const starts = names.filter((name) => name.toLowerCase().startsWith(text));
    const contains = names.filter((name) => !name.toLowerCase().startsWith(text) && name.toLowerCase().includes(text));
    names = starts.concat(contains);
  } else if (item.suggested && item.suggested !== item.label) {
    names = [item.suggested].concat(names.filter((name) => name !== item.suggested));
  }
  picker.options = names.slice(0, 50);
  picker.active = 0;
  renderPicker();
}

function renderPicker() {
  const list = $("picker-list");
  list.replaceChildren();
  picker.options.forEach((name, i) => {
    const li = document.createElement("li");
    li.textContent = name;
    li.dataset.class = name;
    if (name === picker.item.suggested) {
      const hint = document.createElement("span");
      hint.className = "hint";
      hint.textContent = "suggested";
      li.appendChild(hint);
    }
    if (i === picker.active) li.className = "active";
    li.addEventListener("mousedown", (event) => { event.preventDefault(); choose(name); });
    list.appendChild(li);
  });
}

function choose(name) {
  closePicker();
  if (name) decide("relabel", name);
}

$("picker-input").addEventListener("input", filterPicker);
$("picker-input").addEventListener("keydown", (event) => {
  if (event.key === "Escape") { event.preventDefault(); closePicker(); }
  else if (event.key === "Enter") { event.preventDefault(); choose(picker.options[picker.active]); }
  else if (event.key === "ArrowDown" || event.key === "ArrowUp") {
    event.preventDefault();
    const step = event.key === "ArrowDown" ? 1 : -1;
    picker.active = Math.max(0, Math.min(picker.options.length - 1, picker.active + step));
    renderPicker();
  }
  event.stopPropagation();
});

// ---------------------------------------------------------------- neighbours

async function showNeighbours() {
  const item = state.cards[state.cursor];
  if (!item) return;
  try {
    const payload = await api(`/api/neighbours?key=${encodeURIComponent(item.key)}&count=12`);
    $("neighbours-of").textContent = `of ${item.key} (${item.label}), by cosine similarity of the features`;
    const grid = $("neighbours-grid");
    grid.replaceChildren(...payload.items.map((neighbour) => makeCard(neighbour)));
    $("neighbours").hidden = false;
  } catch (error) {
    toast(error.message);
  }
}
$("neighbours-close").addEventListener("click", () => { $("neighbours").hidden = true; });

// ---------------------------------------------------------------- browse

function fillClassSelects(classes) {
  for (const id of ["filter-label", "filter-suggested"]) {
    const select = $(id);
    for (const name of classes) {
      const option = document.createElement("option");
      option.value = option.textContent = name;
      select.appendChild(option);
    }
  }
}

async function loadBrowse(append) {
  const params = new URLSearchParams();
  for (const [name, id] of [["label", "filter-label"], ["flagged", "filter-flagged"],
                            ["suggested", "filter-suggested"], ["decided", "filter-decided"]]) {
    if ($(id).value !== "") params.set(name, $(id).value);
  }
  state.browseOffset = append ? state.browseOffset : 0;
  params.set("offset", state.browseOffset);
  params.set("limit", 60);
  try {
    const payload = await api(`/api/browse?${params}`);
    renderGrid($("browse-grid"), payload.items, append);
    state.browseOffset += payload.items.length;
    $("browse-count").textContent = `${payload.total} images, lowest score first`;
    $("browse-more").hidden = state.browseOffset >= payload.total;
    if (!append) setCursor(0);
    if (!append) showRefs($("browse-refs"), $("filter-label").value);
  } catch (error) {
    toast(error.message);
  }
}
for (const id of ["filter-label", "filter-flagged", "filter-suggested", "filter-decided"]) {
  $(id).addEventListener("change", () => { loadBrowse(false); $(id).blur(); });
}
$("browse-more").addEventListener("click", () => loadBrowse(true));

// ---------------------------------------------------------------- retrain

function historyRow(entry) {
  const tr = document.createElement("tr");
  const cells = [entry.finished || "running", String(entry.decisions)];
  for (const name of ["detection_error", "detection_error_heldout", "detection_error_all"]) {
    const before = entry.before ? entry.before[name] : null;
    const after = entry.after ? entry.after[name] : null;
    cells.push({before, after});
  }
  cells.push(`${fmt(entry.before && entry.before.roc_auc)} → ${fmt(entry.after && entry.after.roc_auc)}`);
  cells.push(entry.returncode === undefined ? "" : String(entry.returncode));
  for (const cell of cells) {
    const td = document.createElement("td");
    if (typeof cell === "string") td.textContent = cell;
    else {
      td.textContent = `${pct(cell.before)} → ${pct(cell.after)}`;
      if (cell.before !== null && cell.after !== null && cell.after !== cell.before) {
        td.className = cell.after < cell.before ? "better" : "worse";
      }
    }
    tr.appendChild(td);
  }
  return tr;
}

async function pollRetrain() {
  try {
    const status = await api(`/api/retrain?offset=${state.retrainOffset}`);
    const started = status.last ? status.last.started : null;
    if (started !== state.retrainStarted) {  // a new run rewrote the log
      state.retrainStarted = started;
      state.retrainOffset = 0;
      $("retrain-log").textContent = "";
      $("retrain-log").className = "";
      return pollRetrain();
    }
    $("retrain-commands").textContent = status.commands;
    if (status.log) {
      const log = $("retrain-log");
      if (log.className === "muted") { log.textContent = ""; log.className = ""; }
      log.textContent = (log.textContent + status.log).slice(-100000);
      log.scrollTop = log.scrollHeight;
    }
    state.retrainOffset = status.next_offset;
    $("retrain-start").disabled = status.running;
    $("retrain-state").textContent = status.running ? "running…" :
      (status.last ? `last run: exit status ${status.last.returncode}` : "");
    $("history").querySelector("tbody").replaceChildren(...status.history.slice().reverse().map(historyRow));
    const wasRunning = pollRetrain.running;
    pollRetrain.running = status.running;
    if (wasRunning && !status.running) {  // finished: new scores and proposals
      await Promise.all([loadSummary(), loadQueue()]);
    }
  } catch (error) {
    $("retrain-state").textContent = error.message;
  }
}
setInterval(() => { if (state.view === "retrain" || pollRetrain.running) pollRetrain(); }, 1500);

$("retrain-start").addEventListener("click", async () => {
  try {
    await api("/api/retrain", {});
    pollRetrain.running = true;
    await pollRetrain();
  } catch (error) {
    toast(error.message);
  }
});

// ---------------------------------------------------------------- views and keys

function showView(view) {
  state.view = view;
  for (const button of document.querySelectorAll("nav .tab")) button.classList.toggle("active",
    button.dataset.view === view);
  for (const name of ["queue", "browse", "retrain"]) $(`view-${name}`).hidden = name !== view;
  if (view === "queue") loadQueue();
  else if (view === "browse") loadBrowse(false);
  else pollRetrain();
}
for (const button of document.querySelectorAll("nav .tab")) {
  button.addEventListener("click", () => { showView(button.dataset.view); button.blur(); });
}

document.addEventListener("keydown", (event) => {
  if (picker.open || event.altKey || event.metaKey) return;
  if (event.target instanceof HTMLInputElement || event.target instanceof HTMLSelectElement) return;
  const key = event.key;
  if ((event.ctrlKey && key === "z") || (!event.ctrlKey && key === "u")) { event.preventDefault(); undo(); return; }
  if (event.ctrlKey) return;
  const actions = {
    y: () => decide("correct"), c: () => decide("correct"),
    n: () => decide("wrong"), w: () => decide("wrong"), x: () => decide("wrong"),
    p: () => enqueue(openPicker), r: () => enqueue(openPicker),
    s: () => enqueue(() => setCursor(state.cursor + 1 < state.cards.length ? state.cursor + 1 : 0)),
    ArrowRight: () => enqueue(() => setCursor(state.cursor + 1)),
    ArrowLeft: () => enqueue(() => setCursor(state.cursor - 1)),
    j: () => enqueue(() => setCursor(state.cursor + 1)), k: () => enqueue(() => setCursor(state.cursor - 1)),
    g: () => enqueue(showNeighbours), Escape: () => { $("neighbours").hidden = true; },
    1: () => showView("queue"), 2: () => showView("browse"), 3: () => showView("retrain"),
  };
  if (state.view === "retrain" && !"123".includes(key)) return;
  if (actions[key]) { event.preventDefault(); actions[key](); }
});

async function loadSummary() {
  const summary = await api("/api/summary");
  showSummary(summary);
  return summary;
}

(async function start() {
  try {
    const summary = await loadSummary();
    fillClassSelects(summary.classes);
    if (!summary.retrain) $("retrain-start").disabled = true;
    await loadQueue();
    document.body.dataset.ready = "yes";
  } catch (error) {
    toast(error.message);
    document.body.dataset.ready = "error";
  }
})();
