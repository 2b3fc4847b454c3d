// The edgecloud fleet console: polls the gateway's /console/api/ and draws the answers.
// Every value from the gateway is put in the page as text (never as markup).
"use strict";

const TOKEN_KEY = "edgecloud.console.token";
const POLL_MS = 1500;
const PAGES = ["agents", "rollouts", "models", "policies", "examples", "review"];
const SVG_NS = "http://www.w3.org/2000/svg";

let session = null;
let timer = null;
let busy = false;
let shown = "";
let flash = null;
let reviewRows = [];
let labelling = false;

// -- small helpers -------------------------------------------------------------------

function h(tag, attrs, ...children) {
  const node = document.createElement(tag);
  setAttrs(node, attrs);
  append(node, children);
  return node;
}

function s(tag, attrs, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  setAttrs(node, attrs);
  append(node, children);
  return node;
}

function setAttrs(node, attrs) {
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
}

function append(node, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

const $ = (id) => document.getElementById(id);

function pct(value, digits = 1) {
  return value === null || value === undefined ? "-" : (value * 100).toFixed(digits) + "%";
}

function ago(seconds, now) {
  if (!seconds) return "never";
  const delta = Math.max(now - seconds, 0);
  if (delta < 120) return delta.toFixed(0) + "s ago";
  if (delta < 7200) return (delta / 60).toFixed(0) + "m ago";
  return (delta / 3600).toFixed(0) + "h ago";
}

function when(seconds) {
  return seconds ? new Date(seconds * 1000).toLocaleString() : "-";
}

function bytes(n) {
  const units = ["B", "KiB", "MiB", "GiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n) + " " + units[i];
}

function labels(map) {
  const pairs = Object.entries(map || {}).map(([k, v]) => k + "=" + v);
  return pairs.length ? pairs.join(", ") : "-";
}

function badge(text, kind) {
  return h("span", {class: "badge " + (kind || "")}, text);
}

function table(columns, rows, attrs) {
  return h("table", attrs,
    h("thead", {}, h("tr", {}, columns.map((c) => h("th", {scope: "col"}, c)))),
    h("tbody", {}, rows));
}

function signature(sig) {
  if (sig.state === "verified") return badge("signed by " + sig.key, "ok");
  if (sig.state === "unchecked") return badge("signed (not checked: no trust key)", "warn");
  return badge("unsigned", "bad");
}

// -- the gateway's API ---------------------------------------------------------------

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(path, options) {
  const token = sessionStorage.getItem(TOKEN_KEY);
  const headers = Object.assign({}, (options && options.headers) || {});
  if (token) headers["Authorization"] = "Bearer " + token;
  let response;
  try {
    response = await fetch(path, Object.assign({cache: "no-store"}, options, {headers}));
  } catch (err) {
    throw new ApiError(0, "the gateway cannot be reached");
  }
  let body = null;
  try { body = await response.json(); } catch (err) { body = null; }
  if (!response.ok) {
    const message = body && body.error ? body.error : response.status + " " + response.statusText;
    throw new ApiError(response.status, message);
  }
  return body;
}

// -- log in and out ------------------------------------------------------------------

async function begin(refusedPrefix) {
  try {
    session = await api("/console/api/session");
  } catch (err) {
    if (err.status === 401 || err.status === 403) {
      const had = sessionStorage.getItem(TOKEN_KEY);
      sessionStorage.removeItem(TOKEN_KEY);
      showLogin(had ? refusedPrefix + err.message : "");
    } else {
      showLogin("Cannot check the token: " + err.message);
    }
    return;
  }
  showConsole();
}

function showLogin(message) {
  stopPolling();
  session = null;
  flash = null;
  $("nav").hidden = true;
  $("page").hidden = true;
  $("logout").hidden = true;
  $("banner").hidden = true;
  $("who").textContent = "";
  $("login").hidden = false;
  $("login-error").textContent = message || "";
  $("token").value = "";
  $("token").focus();
}

function showConsole() {
  $("login").hidden = true;
  $("login-error").textContent = "";
  $("nav").hidden = false;
  $("page").hidden = false;
  $("logout").hidden = session.open;
  const banner = $("banner");
  if (session.open) {
    banner.textContent = "This gateway has no tokens configured: anyone who can reach this "
      + "port is let in as operator and may change rollouts. Configure --tokens-file.";
    banner.className = "banner warn";
    banner.hidden = false;
  } else if (session.role === "reviewer") {
    banner.textContent = "Reviewer: label the rows in the review queue (click a class, or "
      + "press its digit key to label the oldest row).";
    banner.className = "banner info";
    banner.hidden = false;
  } else if (!session.can_act) {
    banner.textContent = "Read-only: the " + session.role + " role sees the fleet and the "
      + "review queue but cannot change rollouts or label rows.";
    banner.className = "banner info";
    banner.hidden = false;
  } else {
    banner.hidden = true;
  }
  $("who").textContent = session.open ? "open gateway (operator)"
    : (session.name ? session.role + " " + session.name : session.role);
  $("who").dataset.role = session.role;
  for (const link of document.querySelectorAll("#nav a")) {
    link.hidden = !session.pages.includes(link.dataset.page);
  }
  shown = "";
  refresh();
  timer = setInterval(refresh, POLL_MS);
}

function stopPolling() {
  if (timer !== null) clearInterval(timer);
  timer = null;
}

// -- polling -------------------------------------------------------------------------

function currentPage() {
  const page = location.hash.replace(/^#/, "");
  const allowed = session ? session.pages : PAGES;
  return allowed.includes(page) ? page : allowed[0];
}

async function refresh() {
  if (!session || busy || $("confirm").open) return;
  busy = true;
  const page = currentPage();
  for (const link of document.querySelectorAll("#nav a")) {
    link.classList.toggle("current", link.dataset.page === page);
  }
  try {
    const data = await api("/console/api/" + page);
    if (page !== currentPage()) return;
    // Pages other than the agents' show no time relative to now: redrawn only on change.
    const key = page + JSON.stringify(page === "agents" ? data : Object.assign({}, data, {now: 0}));
    if (key !== shown) {
      const main = $("page");
      main.replaceChildren(RENDER[page](data));
      main.dataset.page = page;
      shown = key;
    }
    $("updated").textContent = "updated " + new Date().toLocaleTimeString();
    $("problem").textContent = "";
  } catch (err) {
    if (err.status === 401) {
      sessionStorage.removeItem(TOKEN_KEY);
      showLogin("The gateway no longer accepts this token: " + err.message);
    } else {
      $("problem").textContent = "not updated: " + err.message;
    }
  } finally {
    busy = false;
  }
}

// -- pages ---------------------------------------------------------------------------

function renderAgents(data) {
  const offline = new Set(data.rows.filter((r) => !r.online).map((r) => r.agent_id));
  const rows = data.rows.map((r) => {
    const drift = r.drift.status === "insufficient_data"
      ? "insufficient data (" + r.drift.rows + "/" + r.drift.min_rows + " rows)"
      : (r.drift.status ? r.drift.status + " (psi " + (r.drift.psi ?? 0).toFixed(2) + ")" : "-");
    const swap = r.last_swap
      ? r.last_swap.kind + " " + r.last_swap.version + (r.last_swap.ok ? " ok" : " FAILED: " + r.last_swap.reason)
      : "-";
    const fallbacks = Object.entries(r.fallbacks_by_reason || {}).map(([k, n]) => k + " " + n);
    return h("tr", {"data-agent": r.agent_id, "data-task": r.task || ""},
      h("td", {class: "id"}, r.agent_id),
      h("td", {}, labels(r.labels)),
      h("td", {}, r.replica || "-", r.connected_here ? h("span", {class: "muted"}, " (here)") : null),
      h("td", {}, r.online ? ago(r.last_seen, data.now) : badge("offline " + ago(r.last_seen, data.now), "bad")),
      h("td", {}, r.task || "-"),
      h("td", {class: "model-version"}, r.waiting_for === "model" ? badge("waiting", "warn") : (r.model_version || "-")),
      h("td", {class: "policy-version"}, r.waiting_for === "policy" ? badge("waiting", "warn") : (r.policy_version || "-")),
      h("td", {class: "num"}, r.requests),
      h("td", {class: "num"}, r.cloud_problem ? badge("refused: " + r.cloud_problem, "bad") : pct(r.escalation_rate)),
      h("td", {class: "num"}, r.fallbacks, fallbacks.length ? " (" + fallbacks.join(", ") + ")" : ""),
      h("td", {}, r.drift.status === "alarm" ? badge(drift, "bad") : r.drift.status === "warn" ? badge(drift, "warn") : drift),
      h("td", {}, r.last_swap && !r.last_swap.ok ? badge(swap, "bad") : swap));
  });
  return h("section", {id: "agents"},
    h("h2", {}, "Agents"),
    h("p", {class: "summary"}, data.agents + " agents" + (offline.size ? ", " + offline.size + " offline" : "")
      + "; this replica: " + data.replica),
    data.rows.length
      ? table(["agent", "labels", "replica", "last seen", "task", "model", "policy", "requests",
               "escalated", "fallbacks", "drift", "last swap"], rows, {id: "agents-table"})
      : h("p", {class: "empty"}, "No agent has reported yet."));
}

const ACTION_TEXT = {
  promote: (r) => ["Promote " + r.candidate + "?", "Version " + r.candidate + " of " + r.name
    + " (" + r.target + ") becomes the stable version for every " + (r.target === "edge" ? "agent" : "replica") + "."],
  rollback: (r) => ["Roll back " + r.candidate + "?", "Every " + (r.target === "edge" ? "agent" : "replica")
    + " goes back to version " + r.stable + " of " + r.name + " (" + r.target + ")."],
  pause: (r) => ["Pause the rollout of " + r.candidate + "?", "Agents that run " + r.candidate
    + " keep it; no more are given it until the rollout is resumed."],
  resume: (r) => ["Resume the rollout of " + r.candidate + "?", "The rollout continues to "
    + r.percent + "% of the matching " + (r.target === "edge" ? "agents" : "requests") + "."],
};

function confirmAction(title, text) {
  const dialog = $("confirm");
  $("confirm-title").textContent = title;
  $("confirm-text").textContent = text;
  dialog.returnValue = "";
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), {once: true});
    dialog.showModal();
  });
}

async function act(rollout, action) {
  const [title, text] = ACTION_TEXT[action](rollout);
  if (!(await confirmAction(title, text))) return;
  try {
    const result = await api("/console/api/rollouts/" + encodeURIComponent(rollout.name) + "/" + action, {
      method: "POST",
      headers: {"Content-Type": "application/json"},
      body: JSON.stringify({target: rollout.target}),
    });
    flash = {kind: "ok", text: action + " " + rollout.name + " (" + rollout.target + "): now "
      + result.rollout.state + " (generation " + result.generation + ")"};
  } catch (err) {
    flash = {kind: "bad", text: action + " " + rollout.name + " refused: " + err.message};
  }
  shown = "";
  refresh();
}

function progressBar(done, total) {
  const share = total ? done / total : 0;
  const bar = h("div", {class: "bar"});
  bar.style.width = (share * 100).toFixed(1) + "%";
  return h("div", {class: "progress", role: "progressbar", "aria-valuemin": 0, "aria-valuemax": total,
                   "aria-valuenow": done}, bar);
}

function renderRollouts(data) {
  const cards = data.rollouts.map((r) => {
    const p = r.progress;
    const facts = [
      ["state", badge(r.state, {active: "info", paused: "warn", halted: "bad", promoted: "ok", rolled_back: "warn"}[r.state])],
      ["stable", r.stable || "-"],
      ["candidate", r.candidate ? r.candidate + " to " + r.percent + "%" : "-"],
      ["selector", labels(r.selector)],
      ["failed swaps", Object.keys(r.failures).length + " of " + r.max_failures + " allowed"],
    ];
    if (p) {
      facts.push(["agents on each version", Object.entries(p.versions).map(([v, n]) => v + ": " + n).join(", ") || "-"]);
    }
    const card = h("article", {class: "card rollout", "data-model": r.name, "data-target": r.target,
                               "data-state": r.state},
      h("h3", {}, r.name, h("span", {class: "muted"}, " " + r.target)),
      h("dl", {}, facts.map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)])));
    if (p && r.candidate) {
      const bar = progressBar(p.running, p.assigned);
      card.append(h("p", {class: "progress-text"}, p.running + " of " + p.assigned
        + " assigned agents run " + r.candidate + " (" + p.agents + " agents run " + r.name + ")"), bar);
    } else if (r.target === "cloud" && r.candidate) {
      card.append(h("p", {class: "progress-text"}, "the replicas answer " + r.percent
        + "% of the requests with " + r.candidate));
    }
    if (r.halt_reason) {
      card.append(h("div", {class: "halt"}, h("strong", {}, "Halted: "), r.halt_reason,
        h("ul", {}, Object.entries(r.failures).map(([who, why]) => h("li", {}, who + ": " + why)))));
    }
    if (session.can_act && r.actions.length) {
      card.append(h("div", {class: "actions"}, r.actions.map((action) =>
        h("button", {type: "button", class: "action " + (action === "rollback" ? "danger" : ""),
                     "data-action": action, "data-model": r.name, "data-target": r.target,
                     onclick: () => act(r, action)}, action))));
    }
    if (r.history.length) {
      card.append(h("details", {}, h("summary", {}, "history"),
        h("ol", {class: "history"}, r.history.map((line) => h("li", {}, line)))));
    }
    return card;
  });
  return h("section", {id: "rollouts"},
    h("h2", {}, "Rollouts"),
    h("p", {id: "flash", class: "flash " + (flash ? flash.kind : ""), role: "status"}, flash ? flash.text : ""),
    h("p", {class: "summary"}, "registry generation " + data.generation),
    cards.length ? h("div", {class: "cards"}, cards) : h("p", {class: "empty"}, "No model is published yet."));
}

function renderModels(data) {
  const sections = data.models.map((m) => h("article", {class: "card model", "data-model": m.name},
    h("h3", {}, m.name),
    m.floor ? h("p", {}, "minimum edge version (floor): " + m.floor) : null,
    table(["version", "target", "role", "signature", "digest", "size", "created"],
      m.versions.map((v) => h("tr", {"data-version": v.version, "data-target": v.target},
        h("td", {}, v.version), h("td", {}, v.target), h("td", {}, v.role || "-"),
        h("td", {class: "signature"}, signature(v.signature)),
        h("td", {class: "digest", title: v.digest}, v.digest.slice(0, 19) + "…"),
        h("td", {class: "num"}, bytes(v.size)), h("td", {}, v.created))))));
  return h("section", {id: "models"},
    h("h2", {}, "Models"),
    h("p", {class: "summary"}, data.trust_key
      ? "Publications must be signed with the operator's key " + data.trust_key + "."
      : "This gateway has no trust key: signatures are kept but not checked."),
    sections.length ? h("div", {class: "cards"}, sections) : h("p", {class: "empty"}, "No model is published yet."));
}

function curveSvg(curve, policyName, index) {
  const W = 420, H = 250, L = 52, R = 22, T = 14, B = 40;
  const chosen = curve.chosen;
  // As the tuner's plot: escalation up to 1.6 times the chosen point's (40% at least).
  const right = Math.min(1, Math.max(0.4, 1.6 * curve.escalation[chosen]));
  const shown = curve.accuracy.filter((a, i) => curve.escalation[i] <= right);
  const acc = shown.concat([curve.edge_accuracy, curve.cloud_accuracy]);
  let lo = Math.min(...acc), hi = Math.max(...acc);
  const pad = Math.max(0.002, (hi - lo) * 0.08);
  lo = Math.max(0, lo - pad); hi = Math.min(1, hi + pad);
  const x = (e) => L + e / right * (W - L - R);
  const y = (a) => T + (hi - a) / (hi - lo || 1) * (H - T - B);
  const what = curve.labels === "cloud" ? "agreement with the cloud" : "hybrid accuracy";
  const points = curve.escalation.map((e, i) => x(e).toFixed(1) + "," + y(curve.accuracy[i]).toFixed(1)).join(" ");
  const clip = "curve-clip-" + index;
  const ticks = [];
  for (let i = 0; i <= 4; i++) {
    const e = right * i / 4, a = lo + (hi - lo) * i / 4;
    ticks.push(s("line", {x1: x(e), x2: x(e), y1: T, y2: H - B, class: "grid"}),
      s("text", {x: x(e), y: H - B + 14, "text-anchor": "middle"}, (e * 100).toFixed(0) + "%"),
      s("line", {x1: L, x2: W - R, y1: y(a), y2: y(a), class: "grid"}),
      s("text", {x: L - 4, y: y(a) + 4, "text-anchor": "end"}, (a * 100).toFixed(1)));
  }
  return s("svg", {class: "curve", viewBox: "0 0 " + W + " " + H, width: W, height: H, role: "img",
                   "data-points": curve.escalation.length},
    s("title", {}, policyName + ": " + what + " against escalation (" + curve.rows + " rows)"),
    s("defs", {}, s("clipPath", {id: clip}, s("rect", {x: L, y: T, width: W - L - R, height: H - T - B}))),
    ticks,
    s("g", {"clip-path": "url(#" + clip + ")"},
      s("line", {x1: L, x2: W - R, y1: y(curve.edge_accuracy), y2: y(curve.edge_accuracy), class: "edge-only"}),
      s("line", {x1: L, x2: W - R, y1: y(curve.cloud_accuracy), y2: y(curve.cloud_accuracy), class: "cloud-only"}),
      s("polyline", {points, class: "line"})),
    s("circle", {cx: x(curve.escalation[chosen]), cy: y(curve.accuracy[chosen]), r: 6, class: "chosen"},
      s("title", {}, "threshold " + curve.thresholds[chosen].toFixed(4) + ": " + pct(curve.escalation[chosen])
        + " escalated, " + pct(curve.accuracy[chosen], 2) + " " + what)),
    s("text", {x: (L + W - R) / 2, y: H - 6, "text-anchor": "middle", class: "axis"}, "escalated to the cloud"),
    s("text", {x: 12, y: (T + H - B) / 2, transform: "rotate(-90 12 " + (T + H - B) / 2 + ")",
               "text-anchor": "middle", class: "axis"}, what + " (%)"));
}

function renderPolicies(data) {
  const cards = [];
  for (const p of data.policies) {
    for (const v of p.versions) {
      const doc = v.policy;
      const card = h("article", {class: "card policy", "data-policy": p.name, "data-version": v.version},
        h("h3", {}, p.name + " version " + v.version, v.assigned ? badge("assigned to agents", "ok") : null),
        h("p", {}, signature(v.signature), " published " + v.created));
      if (!doc) {
        card.append(h("p", {class: "error"}, "The policy document cannot be read."));
      } else {
        card.append(h("dl", {},
          [["score", doc.score + " (" + doc.scores_kind + ", temperature " + doc.temperature.toFixed(3) + ")"],
           ["threshold", doc.threshold.toFixed(4) + (doc.class_thresholds ? " (+" + doc.class_thresholds + " per class)" : "")],
           ["escalation budget", doc.escalation_budget === null ? "none" : pct(doc.escalation_budget)],
           ["shadow rate", pct(doc.shadow_rate)],
           ["drift reference", doc.drift_reference ? "calibration histogram" : "none"],
           ["tuned", [doc.provenance.edge_model, doc.provenance.cloud_model, doc.provenance.data,
                      doc.provenance.tuned_at].filter(Boolean).join(", ") || "-"]]
            .map(([k, val]) => [h("dt", {}, k), h("dd", {}, val)])));
        card.append(doc.curve
          ? h("figure", {}, curveSvg(doc.curve, p.name, cards.length),
              h("figcaption", {}, "line: " + doc.score + " at every threshold, on the "
                + doc.curve.rows + " tuning rows; dashed: edge only (grey) and cloud only (black); "
                + "circle: the threshold in force"))
          : h("p", {class: "empty no-curve"}, "No tuning curve is stored with this version "
              + "(written by hand, or tuned before policies kept their curve)."));
      }
      cards.push(card);
    }
  }
  return h("section", {id: "policies"}, h("h2", {}, "Policies"),
    cards.length ? h("div", {class: "cards"}, cards) : h("p", {class: "empty"}, "No policy is published yet."));
}

function colourCells(image, cell) {
  const c = image.channels;
  const finite = image.values.filter((v) => v !== null);
  const lo = image.scale ? 0 : Math.min(...finite);
  const hi = image.scale ? image.scale : Math.max(...finite);
  const level = (v) => v === null ? 0 : Math.round(255 * (hi > lo ? (v - lo) / (hi - lo) : 0));
  const cells = [];
  for (let p = 0; p < image.rows * image.cols; p++) {
    const [r, g, b] = [0, 1, 2].map((k) => level(image.values[p * c + k]));
    cells.push(s("rect", {x: (p % image.cols) * cell, y: Math.floor(p / image.cols) * cell,
                          width: cell, height: cell, fill: "rgb(" + r + "," + g + "," + b + ")"}));
  }
  return cells;
}

function inputImage(image) {
  const cell = Math.max(2, Math.floor(96 / Math.max(image.rows, image.cols)));
  if (image.channels) {
    return s("svg", {class: "digit colour", width: image.cols * cell, height: image.rows * cell,
                     viewBox: "0 0 " + image.cols * cell + " " + image.rows * cell, role: "img",
                     "data-cells": image.rows * image.cols},
      s("title", {}, image.rows + "×" + image.cols + " colour input"), colourCells(image, cell));
  }
  const finite = image.values.filter((v) => v !== null);
  const lo = Math.min(...finite), hi = Math.max(...finite);
  const cells = [];
  image.values.forEach((v, i) => {
    const level = v === null ? 0 : hi > lo ? (v - lo) / (hi - lo) : 0;
    const grey = Math.round(255 * (1 - level));
    cells.push(s("rect", {x: (i % image.cols) * cell, y: Math.floor(i / image.cols) * cell,
                          width: cell, height: cell, fill: "rgb(" + grey + "," + grey + "," + grey + ")"}));
  });
  return s("svg", {class: "digit", width: image.cols * cell, height: image.rows * cell,
                   viewBox: "0 0 " + image.cols * cell + " " + image.rows * cell, role: "img",
                   "data-cells": image.values.length},
    s("title", {}, image.rows + "×" + image.cols + " input"), cells);
}

function renderExamples(data) {
  const cards = data.examples.map((e) => h("article", {class: "card example", "data-record": e.record_id},
    h("div", {class: "pictures"}, e.inputs.map((i) => i.image ? inputImage(i.image)
      : h("span", {class: "muted"}, i.name + " " + i.datatype + " [" + i.shape.join(", ") + "] (not drawn)"))),
    h("dl", {},
      [["agent", e.agent_id], ["task", e.task + " (model " + e.model_version + ", policy " + e.policy_version + ")"],
       ["kept", when(e.at)], ["why", e.reason + ", answered by " + e.route],
       ["confidence", e.confidence === null ? "-" : e.confidence.toFixed(3)],
       ["edge says", e.edge_class === null ? "-" : String(e.edge_class)],
       ["cloud says", e.cloud_class === null ? "-" : e.cloud_class + " (model " + e.cloud_model_version + ")"]]
        .map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]))));
  return h("section", {id: "examples"}, h("h2", {}, "Hard examples"),
    h("p", {class: "summary"}, "The newest rows the agents marked hard and sent back; export them all with "
      + "`edgecloud examples export`."),
    cards.length ? h("div", {class: "cards"}, cards) : h("p", {class: "empty"}, "No hard example has arrived yet."));
}

const MAX_CLASS_BUTTONS = 20;

async function giveLabel(row, cls) {
  if (labelling) return;
  labelling = true;
  try {
    const given = await api("/console/api/review/" + encodeURIComponent(row.review_id) + "/label", {
      method: "POST",
      headers: {"Content-Type": "application/json"},
      body: JSON.stringify({label: cls}),
    });
    flash = {kind: "ok", text: "labelled " + given.review_id + " as class " + given.label
      + " (by " + given.reviewer + ")"};
  } catch (err) {
    flash = {kind: "bad", text: "label refused: " + err.message};
  } finally {
    labelling = false;
  }
  shown = "";
  refresh();
}

function inputValues(input) {
  if (input.image) return inputImage(input.image);
  if (input.table) {
    return table(["#", "value"], input.table.map((v, i) => h("tr", {},
      h("td", {class: "num"}, i), h("td", {class: "num"}, v === null ? "-" : v.toPrecision(4)))),
      {class: "values"});
  }
  return h("span", {class: "muted"}, input.name + " " + input.datatype + " [" + input.shape.join(", ") + "] "
    + (input.problem || "(not shown)"));
}

function classPicker(row) {
  if (row.classes <= MAX_CLASS_BUTTONS) {
    return h("div", {class: "actions labels"}, Array.from({length: row.classes}, (_, cls) =>
      h("button", {type: "button", class: "label", "data-label": cls,
                   title: cls < 10 ? "key " + cls : null,
                   onclick: () => giveLabel(row, cls)}, String(cls))));
  }
  const picker = h("input", {type: "number", min: 0, max: row.classes - 1, step: 1,
                             class: "class-picker", "aria-label": "class"});
  return h("div", {class: "actions labels"}, picker,
    h("button", {type: "button", class: "label-picked",
                 onclick: () => giveLabel(row, Number(picker.value))}, "Label"));
}

function renderReview(data) {
  reviewRows = data.rows;
  const cards = data.rows.map((r, index) => {
    const card = h("article", {class: "card review" + (index === 0 ? " next" : ""), "data-review": r.review_id},
      h("div", {class: "pictures"}, r.inputs.map(inputValues)),
      h("dl", {},
        [["agent", r.agent_id], ["task", r.task + " (" + r.classes + " classes)"],
         ["kept", when(r.at)], ["expires", when(r.expires_at)],
         ["edge says", r.edge.class + " (" + pct(r.edge.score) + ", model " + r.edge.model_version + ")"],
         ["cloud says", r.cloud.class + " (" + pct(r.cloud.score) + ", model " + r.cloud.model_version + ")"],
         ["app waits", r.answer_id ? "yes (answer " + r.answer_id.slice(0, 8) + "…)" : "no"]]
          .map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)])));
    card.querySelector("dd:nth-of-type(5)").dataset.edgeClass = r.edge.class;
    card.querySelector("dd:nth-of-type(6)").dataset.cloudClass = r.cloud.class;
    if (session.can_label) card.append(classPicker(r));
    return card;
  });
  return h("section", {id: "review"}, h("h2", {}, "Review"),
    h("p", {id: "flash", class: "flash " + (flash ? flash.kind : ""), role: "status"}, flash ? flash.text : ""),
    h("p", {class: "summary"}, data.waiting + " rows wait for a label, oldest first; a row leaves the "
      + "queue once labelled, or after " + (data.max_age_s / 3600).toFixed(0) + " h."
      + (session.can_label ? " Keys 0-9 label the oldest row." : "")),
    cards.length ? h("div", {class: "cards"}, cards) : h("p", {class: "empty"}, "No row waits for review."));
}

function onKey(event) {
  if (!session || !session.can_label || currentPage() !== "review" || $("confirm").open) return;
  if (event.ctrlKey || event.metaKey || event.altKey) return;
  const target = event.target;
  if (target && (target.tagName === "INPUT" || target.tagName === "TEXTAREA")) return;
  if (!/^[0-9]$/.test(event.key) || !reviewRows.length) return;
  const row = reviewRows[0];
  const cls = Number(event.key);
  if (cls >= row.classes) return;
  event.preventDefault();
  giveLabel(row, cls);
}

const RENDER = {agents: renderAgents, rollouts: renderRollouts, models: renderModels,
                policies: renderPolicies, examples: renderExamples, review: renderReview};

// -- start ---------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  $("login-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const token = $("token").value.trim();
    if (!token) {
      $("login-error").textContent = "Paste a token first.";
      return;
    }
    sessionStorage.setItem(TOKEN_KEY, token);
    begin("Token refused: ");
  });
  $("logout").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    showLogin("Logged out.");
  });
  window.addEventListener("hashchange", () => { shown = ""; refresh(); });
  document.addEventListener("keydown", onKey);
  begin("The stored token is refused: ");
});
