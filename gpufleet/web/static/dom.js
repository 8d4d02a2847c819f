// Small DOM helpers: build elements from data with textContent (never innerHTML), so
// model names, paths and messages from the API cannot inject markup.

/** h("button", {class: "x", onclick: fn, "aria-label": "..."}, child, ...) */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") el.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key in el && typeof value !== "string") el[key] = value;
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  append(el, children);
  return el;
}

export function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

/** Replace an element's children. */
export function fill(el, ...children) {
  el.replaceChildren();
  return append(el, children);
}

/** Set text only when it changed, so polling does not disturb selection or screen readers. */
export function setText(el, text) {
  const value = String(text ?? "");
  if (el.textContent !== value) el.textContent = value;
}

export function bytes(n) {
  if (n === null || n === undefined) return "-";
  for (const [unit, scale] of [["GiB", 2 ** 30], ["MiB", 2 ** 20], ["KiB", 2 ** 10]]) {
    if (n >= scale) return `${(n / scale).toFixed(2)} ${unit}`;
  }
  return `${n} B`;
}

export function ago(iso) {
  if (!iso) return "-";
  const then = new Date(iso.endsWith("Z") || /[+-]\d\d:\d\d$/.test(iso) ? iso : `${iso}Z`);
  const s = Math.max(0, Math.round((Date.now() - then.getTime()) / 1000));
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return then.toLocaleString();
}

/** A <p> for a short status line, announced politely to screen readers. */
export function notice(text, kind = "info") {
  const region = document.getElementById("notices");
  const item = h("p", { class: `notice ${kind}`, role: kind === "error" ? "alert" : "status" }, text);
  region.append(item);
  setTimeout(() => item.remove(), kind === "error" ? 15000 : 8000);
  return item;
}

/** Put `nodes` in this order right after `after` (or first), moving only those out of
 * place: re-inserting a node that holds the focus would drop the focus. */
export function keepOrder(parent, nodes, after = null) {
  let ref = after ? after.nextSibling : parent.firstChild;
  for (const node of nodes) {
    if (node === ref) ref = ref.nextSibling;
    else parent.insertBefore(node, ref);
  }
}
