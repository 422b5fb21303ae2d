/* The state machine drawn from its ASL: layered top to bottom, a Map's or a
 * Parallel's states drawn inside it, Catch edges dashed, long edges in lanes on
 * the right, loops on the left. Plain SVG; nothing is fetched. */
"use strict";

const PushflowGraph = (() => {
  const NODE_H = 34, GAP_Y = 30, GAP_X = 22, PAD = 14, HEADER = 22, LANE = 14;
  const SVG = "http://www.w3.org/2000/svg";

  function successors(state) {
    const out = [];
    if (state.Next) out.push({ to: state.Next, kind: "next" });
    if (state.Default) out.push({ to: state.Default, kind: "next", label: "default" });
    for (const choice of state.Choices || []) out.push({ to: choice.Next, kind: "next" });
    for (const c of state.Catch || []) {
      out.push({ to: c.Next, kind: "catch", label: (c.ErrorEquals || []).join(", ") });
    }
    return out;
  }

  function children(state) {
    const processor = state.ItemProcessor || state.Iterator;
    if (processor) return [processor];
    if (state.Type === "Parallel") return state.Branches || [];
    return [];
  }

  function textWidth(text) { return Math.max(118, text.length * 7.2 + 28); }

  /* Lays out one level (a machine or a Map's processor): nodes with x, y, w, h. */
  function layout(machine) {
    const names = Object.keys(machine.States);
    const edges = [];
    for (const name of names) {
      for (const s of successors(machine.States[name])) edges.push({ from: name, ...s });
    }
    // Back edges: those closing a cycle in a depth-first walk from StartAt.
    const seen = new Set(), onStack = new Set(), back = new Set();
    (function visit(name) {
      seen.add(name); onStack.add(name);
      for (const e of edges.filter((x) => x.from === name)) {
        if (onStack.has(e.to)) back.add(e);
        else if (!seen.has(e.to)) visit(e.to);
      }
      onStack.delete(name);
    })(machine.StartAt);
    // Layers: longest path over the forward "next" edges; a state reached only by
    // Catch edges goes one layer below the last state that catches into it.
    const layer = { [machine.StartAt]: 0 };
    const forward = edges.filter((e) => !back.has(e));
    for (let changed = true, guard = 0; changed && guard < 200; guard++) {
      changed = false;
      for (const kinds of [["next"], ["next", "catch"]]) {
        for (const e of forward) {
          if (!kinds.includes(e.kind) || layer[e.from] === undefined) continue;
          const onlyCaught = forward.every((x) => x.to !== e.to || x.kind === "catch");
          if (e.kind === "catch" && !onlyCaught) continue;
          const want = layer[e.from] + 1;
          if ((layer[e.to] ?? -1) < want) { layer[e.to] = want; changed = true; }
        }
      }
    }
    names.forEach((n) => { if (layer[n] === undefined) layer[n] = 0; });
    const nodes = {};
    for (const name of names) {
      const state = machine.States[name];
      const inner = children(state).map(layout);
      let w = textWidth(name), h = NODE_H;
      if (inner.length) {
        const innerW = inner.reduce((sum, g) => sum + g.width, 0) + GAP_X * (inner.length - 1);
        w = Math.max(w, innerW + 2 * PAD);
        h = NODE_H + HEADER + Math.max(...inner.map((g) => g.height)) + PAD;
      }
      nodes[name] = { name, state, w, h, layer: layer[name], inner };
    }
    const depth = Math.max(...names.map((n) => layer[n])) + 1;
    const rows = [...Array(depth)].map(() => []);
    names.forEach((n) => rows[layer[n]].push(nodes[n]));
    const rowWidth = (row) => row.reduce((s, n) => s + n.w, 0) + GAP_X * (row.length - 1);
    const bodyWidth = Math.max(...rows.map(rowWidth));
    // One lane per target of the long forward edges, one per target of the loops.
    const longTargets = [], loopTargets = [];
    for (const e of edges) {
      const gap = layer[e.to] - layer[e.from];
      if (back.has(e)) { if (!loopTargets.includes(e.to)) loopTargets.push(e.to); }
      else if (gap !== 1 && !longTargets.includes(e.to)) longTargets.push(e.to);
    }
    const left = loopTargets.length * LANE + (loopTargets.length ? 8 : 0);
    let y = 0;
    for (const row of rows) {
      let x = left + (bodyWidth - rowWidth(row)) / 2;
      const rowHeight = Math.max(...row.map((n) => n.h), NODE_H);
      for (const n of row) { n.x = x; n.y = y; x += n.w + GAP_X; }
      y += rowHeight + GAP_Y;
    }
    const width = left + bodyWidth + longTargets.length * LANE + (longTargets.length ? 10 : 0);
    return { nodes, edges, back, width, height: y - GAP_Y, left, bodyWidth, longTargets, loopTargets };
  }

  function el(name, attrs, parent) {
    const node = document.createElementNS(SVG, name);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    if (parent) parent.appendChild(node);
    return node;
  }

  /* Draws `g` at (ox, oy). statusOf(name, scope) -> {status, retries, error} or null. */
  function draw(svg, g, ox, oy, statusOf, scope, onSelect) {
    const group = el("g", { transform: `translate(${ox},${oy})` }, svg);
    const edgeLayer = el("g", {}, group);
    for (const n of Object.values(g.nodes)) {
      const info = statusOf(n.name, scope) || {};
      const status = info.status || "notrun";
      const isContainer = n.inner.length > 0;
      const node = el("g", {
        class: `state ${status}${isContainer ? " container" : ""}`,
        "data-state": n.name, "data-status": status, "data-scope": scope || "",
        tabindex: "0", role: "button",
        "aria-label": `${n.name} (${n.state.Type}): ${status}` +
          (info.retries ? `, ${info.retries} retried` : ""),
      }, group);
      if (isContainer) {
        el("rect", { x: n.x, y: n.y, width: n.w, height: n.h, rx: 8, class: "frame" }, node);
      }
      const fill = `var(--${status})`;
      el("rect", {
        x: n.x, y: n.y, width: n.w, height: NODE_H, rx: n.state.Type === "Choice" ? 16 : 5,
        style: `fill:${fill}`, class: "box",
      }, node);
      const label = el("text", { x: n.x + n.w / 2, y: n.y + 21, "text-anchor": "middle" }, node);
      label.textContent = n.name;
      el("title", {}, node).textContent =
        `${n.name} · ${n.state.Type} · ${status}` + (info.retries ? ` · ${info.retries} retried` : "") +
        (info.error && info.error.error ? ` · ${info.error.error}` : "");
      if (info.retries) {
        const r = el("text", { x: n.x + n.w - 4, y: n.y - 3, "text-anchor": "end", class: "retry" }, group);
        r.textContent = `↻ ${info.retries}`;
      }
      node.addEventListener("click", () => onSelect && onSelect(n.name, scope, info));
      node.addEventListener("keydown", (event) => {
        if (event.key === "Enter" || event.key === " ") {
          event.preventDefault(); onSelect && onSelect(n.name, scope, info);
        }
      });
      if (isContainer) {
        const caption = el("text", { x: n.x + 8, y: n.y + NODE_H + 15, class: "caption" }, node);
        caption.textContent = n.state.Type === "Map" ? "each page (a child execution)" : "branches";
        let x = n.x + PAD;
        for (const inner of n.inner) {
          draw(svg, inner, ox + x, oy + n.y + NODE_H + HEADER, statusOf, n.name, onSelect);
          x += inner.width + GAP_X;
        }
      }
    }
    for (const e of g.edges) {
      const a = g.nodes[e.from], b = g.nodes[e.to];
      if (!a || !b) continue;
      const cls = `edge ${e.kind}`;
      let d;
      if (g.back.has(e)) {
        const lane = g.left - 8 - g.loopTargets.indexOf(e.to) * LANE;
        d = `M${a.x},${a.y + NODE_H / 2} H${lane} V${b.y + NODE_H / 2} H${b.x}`;
      } else if (b.layer - a.layer === 1) {
        const ax = a.x + a.w / 2, bx = b.x + b.w / 2, ay = a.y + a.h, by = b.y, my = (ay + by) / 2;
        d = `M${ax},${ay} C${ax},${my} ${bx},${my} ${bx},${by}`;
      } else {
        const lane = g.left + g.bodyWidth + 10 + g.longTargets.indexOf(e.to) * LANE;
        d = `M${a.x + a.w},${a.y + NODE_H / 2} H${lane} V${b.y + NODE_H / 2} H${b.x + b.w}`;
      }
      el("path", { d, class: cls, "marker-end": `url(#arrow-${e.kind})` }, edgeLayer);
    }
    return group;
  }

  function render(container, definition, statusOf, onSelect) {
    const g = layout(definition);
    container.textContent = "";
    const margin = 12;
    const svg = el("svg", {
      viewBox: `${-margin} ${-margin} ${g.width + 2 * margin} ${g.height + 2 * margin}`,
      width: g.width + 2 * margin, role: "img",
      "aria-label": "The state machine, each state coloured by its status in this execution",
    });
    const defs = el("defs", {}, svg);
    for (const [kind, colour] of [["next", "#667085"], ["catch", "#d92d20"]]) {
      const marker = el("marker", {
        id: `arrow-${kind}`, viewBox: "0 0 10 10", refX: 9, refY: 5,
        markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse",
      }, defs);
      el("path", { d: "M0,0 L10,5 L0,10 z", fill: colour }, marker);
    }
    container.appendChild(svg);
    draw(svg, g, 0, 0, statusOf, null, onSelect);
    return svg;
  }

  return { layout, render };
})();
