/* The Pushflow console: every read goes through the Pushflow API
 * (/console/api/v1/... is forwarded with the console's operator key). */
"use strict";

const OUTCOMES = ["sent", "opted_out", "quiet_hours", "deferred", "capped", "duplicate",
  "endpoint_disabled", "failed", "cancelled", "removed"];
const STATUSES = ["accepted", "scheduled", "running", "completed", "completed_with_failures",
  "failed", "cancelled"];
const CATEGORIES = ["transactional", "security", "social", "reminders", "news", "marketing"];
const UNDER_WAY = new Set(["accepted", "running", "scheduled"]);
const POLL_MS = 1500;

let definitions = null;   // the deployed ASL files, by logical id
let pollTimer = null;
let routeToken = 0;       // a view's polls stop when the route changes

// -- plumbing -------------------------------------------------------------------------

async function api(path, options = {}) {
  const answer = await fetch(`/console/api${path}`, { cache: "no-store", ...options });
  const text = await answer.text();
  const body = text ? JSON.parse(text) : null;
  if (!answer.ok) {
    const message = (body && (body.message || body.error)) || answer.statusText;
    throw new Error(`${answer.status}: ${message}`);
  }
  return body;
}

function h(tag, attrs = {}, ...content) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of content.flat()) {
    if (c === null || c === undefined || c === false) continue;
    node.appendChild(typeof c === "string" || typeof c === "number" ? document.createTextNode(String(c)) : c);
  }
  return node;
}

function badge(status) { return h("span", { class: `badge status-${status}` }, status || "—"); }
function fmtTime(iso) { return iso ? new Date(iso).toLocaleString() : "—"; }
function fmtNum(n) { return n === null || n === undefined ? "—" : Number(n).toLocaleString(); }
function fmtSeconds(s) {
  if (s === null || s === undefined) return "—";
  return s < 60 ? `${s.toFixed(1)} s` : `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
}
function since(startIso, stopIso) {
  if (!startIso) return null;
  return ((stopIso ? new Date(stopIso) : new Date()) - new Date(startIso)) / 1000;
}
function total(counts) { return Object.values(counts || {}).reduce((a, b) => a + b, 0); }

function countsBar(counts, of) {
  const sum = Math.max(total(counts), of || 0, 1);
  const bar = h("div", { class: "bar", role: "img",
    "aria-label": OUTCOMES.filter((o) => counts[o]).map((o) => `${o} ${counts[o]}`).join(", ") || "no rows yet" });
  for (const o of OUTCOMES) {
    if (!counts[o]) continue;
    bar.appendChild(h("span", { style: `width:${(100 * counts[o]) / sum}%;background:var(--o-${o})`,
      title: `${o}: ${counts[o]}` }));
  }
  return bar;
}

function legend(counts) {
  return h("div", { class: "legend" }, OUTCOMES.filter((o) => counts[o]).map((o) =>
    h("span", { "data-outcome": o }, h("i", { style: `background:var(--o-${o})` }), `${o} `,
      h("b", { class: "count" }, fmtNum(counts[o])))));
}

function setMain(...content) {
  const main = document.getElementById("main");
  main.textContent = "";
  for (const c of content) main.appendChild(c);
}

function live(text) { document.getElementById("live").textContent = text; }

function poll(fn, token) {
  clearTimeout(pollTimer);
  pollTimer = setTimeout(async () => {
    if (token !== routeToken) return;
    try { await fn(); } catch (error) { live(`update failed: ${error.message}`); }
  }, POLL_MS);
}

function query(hash) {
  const [, q] = hash.split("?");
  return new URLSearchParams(q || "");
}

function linkTo(path, params) {
  const q = new URLSearchParams(Object.entries(params).filter(([, v]) => v)).toString();
  return `#${path}${q ? `?${q}` : ""}`;
}

function select(label, name, values, current, onchange) {
  const id = `filter-${name}`;
  return h("label", { for: id }, `${label} `,
    h("select", { id, name, onchange: (e) => onchange(e.target.value) },
      h("option", { value: "" }, "any"),
      values.map((v) => h("option", { value: v, selected: v === current }, v))));
}

// -- sends ---------------------------------------------------------------------------

async function sendsView(params, token) {
  const status = params.get("status") || "", category = params.get("category") || "";
  const cursor = params.get("cursor") || "";
  const go = (changes) => { location.hash = linkTo("/sends", { status, category, ...changes, cursor: changes.cursor || "" }); };
  const tbody = h("tbody");
  const pager = h("div", { class: "pager" });
  setMain(
    h("h1", {}, "Sends"),
    h("div", { class: "filters" },
      select("Status", "status", STATUSES, status, (v) => go({ status: v })),
      select("Category", "category", CATEGORIES, category, (v) => go({ category: v }))),
    h("table", { id: "sends" },
      h("thead", {}, h("tr", {}, ["Created", "Title", "Status", "Category", "Audience",
        "Recipients", "Outcomes", "Duration"].map((c) => h("th", {}, c)))),
      tbody),
    pager);
  async function refresh() {
    const q = new URLSearchParams({ limit: "50" });
    if (status) q.set("status", status);
    if (category) q.set("category", category);
    if (cursor) q.set("cursor", cursor);
    const page = await api(`/v1/notifications?${q}`);
    if (token !== routeToken) return;
    tbody.textContent = "";
    for (const n of page.notifications) {
      const href = `#/sends/${n.notification_id}`;
      const duration = n.duration_seconds ?? (UNDER_WAY.has(n.status) ? since(n.started_at || n.created_at) : null);
      tbody.appendChild(h("tr", { class: "link", "data-id": n.notification_id,
        onclick: (e) => { if (e.target.tagName !== "A") location.hash = href; } },
        h("td", {}, fmtTime(n.created_at)),
        h("td", {}, h("a", { href }, n.title || n.notification_id)),
        h("td", {}, badge(n.status)),
        h("td", {}, n.category),
        h("td", {}, n.audience_type || "—"),
        h("td", { class: "num" }, fmtNum(n.recipient_count)),
        h("td", {}, countsBar(n.counts, n.recipient_count)),
        h("td", { class: "num" }, fmtSeconds(duration))));
    }
    if (!page.notifications.length) tbody.appendChild(h("tr", {}, h("td", { colspan: 8, class: "muted" }, "No sends.")));
    pager.textContent = "";
    if (cursor) pager.appendChild(h("a", { href: linkTo("/sends", { status, category }) }, "← Newest"));
    if (page.next) pager.appendChild(h("a", { href: linkTo("/sends", { status, category, cursor: page.next }) }, "Older →"));
    live(`updated ${new Date().toLocaleTimeString()}`);
    poll(refresh, token);
  }
  await refresh();
}

// -- one send --------------------------------------------------------------------------

function aggregateChildStates(children) {
  // A state of the Map's processor: failed if it failed in any child shown, running if
  // it runs in any, succeeded if it succeeded in all that reached it.
  const merged = {};
  const rank = { failed: 4, running: 3, caught: 2, succeeded: 1 };
  for (const child of children) {
    for (const [name, info] of Object.entries(child.states || {})) {
      const m = merged[name] || (merged[name] = { status: info.status, retries: 0, error: null });
      if (rank[info.status] > rank[m.status]) m.status = info.status;
      m.retries += info.retries || 0;
      if (info.error) m.error = info.error;
    }
  }
  return merged;
}

function eventName(event) {
  const details = Object.entries(event).find(([k]) => k.endsWith("EventDetails"));
  if (!details) return "";
  const d = details[1];
  return d.name || d.error || d.resource || "";
}

function countsChart(counts, recipients, running) {
  // The counts so far against the recipients: the bar fills while the send runs.
  const width = 360, barH = 26, sum = total(counts), of = Math.max(recipients || 0, sum, 1);
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", `0 0 ${width} 60`);
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", `${sum} of ${of} devices have a result`);
  let x = 0;
  const add = (name, attrs) => {
    const e = document.createElementNS("http://www.w3.org/2000/svg", name);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
    svg.appendChild(e);
    return e;
  };
  add("rect", { x: 0, y: 8, width, height: barH, fill: "#eaecf0", rx: 4 });
  for (const o of OUTCOMES) {
    if (!counts[o]) continue;
    const w = (width * counts[o]) / of;
    const r = add("rect", { x, y: 8, width: w, height: barH, fill: `var(--o-${o})`, "data-outcome": o });
    const t = document.createElementNS("http://www.w3.org/2000/svg", "title");
    t.textContent = `${o}: ${counts[o]}`;
    r.appendChild(t);
    x += w;
  }
  const label = add("text", { x: 0, y: 54, "font-size": 13, fill: "#344054" });
  label.textContent = `${fmtNum(sum)} of ${fmtNum(of)} devices${running ? " so far" : ""}` +
    ` (${Math.round((100 * sum) / of)}%)`;
  return svg;
}

function timeline(pages, children, startIso) {
  // One row per page: when its child ran (if the API lists children) or when its
  // rows were written; coloured by the page's worst outcome.
  const items = pages.map((p) => ({ label: `page ${p.page}`, from: p.first_at, to: p.last_at, counts: p.counts }));
  for (const c of children) items.push({ label: c.name, from: c.startDate, to: c.stopDate || new Date().toISOString(), status: c.status });
  if (!items.length) return h("p", { class: "muted" }, "No page has written its rows yet.");
  const t0 = new Date(startIso || items[0].from).getTime();
  const t1 = Math.max(...items.map((i) => new Date(i.to).getTime()), t0 + 1);
  const rowH = items.length > 60 ? 5 : 14, width = 640, left = 90, height = items.length * rowH + 24;
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", `Timeline of ${items.length} pages over ${((t1 - t0) / 1000).toFixed(1)} s`);
  const scale = (t) => left + ((width - left - 10) * (new Date(t).getTime() - t0)) / (t1 - t0);
  items.forEach((item, i) => {
    const bad = item.counts && (item.counts.failed || item.counts.endpoint_disabled);
    const colour = item.status ? (item.status === "SUCCEEDED" ? "var(--succeeded)" : item.status === "RUNNING" ? "var(--running)" : "var(--failed)")
      : bad ? "var(--caught)" : "var(--succeeded)";
    const x = scale(item.from);
    const r = document.createElementNS(ns, "rect");
    for (const [k, v] of Object.entries({ x, y: i * rowH + 4, width: Math.max(3, scale(item.to) - x), height: rowH - 2, fill: colour })) r.setAttribute(k, v);
    const title = document.createElementNS(ns, "title");
    title.textContent = `${item.label}: ${fmtTime(item.from)} → ${fmtTime(item.to)}`;
    r.appendChild(title);
    svg.appendChild(r);
    if (rowH >= 10) {
      const label = document.createElementNS(ns, "text");
      label.setAttribute("x", 0); label.setAttribute("y", i * rowH + rowH);
      label.textContent = item.label.length > 14 ? `child ${item.label.slice(0, 8)}` : item.label;
      svg.appendChild(label);
    }
  });
  const axis = document.createElementNS(ns, "text");
  axis.setAttribute("x", left); axis.setAttribute("y", height - 4); axis.setAttribute("font-size", 11);
  axis.textContent = `0 s … ${((t1 - t0) / 1000).toFixed(1)} s`;
  svg.appendChild(axis);
  return svg;
}

async function sendView(id, params, token) {
  if (!definitions) definitions = await (await fetch("/console/state-machines.json", { cache: "no-store" })).json();
  const machine = Object.values(definitions)[0];
  const firstPage = Number(params.get("first_page") || 0);
  const header = h("div"), graph = h("div", { class: "graph", id: "graph" });
  const selected = h("div", { id: "selected-state", "aria-live": "polite" },
    h("p", { class: "muted" }, "Select a state (Tab, Enter) for its status, retries and error."));
  const chart = h("div", { class: "chart", id: "counts-chart" });
  const failures = h("div", { id: "failures" });
  const events = h("div", { class: "events" });
  const mapRuns = h("div", { id: "map-runs" });
  const timelineBox = h("div", { class: "timeline", id: "timeline" });
  const pagesBox = h("div", { id: "pages" });
  setMain(header,
    h("div", { class: "row" },
      h("div", { class: "panel grow" }, h("h2", {}, "State machine"), graph),
      h("div", { class: "panel", style: "flex:0 1 380px" },
        h("h2", {}, "Counts"), chart, h("h2", {}, "Selected state"), selected, failures)),
    h("div", { class: "row" },
      h("div", { class: "panel grow" }, h("h2", {}, "Map Run and its pages"), mapRuns, timelineBox, pagesBox),
      h("div", { class: "panel grow" }, h("h2", {}, "Parent execution's events"), events)));
  let last = null;
  const onSelect = (name, scope, info) => {
    selected.textContent = "";
    selected.appendChild(h("dl", { class: "facts" },
      h("dt", {}, "State"), h("dd", {}, scope ? `${scope} › ${name}` : name),
      h("dt", {}, "Status"), h("dd", {}, badge(info.status || "notrun")),
      h("dt", {}, "Retried"), h("dd", {}, String(info.retries || 0)),
      info.error ? [h("dt", {}, "Error"), h("dd", { class: "error" }, info.error.error || ""),
        h("dt", {}, "Cause"), h("dd", { class: "error mono" }, info.error.cause || "")] : []));
  };
  async function refresh() {
    const view = await api(`/v1/notifications/${id}/execution?first_page=${firstPage}&pages=50`);
    if (token !== routeToken) return;
    last = view;
    const n = view.notification;
    const running = UNDER_WAY.has(n.status);
    header.textContent = "";
    header.appendChild(h("div", {},
      h("p", {}, h("a", { href: "#/sends" }, "← Sends")),
      h("h1", {}, n.title || n.notification_id, " ", badge(n.status)),
      h("div", { class: "panel" }, h("dl", { class: "facts" },
        h("dt", {}, "Notification"), h("dd", { class: "mono" }, n.notification_id),
        h("dt", {}, "Category"), h("dd", {}, n.category),
        h("dt", {}, "Audience"), h("dd", {}, n.audience_type || "—"),
        h("dt", {}, "Recipients"), h("dd", {}, `${fmtNum(n.recipient_count)} in ${fmtNum(n.page_count)} pages`),
        h("dt", {}, "Execution"), h("dd", {}, view.execution ? [badge(view.execution.status), " ",
          h("span", { class: "mono" }, view.execution.name)] : "not started"),
        h("dt", {}, "Duration"), h("dd", {}, fmtSeconds(n.duration_seconds ?? since(n.started_at || n.created_at))),
        n.error ? [h("dt", {}, "Error"), h("dd", { class: "error" }, n.error)] : [])),
      h("p", {},
        h("a", { href: `#/sends/${id}/deliveries` }, "Deliveries →"), " ",
        running ? h("button", { class: "danger", id: "cancel", onclick: async (e) => {
          e.target.disabled = true;
          try { await api(`/v1/notifications/${id}/cancel`, { method: "POST" }); live("cancel requested"); }
          catch (error) { live(`cancel failed: ${error.message}`); }
          refresh();
        } }, "Cancel send") : null)));
    const children = view.map_runs.flatMap((m) => m.children || []);
    const inner = aggregateChildStates(children);
    const mapRun = view.map_runs[0];
    PushflowGraph.render(graph, machine, (name, scope) => {
      if (!scope) return view.states[name];
      if (inner[name]) return inner[name];
      return null;
    }, onSelect);
    chart.textContent = "";
    chart.appendChild(countsChart(view.counts, n.recipient_count, running));
    chart.appendChild(legend(view.counts));
    failures.textContent = "";
    const failed = Object.entries(view.states).filter(([, s]) => s.error);
    for (const child of children) {
      for (const [name, s] of Object.entries(child.states || {})) {
        if (s.error) failed.push([`FanOut › ${name} (child ${child.name.slice(0, 8)}, ${s.status})`, s]);
      }
    }
    if (view.execution && view.execution.error) failed.push(["execution", { error: { error: view.execution.error, cause: view.execution.cause } }]);
    if (failed.length) {
      failures.appendChild(h("h2", {}, "Errors"));
      for (const [name, s] of failed) {
        failures.appendChild(h("div", { class: "panel" }, h("b", {}, name), " ",
          h("span", { class: "error" }, s.error.error || ""), h("div", { class: "error mono" }, s.error.cause || "")));
      }
    }
    mapRuns.textContent = "";
    for (const m of view.map_runs) {
      const ec = m.execution_counts || {};
      mapRuns.appendChild(h("p", {}, badge(m.status), " children: ",
        ["total", "succeeded", "running", "failed", "aborted", "timedOut"].filter((k) => ec[k] !== undefined)
          .map((k) => `${k} ${ec[k]}`).join(" · ")));
      if (m.children && m.children.length) {
        mapRuns.appendChild(h("table", { id: "children" },
          h("thead", {}, h("tr", {}, ["Child", "Status", "Duration", "States"].map((c) => h("th", {}, c)))),
          h("tbody", {}, m.children.map((c) => h("tr", {},
            h("td", { class: "mono" }, c.name), h("td", {}, badge(c.status)),
            h("td", { class: "num" }, fmtSeconds(since(c.startDate, c.stopDate))),
            h("td", {}, Object.entries(c.states || {}).map(([s, i]) =>
              h("span", { class: `badge status-${i.status}`, title: i.error ? `${i.status}: ${i.error.error}` : i.status },
                s + (i.retries ? ` ↻${i.retries}` : "")))))))));
      }
    }
    timelineBox.textContent = "";
    timelineBox.appendChild(h("h2", {}, "Timeline of the pages"));
    timelineBox.appendChild(timeline(view.pages, children, n.started_at || n.created_at));
    pagesBox.textContent = "";
    pagesBox.appendChild(h("table", { id: "page-table" },
      h("thead", {}, h("tr", {}, ["Page", "Devices", "Outcomes", "Rows written"].map((c) => h("th", {}, c)))),
      h("tbody", {}, view.pages.map((p) => h("tr", {},
        h("td", { class: "num" }, p.page), h("td", { class: "num" }, fmtNum(total(p.counts))),
        h("td", {}, countsBar(p.counts)), h("td", {}, fmtTime(p.last_at)))))));
    const pageCount = n.page_count || 0;
    const nav = h("div", { class: "pager" });
    if (firstPage > 0) nav.appendChild(h("a", { href: linkTo(`/sends/${id}`, { first_page: String(Math.max(0, firstPage - 50)) }) }, "← Earlier pages"));
    if (firstPage + 50 < pageCount) nav.appendChild(h("a", { href: linkTo(`/sends/${id}`, { first_page: String(firstPage + 50) }) }, "Later pages →"));
    pagesBox.appendChild(nav);
    events.textContent = "";
    const t0 = view.events.length ? new Date(view.events[0].timestamp).getTime() : 0;
    events.appendChild(h("table", { id: "events" },
      h("thead", {}, h("tr", {}, ["#", "+ms", "Type", "State / detail"].map((c) => h("th", {}, c)))),
      h("tbody", {}, view.events.map((e) => h("tr", {},
        h("td", { class: "num" }, e.id), h("td", { class: "num" }, String(new Date(e.timestamp).getTime() - t0)),
        h("td", {}, e.type), h("td", { class: /Failed|TimedOut|Aborted/.test(e.type) ? "error" : "" }, eventName(e)))))));
    live(`updated ${new Date().toLocaleTimeString()}`);
    if (running || (view.execution && view.execution.status === "RUNNING")) poll(refresh, token);
  }
  await refresh();
  return () => last;
}

// -- deliveries ----------------------------------------------------------------------------

async function deliveriesView(id, params, token) {
  const outcome = params.get("outcome") || "", platform = params.get("platform") || "";
  const after = params.get("after") || "";
  const back = (params.get("back") || "").split(",").filter(Boolean);
  const go = (changes) => { location.hash = linkTo(`/sends/${id}/deliveries`, { outcome, platform, ...changes }); };
  const q = new URLSearchParams({ limit: "100" });
  if (outcome) q.set("outcome", outcome);
  if (platform) q.set("platform", platform);
  if (after) q.set("after", after);
  const page = await api(`/v1/notifications/${id}/deliveries?${q}`);
  if (token !== routeToken) return;
  const pager = h("div", { class: "pager" });
  if (after) {
    const previous = back.slice(0, -1);
    pager.appendChild(h("a", { href: linkTo(`/sends/${id}/deliveries`, { outcome, platform, after: back[back.length - 1] === "0" ? "" : back[back.length - 1], back: previous.join(",") }) }, "← Previous"));
  }
  if (page.next) pager.appendChild(h("a", { id: "next-page", href: linkTo(`/sends/${id}/deliveries`, { outcome, platform, after: page.next, back: [...back, after || "0"].join(",") }) }, "Next →"));
  setMain(
    h("p", {}, h("a", { href: `#/sends/${id}` }, "← The send")),
    h("h1", {}, "Deliveries"),
    h("div", { class: "filters" },
      select("Outcome", "outcome", OUTCOMES, outcome, (v) => go({ outcome: v })),
      select("Platform", "platform", ["ios", "android"], platform, (v) => go({ platform: v }))),
    h("table", { id: "deliveries" },
      h("thead", {}, h("tr", {}, ["Device", "User", "Platform", "Outcome", "Page", "Localization", "Title", "SNS message id / error", "Recorded"].map((c) => h("th", {}, c)))),
      h("tbody", {}, page.deliveries.map((d) => h("tr", { "data-device": d.device_id },
        h("td", { class: "mono" }, d.device_id),
        h("td", {}, d.user_external_id ? h("a", { href: `#/users/${encodeURIComponent(d.user_external_id)}` }, d.user_external_id) : "—"),
        h("td", {}, d.platform || "—"),
        h("td", {}, h("span", { class: "badge", style: `background:var(--o-${d.outcome})` }, d.outcome)),
        h("td", { class: "num" }, d.page ?? "—"),
        h("td", {}, d.content_locale || "—"),
        h("td", {}, d.title || "—"),
        h("td", { class: d.error ? "error mono" : "mono" }, d.sns_message_id || d.error || "—"),
        h("td", {}, fmtTime(d.recorded_at)))))),
    page.deliveries.length ? pager : h("p", { class: "muted" }, "No deliveries match."));
}

// -- one user -------------------------------------------------------------------------------

async function userView(externalId, token) {
  const view = await api(`/v1/users/${encodeURIComponent(externalId)}`);
  if (token !== routeToken) return;
  const p = view.preferences;
  const capRows = Object.entries(view.cap_usage).map(([category, u]) => {
    const share = u.cap ? Math.min(1, u.used / u.cap) : 0;
    return h("tr", { "data-category": category },
      h("td", {}, category),
      h("td", { class: "num" }, `${u.used} / ${u.cap}`),
      h("td", {}, h("div", { class: "bar", role: "img", "aria-label": `${u.used} of ${u.cap}` },
        h("span", { style: `width:${100 * share}%;background:${u.used >= u.cap ? "var(--failed)" : "var(--running)"}` }))));
  });
  setMain(
    h("h1", {}, `User ${view.user.external_id}`),
    h("div", { class: "row" },
      h("div", { class: "panel grow" }, h("h2", {}, "Profile"), h("dl", { class: "facts", id: "profile" },
        h("dt", {}, "Locale"), h("dd", {}, view.user.locale),
        h("dt", {}, "Time zone"), h("dd", {}, view.user.time_zone),
        h("dt", {}, "Quiet hours"), h("dd", { id: "quiet-hours" }, p.quiet_hours ? `${p.quiet_hours.start}–${p.quiet_hours.end} (${view.user.time_zone})` : "none"),
        h("dt", {}, "Opted out of"), h("dd", { id: "opted-out" }, (p.opted_out_categories || []).join(", ") || "nothing"),
        h("dt", {}, "Topics"), h("dd", {}, view.topics.join(", ") || "none"),
        h("dt", {}, "Attributes"), h("dd", { class: "mono" }, JSON.stringify(view.user.attributes)))),
      h("div", { class: "panel grow" }, h("h2", {}, "Today's caps (rolling 24 h)"),
        h("table", { id: "caps" }, h("tbody", {}, capRows)))),
    h("div", { class: "panel" }, h("h2", {}, "Devices"),
      h("table", { id: "devices" },
        h("thead", {}, h("tr", {}, ["Device", "Platform", "Enabled", "Registered", "Last seen"].map((c) => h("th", {}, c)))),
        h("tbody", {}, view.devices.map((d) => h("tr", { "data-device": d.device_id },
          h("td", { class: "mono" }, d.device_id), h("td", {}, d.platform + (d.sandbox ? " (sandbox)" : "")),
          h("td", {}, d.enabled ? "yes" : h("span", { class: "error" }, "no (disabled)")),
          h("td", {}, fmtTime(d.created_at)), h("td", {}, fmtTime(d.last_seen_at))))))),
    h("div", { class: "panel" }, h("h2", {}, "Recent deliveries"),
      h("table", { id: "recent-deliveries" },
        h("thead", {}, h("tr", {}, ["Recorded", "Send", "Category", "Device", "Outcome", "Localization", "Title", "SNS message id / error"].map((c) => h("th", {}, c)))),
        h("tbody", {}, view.recent_deliveries.map((d) => h("tr", { "data-notification": d.notification_id },
          h("td", {}, fmtTime(d.recorded_at)),
          h("td", {}, h("a", { href: `#/sends/${d.notification_id}` }, d.notification_id.slice(0, 8))),
          h("td", {}, d.category), h("td", { class: "mono" }, `${d.device_id} ${d.platform || ""}`),
          h("td", {}, h("span", { class: "badge", style: `background:var(--o-${d.outcome})` }, d.outcome)),
          h("td", {}, d.content_locale || "—"), h("td", {}, d.title || "—"),
          h("td", { class: d.error ? "error mono" : "mono" }, d.sns_message_id || d.error || "—")))))));
}

// -- schedules ------------------------------------------------------------------------------

async function schedulesView(params, token) {
  const answer = await api("/v1/schedules?limit=100");
  if (token !== routeToken) return;
  const describe = (s) => s.send_at ? `once at ${fmtTime(s.send_at)}`
    : s.recurrence ? `${s.recurrence.cron} (${s.recurrence.time_zone})`
    : s.local_time ? `at ${s.local_time} local time` : s.kind;
  setMain(h("h1", {}, "Schedules"),
    h("table", { id: "schedules" },
      h("thead", {}, h("tr", {}, ["Created", "Kind", "When", "Status", "Next firing", "Past runs", ""].map((c) => h("th", {}, c)))),
      h("tbody", {}, answer.schedules.map((s) => h("tr", { "data-id": s.schedule_id },
        h("td", {}, fmtTime(s.created_at)), h("td", {}, s.kind), h("td", {}, describe(s)),
        h("td", {}, badge(s.status)), h("td", {}, fmtTime(s.next_firing)),
        h("td", {}, (s.runs || []).slice(-5).map((r) => h("div", {},
          h("a", { href: `#/sends/${r.notification.notification_id}` }, fmtTime(r.scheduled_time)), " ", badge(r.notification.status)))),
        h("td", {}, s.status === "active" ? h("button", { class: "danger", onclick: async (e) => {
          e.target.disabled = true;
          try { await api(`/v1/schedules/${s.schedule_id}`, { method: "DELETE" }); } catch (error) { live(`cancel failed: ${error.message}`); }
          route();
        } }, "Cancel") : null))))),
    answer.schedules.length ? h("span") : h("p", { class: "muted" }, "No schedules."));
}

// -- the router ------------------------------------------------------------------------------

async function route() {
  const token = ++routeToken;
  clearTimeout(pollTimer);
  const hash = location.hash.replace(/^#/, "") || "/sends";
  const path = hash.split("?")[0];
  const params = query(hash);
  for (const a of document.querySelectorAll("nav a")) {
    a.classList.toggle("current", path.startsWith(`/${a.dataset.section}`));
  }
  try {
    let m;
    if ((m = path.match(/^\/sends\/([0-9a-f-]{36})\/deliveries$/))) await deliveriesView(m[1], params, token);
    else if ((m = path.match(/^\/sends\/([0-9a-f-]{36})$/))) await sendView(m[1], params, token);
    else if (path.startsWith("/schedules")) await schedulesView(params, token);
    else if ((m = path.match(/^\/users\/(.+)$/))) await userView(decodeURIComponent(m[1]), token);
    else await sendsView(params, token);
    document.getElementById("main").dataset.ready = path;
  } catch (error) {
    if (token === routeToken) setMain(h("h1", {}, "Could not load"), h("p", { class: "error" }, error.message));
  }
}

window.addEventListener("hashchange", route);
route();
