// Modal dialogs on the native <dialog> element: it traps focus, closes on Escape and
// is announced as a dialog; focus goes back to what opened it when it closes.
import { h } from "./dom.js";

let counter = 0;

/** A modal dialog with a heading; returns {dialog, body, close}. */
export function openDialog(title, { wide = false, onClose } = {}) {
  const opener = document.activeElement;
  const id = `dialog-title-${++counter}`;
  const body = h("div", { class: "dialog-body" });
  const closeButton = h("button", { type: "button", class: "icon close", "aria-label": "Close" }, "×");
  const dialog = h("dialog", { class: wide ? "wide" : "", "aria-labelledby": id },
    h("div", { class: "dialog-head" }, h("h2", { id }, title), closeButton), body);
  const close = () => { if (dialog.open) dialog.close(); };
  closeButton.addEventListener("click", close);
  dialog.addEventListener("close", () => {
    dialog.remove();
    if (onClose) onClose();
    if (opener && opener.isConnected && typeof opener.focus === "function") opener.focus();
  });
  document.body.append(dialog);
  dialog.showModal();
  return { dialog, body, close };
}

/** Ask before something that cannot be undone; resolves true when confirmed. */
export function confirmDialog({ title, message, confirmLabel, danger = true }) {
  return new Promise((resolve) => {
    let answer = false;
    const { body, close, dialog } = openDialog(title, { onClose: () => resolve(answer) });
    dialog.classList.add("confirm");
    const ok = h("button", { type: "button", class: danger ? "danger" : "primary", onclick: () => { answer = true; close(); } },
      confirmLabel);
    const cancel = h("button", { type: "button", onclick: close }, "Cancel");
    body.append(h("p", {}, message), h("div", { class: "buttons" }, cancel, ok));
    cancel.focus();  // the safe choice has the focus: Enter does not delete by accident
  });
}
