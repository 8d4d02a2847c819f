// Form building blocks shared by the Deploy and Edit dialogs: a labelled field with its
// own error line (linked by aria-describedby), editable rows of pairs (backend
// parameters, environment variables), and showing an API error next to its field.
import { h } from "./dom.js";

/** A labelled input with a hint and an error line; `key` is the API field it edits. */
export function field(prefix, key, label, input, hint) {
  const id = input.id || `${prefix}-${key.replace(/\W/g, "-")}`;
  input.id = id;
  const errorId = `${id}-error`;
  const hintId = hint ? `${id}-hint` : null;
  input.setAttribute("aria-describedby", [hintId, errorId].filter(Boolean).join(" "));
  const isCheck = input.type === "checkbox";
  return h("div", { class: `field${isCheck ? " check-field" : ""}` },
    isCheck ? h("label", { for: id, class: "check" }, input, ` ${label}`) : [h("label", { for: id }, label), input],
    hint ? h("p", { class: "hint", id: hintId }, hint) : null,
    h("p", { class: "field-error", id: errorId, dataset: { errorFor: key }, hidden: true }));
}

/** A group (fieldset) with a legend and an error line for the group as a whole. */
export function group(key, legend, ...children) {
  return h("fieldset", { class: "group" }, h("legend", {}, legend), children,
    h("p", { class: "field-error", dataset: { errorFor: key }, hidden: true, role: "alert" }));
}

export function clearErrors(form) {
  for (const el of form.querySelectorAll(".field-error")) { el.hidden = true; el.textContent = ""; }
  for (const el of form.querySelectorAll("[aria-invalid]")) el.removeAttribute("aria-invalid");
}

/** Show each message next to its field (a visible one when the key has several);
 * what matches no field goes to the form's own error line. Focus goes to the first. */
export function showErrors(form, fields) {
  let first = null;
  for (const [key, message] of Object.entries(fields)) {
    const candidates = [...form.querySelectorAll(`.field-error[data-error-for="${CSS.escape(key)}"]`)];
    let target = candidates.find((el) => isShown(el)) || candidates[0];
    if (!target) target = form.querySelector('.field-error[data-error-for=""]');
    const details = target.closest("details");
    if (details) details.open = true;
    if (target.textContent.includes(message)) continue;  // the same answer twice (two checks of one input)
    target.textContent = target.textContent ? `${target.textContent}; ${message}` : message;
    target.hidden = false;
    target.setAttribute("role", "alert");
    const input = target.parentElement.querySelector("input, select, textarea");
    if (input && target.dataset.errorFor) input.setAttribute("aria-invalid", "true");
    if (!first) first = input && target.dataset.errorFor ? input : target;
  }
  if (first) {
    if (first.matches("input, select, textarea")) first.focus(); else first.scrollIntoView({ block: "nearest" });
  }
}

function isShown(el) {
  for (let node = el.parentElement; node; node = node.parentElement) if (node.hidden) return false;
  return true;
}

/** Rows of two inputs (e.g. parameter and value) with Add and Remove buttons. */
export function pairRows({ prefix, key, legend, first, second, addLabel, hint, initial = [] }) {
  const list = h("div", { class: "pairs" });
  let n = 0;
  const add = (a = "", b = "") => {
    const i = ++n;
    const one = h("input", { type: "text", id: `${prefix}-${i}-a`, value: a, class: "pair-a", autocomplete: "off" });
    const two = h("input", { type: "text", id: `${prefix}-${i}-b`, value: b, class: "pair-b", autocomplete: "off" });
    const row = h("div", { class: "pair" },
      h("label", { for: one.id, class: "sr-only" }, `${first} ${i}`), one,
      h("label", { for: two.id, class: "sr-only" }, `${second} ${i}`), two,
      h("button", { type: "button", class: "icon", "aria-label": `Remove ${first.toLowerCase()} ${i}`,
        onclick: () => { row.remove(); } }, "×"));
    one.placeholder = first;
    two.placeholder = second;
    list.append(row);
    return one;
  };
  for (const [a, b] of initial) add(a, b);
  const addButton = h("button", { type: "button", class: "add", id: `${prefix}-add`, onclick: () => add().focus() }, addLabel);
  const el = group(key, legend, hint ? h("p", { class: "hint" }, hint) : null, list, addButton);
  const values = () => [...list.querySelectorAll(".pair")].map((row) =>
    [row.querySelector(".pair-a").value.trim(), row.querySelector(".pair-b").value])
    .filter(([a, b]) => a !== "" || b.trim() !== "");
  return { el, values, add };
}

/** Backend parameter rows as the API takes them: `--p=v`, or `--flag` when the value is empty. */
export function paramList(rows) {
  return rows.map(([p, v]) => (v.trim() === "" ? p : `${p}=${v.trim()}`));
}

/** `--p=v` strings back to rows. */
export function paramRows(params) {
  return params.map((p) => {
    const i = p.indexOf("=");
    return i > 0 && p.startsWith("-") ? [p.slice(0, i), p.slice(i + 1)] : [p, ""];
  });
}

/** A number when the text is an integer; otherwise the text, so the API says what is wrong. */
export function intOrText(text) {
  const t = text.trim();
  return /^-?\d+$/.test(t) ? Number(t) : t;
}
