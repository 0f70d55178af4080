// odoo-watchdog's read-only page (docs/ui.md): the overview (/ui) and a rollout (/ui/rollouts/ID).
// It reads the daemon's JSON API on the same origin, draws with the DOM and inline SVG, and
// changes nothing: no request here is anything but a GET.
"use strict";

(function () {
  const POLL_MS = 2000;
  const ROLLOUT_POLL_MS = 5000;
  const EVENTS_SHOWN = 8;
  const FINAL = ["promoted", "rolled_back", "aborted"];
  // The SVG namespace as the HTML parser assigns it (so no URL needs to be written here).
  const SVG_NS = (() => {
    const probe = document.createElement("div");
    probe.innerHTML = "<svg></svg>";
    return probe.firstChild.namespaceURI;
  })();

  // ------------------------------------------------------------------ small helpers

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    setAttrs(node, attrs);
    append(node, children);
    return node;
  }

  function svg(tag, attrs, ...children) {
    const node = document.createElementNS(SVG_NS, tag);
    setAttrs(node, attrs);
    append(node, children);
    return node;
  }

  function setAttrs(node, attrs) {
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined) continue;
      if (key === "text") node.textContent = String(value);
      else node.setAttribute(key, String(value));
    }
  }

  function append(node, children) {
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
  }

  function num(value) {
    if (value === null || value === undefined) return "–";
    if (typeof value !== "number") return String(value);
    if (value !== 0 && (Math.abs(value) >= 1e5 || Math.abs(value) < 1e-3)) {
      return value.toExponential(2);
    }
    return String(Number(value.toPrecision(4)));
  }

  function clock(at) {
    if (at === null || at === undefined) return "–";
    const d = new Date(at * 1000);
    const pad = (n) => String(n).padStart(2, "0");
    return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  }

  function when(at) {
    if (at === null || at === undefined) return "–";
    const d = new Date(at * 1000);
    return `${d.getFullYear()}-${String(d.getMonth() + 1).padStart(2, "0")}-` +
      `${String(d.getDate()).padStart(2, "0")} ${clock(at)}`;
  }

  function duration(seconds) {
    if (seconds === null || seconds === undefined) return "–";
    const s = Math.max(0, Math.round(seconds));
    if (s < 60) return `${s}s`;
    if (s < 3600) return `${Math.floor(s / 60)}m ${String(s % 60).padStart(2, "0")}s`;
    return `${Math.floor(s / 3600)}h ${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}m`;
  }

  // Colours in name order, so that two splits compare as text and the bar never swaps sides.
  function colorsOf(weights) {
    return Object.entries(weights || {}).sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
  }

  function weightsText(weights) {
    return colorsOf(weights).map(([c, w]) => `${c} ${w}%`).join(" / ");
  }

  async function getJSON(path) {
    const resp = await fetch(path, { headers: { Accept: "application/json" }, cache: "no-store" });
    let body = null;
    try { body = await resp.json(); } catch (e) { body = null; }
    if (!resp.ok) {
      const message = body && body.error ? body.error : `HTTP ${resp.status}`;
      const err = new Error(`${path}: ${message}`);
      err.status = resp.status;
      throw err;
    }
    return body;
  }

  function setStatus(text, isError) {
    const node = document.getElementById("status");
    node.textContent = text;
    node.classList.toggle("error", Boolean(isError));
  }

  function stateCell(state) {
    return el("td", { class: `state state-${state || "none"}`, "data-state": state || "",
                      text: state || "–" });
  }

  // ------------------------------------------------------------------ the overview: /ui

  function splitBar(weights) {
    const bar = el("div", { class: "split", role: "img",
                            "aria-label": `split ${weightsText(weights)}` });
    for (const [color, weight] of colorsOf(weights)) {
      const seg = el("div", { class: "seg", "data-color": color, "data-weight": weight,
                              title: `${color} ${weight}%`, text: `${color} ${weight}%` });
      seg.style.width = `${weight}%`;
      bar.append(seg);
    }
    return bar;
  }

  function rulesTable(rules) {
    if (!rules.length) return el("p", { class: "meta", text: "no rule measured yet" });
    return el("table", { class: "rules" },
      el("thead", {}, el("tr", {},
        el("th", { text: "rule" }), el("th", { text: "colour" }), el("th", { text: "value" }),
        el("th", { text: "threshold" }), el("th", { text: "state" }),
        el("th", { class: "col-for", text: "for" }),
        el("th", { class: "col-detail", text: "detail" }))),
      el("tbody", {}, rules.map((r) => el("tr", {
        "data-rule": r.name, "data-color": r.color, "data-state": r.state },
        el("td", { class: "rule-name", text: r.name }), el("td", { text: r.color }),
        el("td", { class: "num value", text: num(r.value) }),
        el("td", { class: "threshold", text: r.threshold || "–" }), stateCell(r.state),
        el("td", { class: "col-for num", text: r.for ? duration(r.for) : "–" }),
        el("td", { class: "col-detail", text: r.detail || "" })))));
  }

  function eventsList(events, shown) {
    const last = events.slice(-shown).reverse();
    if (!last.length) return el("p", { class: "meta", text: "no event yet" });
    return el("ul", { class: "events" }, last.map((e) => el("li", { "data-kind": e.kind },
      el("time", { text: clock(e.at) }), el("span", { class: "kind", text: e.kind }),
      el("span", { class: "message", text: e.message }))));
  }

  function siteCard(view, receivedAt) {
    const ro = view.rollout;
    const card = el("section", { class: "card site", "data-site": view.site },
      el("h2", {},
        el("span", { class: "site-name", text: view.site }),
        el("span", { class: "badge phase", "data-phase": view.phase, text: view.phase }),
        el("span", { class: "meta", text: `live ${view.live}` })),
      splitBar(view.weights));
    const facts = [];
    if (view.actual_weights && weightsText(view.actual_weights) !== weightsText(view.weights)) {
      facts.push(el("span", { class: "warn",
                              text: `router reports ${weightsText(view.actual_weights)}` }));
    }
    if (view.router && view.router.error) {
      facts.push(el("span", { class: "warn", text: `router: ${view.router.error}` }));
    }
    if (view.store && !view.store.ok) {
      facts.push(el("span", { class: "warn", text: `store cannot write: ${view.store.error}` }));
    }
    if (ro) {
      const label = ro.step_label ? ` (${ro.step_label})` : "";
      const left = el("b", { class: "time-left", "data-left": ro.next_step_in,
                             "data-received": receivedAt,
                             text: ro.next_step_in === null ? "–" : duration(ro.next_step_in) });
      card.append(el("p", { class: "meta rollout" },
        "rollout ", el("a", { class: "rollout-link", href: `/ui/rollouts/${encodeURIComponent(ro.id)}`,
                              text: ro.id }),
        `: ${ro.from} → ${ro.to}`, ro.version ? ` ${ro.version}` : "", `, ${ro.strategy}; `,
        el("span", { class: "step", text: `step ${ro.step}/${ro.steps}${label}` }),
        "; next in ", left,
        ro.paused_by ? `; paused by ${ro.paused_by}` : "",
        ro.reason ? `; ${ro.reason}` : ""));
    }
    if (facts.length) card.append(el("p", { class: "meta" }, facts));
    card.append(el("h3", { text: "rules" }), rulesTable(view.rules || []));
    if ((view.alerts || []).length) {
      card.append(el("h3", { text: "alerts" }), el("ul", { class: "events" },
        view.alerts.map((a) => el("li", {}, el("span", { class: "kind", text: a.name }),
                                  `${a.color} since ${clock(a.since)}: ${a.summary || ""}`))));
    }
    card.append(el("h3", { text: "last events" }), eventsList(view.events || [], EVENTS_SHOWN));
    return card;
  }

  async function refreshOverview() {
    try {
      const list = await getJSON("/api/v1/sites");
      const receivedAt = Date.now() / 1000;
      const full = await Promise.all(list.sites.map((s) =>
        getJSON(`/api/v1/sites/${encodeURIComponent(s.site)}`)));
      const main = document.getElementById("sites");
      main.replaceChildren(...full.map((view) => siteCard(view, receivedAt)));
      const problems = (list.config && list.config.errors) || [];
      setStatus(`updated ${clock(receivedAt)}` +
                (problems.length ? `; config reload failed: ${problems[0]}` : ""),
                problems.length > 0);
    } catch (err) {
      setStatus(`cannot read the API: ${err.message}`, true);
    }
  }

  function countDown() {
    const now = Date.now() / 1000;
    for (const node of document.querySelectorAll(".time-left[data-left]")) {
      const left = Number(node.dataset.left) - (now - Number(node.dataset.received));
      node.textContent = duration(left);
    }
  }

  // ------------------------------------------------------------------ charts (inline SVG)

  // ">= 0.5 and <= 0.01" -> [{op: ">=", value: 0.5}, {op: "<=", value: 0.01}]
  function thresholds(text) {
    const out = [];
    const re = /(>=|<=|>|<)\s*(-?[0-9.]+(?:e[-+]?[0-9]+)?)/gi;
    let m;
    while ((m = re.exec(text || "")) !== null) out.push({ op: m[1], value: Number(m[2]) });
    return out.filter((t) => Number.isFinite(t.value));
  }

  const W = 820, H = 200, L = 56, R = 14, T = 16, B = 26;

  // series: [{cls, points: [[t, v|null, state?], ...]}]; lines: [{value, label}]
  function chart(title, series, lines, events, t0, t1, fixed) {
    let lo = Infinity, hi = -Infinity;
    for (const s of series) for (const p of s.points) {
      if (p[1] !== null) { lo = Math.min(lo, p[1]); hi = Math.max(hi, p[1]); }
    }
    for (const l of lines) { lo = Math.min(lo, l.value); hi = Math.max(hi, l.value); }
    if (fixed) { lo = fixed[0]; hi = fixed[1]; }
    if (!Number.isFinite(lo)) { lo = 0; hi = 1; }
    if (hi === lo) { hi = lo + (Math.abs(lo) || 1) * 0.5; lo = lo - (Math.abs(lo) || 1) * 0.5; }
    if (!fixed) { const pad = (hi - lo) * 0.08; hi += pad; lo = lo >= 0 && lo - pad < 0 ? 0 : lo - pad; }
    const span = Math.max(t1 - t0, 1);
    const x = (t) => L + ((t - t0) / span) * (W - L - R);
    const y = (v) => T + (1 - (v - lo) / (hi - lo)) * (H - T - B);
    const root = svg("svg", { class: "chart", viewBox: `0 0 ${W} ${H}`, role: "img",
                              "aria-label": title });
    root.append(svg("title", { text: title }));
    for (let i = 0; i <= 4; i++) {
      const v = lo + ((hi - lo) * i) / 4;
      root.append(svg("line", { class: "grid", x1: L, x2: W - R, y1: y(v), y2: y(v) }),
                  svg("text", { x: L - 6, y: y(v) + 4, "text-anchor": "end", text: num(v) }));
    }
    for (let i = 0; i <= 4; i++) {
      const t = t0 + (span * i) / 4;
      root.append(svg("text", { x: x(t), y: H - 8, "text-anchor": i === 0 ? "start" : i === 4 ? "end" : "middle",
                                text: clock(t) }));
    }
    root.append(svg("line", { class: "axis", x1: L, x2: W - R, y1: H - B, y2: H - B }),
                svg("line", { class: "axis", x1: L, x2: L, y1: T, y2: H - B }));
    for (const l of lines) {
      root.append(svg("line", { class: "threshold", x1: L, x2: W - R, y1: y(l.value), y2: y(l.value) },
                      svg("title", { text: l.label })),
                  svg("text", { class: "threshold-label", x: W - R - 2, y: y(l.value) - 4,
                                "text-anchor": "end", text: l.label }));
    }
    events.forEach((e, i) => {
      const ex = x(Math.min(Math.max(e.at, t0), t1));
      root.append(svg("line", { class: "event", "data-kind": e.kind, x1: ex, x2: ex, y1: T, y2: H - B },
                      svg("title", { text: `${clock(e.at)} ${e.kind}: ${e.message}` })),
                  svg("text", { class: "event-label", x: ex > W - R - 90 ? ex - 3 : ex + 3,
                                y: T + 10 + (i % 3) * 12,
                                "text-anchor": ex > W - R - 90 ? "end" : "start", text: e.kind }));
    });
    for (const s of series) {
      let run = [];
      const flush = () => {
        if (run.length > 1) root.append(svg("polyline", { class: `line ${s.cls}`, points: run.join(" ") }));
        run = [];
      };
      for (const p of s.points) {
        if (p[1] === null) { flush(); continue; }
        run.push(`${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`);
        if (s.dots) {
          root.append(svg("circle", { class: `pt-${p[2] || "none"}`, cx: x(p[0]).toFixed(1),
                                      cy: y(p[1]).toFixed(1), r: 2.5 },
                          svg("title", { text: `${clock(p[0])}: ${num(p[1])} (${p[2]})` })));
        }
      }
      flush();
    }
    return root;
  }

  // A weight holds until the next tick: draw it as steps.
  function stepped(points) {
    const out = [];
    points.forEach((p, i) => {
      if (i > 0) out.push([p[0], points[i - 1][1]]);
      out.push(p);
    });
    return out;
  }

  // ------------------------------------------------------------------ a rollout: /ui/rollouts/ID

  function rolloutId() {
    const parts = window.location.pathname.split("/").filter(Boolean);
    return decodeURIComponent(parts[parts.length - 1] || "");
  }

  function summary(ro) {
    const node = document.getElementById("summary");
    node.replaceChildren(
      el("h2", {}, el("span", { text: `${ro.site}: ${ro.from} → ${ro.to}` }),
         el("span", { class: "badge phase", "data-phase": ro.phase, text: ro.phase })),
      el("p", { class: "meta" },
        "version ", el("b", { text: ro.version || "–" }), ", strategy ", el("b", { text: ro.strategy }),
        ", step ", el("b", { class: "step", text: `${ro.step}/${ro.steps}` }),
        ", started ", el("b", { text: when(ro.started_at) }),
        ", finished ", el("b", { text: when(ro.finished_at) }),
        ", outcome ", el("b", { class: "outcome", text: ro.outcome || "running" }),
        ro.reason ? `; ${ro.reason}` : ""),
      el("p", { class: "meta", text: `${ro.ticks.length} ticks shown of ${ro.ticks_recorded} ` +
                                     `recorded (the newest ${ro.ticks_kept} are kept)` }));
  }

  function ruleSeries(ticks) {
    const byRule = new Map();
    ticks.forEach((tick, i) => {
      for (const r of tick.rules) {
        const key = `${r.name}\u0000${r.color}`;
        if (!byRule.has(key)) byRule.set(key, { name: r.name, color: r.color, threshold: r.threshold,
                                                points: [], last: null, worst: "ok", breaches: 0 });
        const s = byRule.get(key);
        s.points.push([tick.at, typeof r.value === "number" ? r.value : null, r.state]);
        s.threshold = r.threshold;
        s.last = r;
        if (r.state === "firing" || (r.state === "pending" && s.worst !== "firing") ||
            (r.state === "holding" && s.worst === "ok")) s.worst = r.state;
        if (r.outcome === "breach") s.breaches += 1;
      }
    });
    return [...byRule.values()];
  }

  function drawRollout(ro) {
    document.getElementById("rollout-id").textContent = ro.id;
    document.title = `rollout ${ro.id} · odoo-watchdog`;
    summary(ro);
    const ticks = ro.ticks;
    const times = ticks.map((t) => t.at).concat(ro.events.map((e) => e.at));
    const t0 = times.length ? Math.min(...times) : ro.started_at;
    const t1 = times.length ? Math.max(...times) : t0 + 1;
    const colors = [...new Set(ticks.flatMap((t) => Object.keys(t.weights)))].sort();
    const charts = document.getElementById("charts");
    const weights = el("section", { class: "card chart-card", "data-chart": "weights" },
      el("h3", { text: "weights (%)" }),
      chart("weights", colors.map((c) => ({ cls: `line-${c}`, points: stepped(ticks.map((t) => [t.at, t.weights[c] ?? 0])) })),
            [], ro.events, t0, t1, [0, 100]));
    const cards = [weights];
    const series = ruleSeries(ticks);
    for (const s of series) {
      const lines = thresholds(s.threshold).map((t) => ({ value: t.value, label: `${t.op} ${num(t.value)}` }));
      cards.push(el("section", { class: "card chart-card", "data-chart": "rule", "data-rule": s.name,
                                 "data-color": s.color },
        el("h3", {}, el("span", { class: "rule-name", text: s.name }),
           el("span", { class: "meta", text: `${s.color}, threshold ${s.threshold || "–"}` }),
           el("span", { class: `state state-${s.worst}`, text: `worst: ${s.worst}` })),
        chart(`${s.name} (${s.color})`, [{ cls: "line-value", dots: true, points: s.points }], lines,
              ro.events, t0, t1, null)));
    }
    if (!ticks.length) cards.push(el("p", { class: "card meta", text: "no tick recorded for this rollout" }));
    charts.replaceChildren(...cards);
    document.getElementById("rules").replaceChildren(el("h2", { text: "rules" }),
      series.length ? el("table", { class: "rules" },
        el("thead", {}, el("tr", {}, ["rule", "colour", "threshold", "last value", "last state",
                                      "worst", "ticks in breach"].map((h) => el("th", { text: h })))),
        el("tbody", {}, series.map((s) => el("tr", { "data-rule": s.name, "data-color": s.color },
          el("td", { class: "rule-name", text: s.name }), el("td", { text: s.color }),
          el("td", { text: s.threshold || "–" }), el("td", { class: "num", text: num(s.last.value) }),
          stateCell(s.last.state), stateCell(s.worst),
          el("td", { class: "num", text: s.breaches }))))) :
        el("p", { class: "meta", text: "no rule was measured" }));
    document.getElementById("events").replaceChildren(el("h2", { text: `events (${ro.events.length})` }),
      el("table", { class: "events-table" },
        el("thead", {}, el("tr", {}, ["time", "event", "phase", "weights", "rule", "message", "by"].map(
          (h) => el("th", { class: h === "weights" ? "col-weights" : null, text: h })))),
        el("tbody", {}, ro.events.map((e) => el("tr", { "data-kind": e.kind, "data-event-id": e.id },
          el("td", { class: "num", text: clock(e.at) }), el("td", { class: "kind", text: e.kind }),
          el("td", { text: e.phase_from === e.phase_to ? e.phase_to : `${e.phase_from} → ${e.phase_to}` }),
          el("td", { class: "col-weights", text: weightsText(e.weights) }),
          el("td", { text: e.rule ? `${e.rule} ${num(e.value)} (${e.threshold || ""})` : "" }),
          el("td", { class: "message", text: e.message }), el("td", { text: e.actor }))))));
  }

  async function refreshRollout() {
    const id = rolloutId();
    try {
      const ro = await getJSON(`/api/v1/rollouts/${encodeURIComponent(id)}`);
      drawRollout(ro);
      const done = FINAL.includes(ro.phase);
      setStatus(`updated ${clock(Date.now() / 1000)}` + (done ? "; the rollout has ended" : ""), false);
      if (!done) window.setTimeout(refreshRollout, ROLLOUT_POLL_MS);
    } catch (err) {
      setStatus(`cannot read rollout ${id}: ${err.message}`, true);
      if (err.status !== 404) window.setTimeout(refreshRollout, ROLLOUT_POLL_MS);
    }
  }

  // ------------------------------------------------------------------ start

  // A report file (odoo-watchdog report, docs/report.md) carries its rollout: nothing to fetch.
  function embeddedRollout() {
    const node = document.getElementById("rollout-data");
    return node ? JSON.parse(node.textContent) : null;
  }

  function start() {
    if (document.body.dataset.page === "rollout") {
      const saved = embeddedRollout();
      if (saved) drawRollout(saved);
      else refreshRollout();
    } else {
      refreshOverview();
      window.setInterval(refreshOverview, POLL_MS);
      window.setInterval(countDown, 1000);
    }
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
