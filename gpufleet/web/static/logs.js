// View Logs: an instance's log through the server (which relays the node's), following
// live like `gpufleet logs --follow`: download progress, the backend's start-up lines
// and its requests appear as they are written. Download saves the whole log.
import { h, setText } from "./dom.js";
import { openDialog } from "./dialogs.js";
import { authFetch, errorFrom } from "./api.js";

const TAIL = 2000;              // lines shown when opening
const MAX_CHARS = 2_000_000;    // the view keeps the end of very long logs

export function openLogs(instanceId, deployment) {
  let controller = null;
  const { body } = openDialog(`Logs of instance ${instanceId} (${deployment})`, {
    wide: true, onClose: () => controller && controller.abort(),
  });
  const follow = h("input", { type: "checkbox", id: "logs-follow", checked: true });
  const status = h("p", { class: "log-status", role: "status", id: "logs-status" }, "Connecting…");
  const pre = h("pre", { class: "log", id: "log-text", tabindex: "0", "aria-label": `Log of instance ${instanceId}` });
  const download = h("button", { type: "button", id: "logs-download" }, "Download");
  body.append(
    h("div", { class: "log-controls" },
      h("label", { for: "logs-follow", class: "check" }, follow, " Follow"), download, status),
    pre);

  async function stream() {
    if (controller) controller.abort();
    controller = new AbortController();
    const params = new URLSearchParams({ tail: String(TAIL), follow: String(follow.checked) });
    pre.textContent = "";
    try {
      const resp = await authFetch(`/v1/instances/${instanceId}/logs?${params}`, { signal: controller.signal });
      if (!resp.ok) {
        const text = await resp.text();
        let data = text;
        try { data = JSON.parse(text); } catch { /* plain text */ }
        throw errorFrom(resp.status, data);
      }
      setText(status, follow.checked ? "Following" : "Complete");
      const reader = resp.body.getReader();
      const decoder = new TextDecoder();
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        appendText(decoder.decode(value, { stream: true }));
      }
      appendText(decoder.decode());
      setText(status, follow.checked ? "The log stream ended (the instance stopped or its worker went away)" : "Complete");
    } catch (exc) {
      if (exc.name === "AbortError") return;
      setText(status, exc.detail || exc.message);
      status.classList.add("error");
    }
  }

  function appendText(text) {
    if (!text) return;
    const atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 20;
    let all = pre.textContent + text;
    if (all.length > MAX_CHARS) all = all.slice(all.length - MAX_CHARS);
    pre.textContent = all;
    if (atBottom) pre.scrollTop = pre.scrollHeight;
  }

  follow.addEventListener("change", stream);
  download.addEventListener("click", async () => {
    try {
      const resp = await authFetch(`/v1/instances/${instanceId}/logs?follow=false`);
      if (!resp.ok) throw errorFrom(resp.status, await resp.json().catch(() => null));
      const url = URL.createObjectURL(await resp.blob());
      const a = h("a", { href: url, download: `${deployment}-instance-${instanceId}.log` });
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 10000);
    } catch (exc) {
      setText(status, `Download failed: ${exc.detail || exc.message}`);
      status.classList.add("error");
    }
  });
  stream();
}
