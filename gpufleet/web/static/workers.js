// The Workers page: each machine with its GPUs (memory claimed by placed instances vs
// total), RAM, labels (editable), readiness and the engines it can run. Claims come from
// the cluster snapshot, the same ledger placement uses (`gpufleet cluster snapshot`).
import { ApiError, get, patch } from "./api.js";
import { openDialog } from "./dialogs.js";
import { ago, bytes, fill, h, setText } from "./dom.js";
import { clearErrors, pairRows, showErrors } from "./form.js";
import { poll } from "./poll.js";

const POLL_MS = 3000;

/** bytes claimed per worker: {worker: {ram, gpus: {index: bytes}}}, parts of distributed instances included */
export function claimsByWorker(snapshot) {
  const out = {};
  const add = (worker, ram, vram) => {
    const w = (out[worker] ||= { ram: 0, gpus: {} });
    w.ram += ram || 0;
    for (const [index, n] of Object.entries(vram || {})) w.gpus[index] = (w.gpus[index] || 0) + n;
  };
  for (const c of snapshot.claims || []) {
    add(c.worker, c.ram_claim, c.vram_claim);
    for (const p of c.parts || []) add(p.worker, p.ram_claim, p.vram_claim);
  }
  return out;
}

function meter(used, total, label) {
  const pct = total ? Math.min(100, Math.round((used / total) * 100)) : 0;
  return h("div", { class: "meter-line" },
    h("span", { class: "meter-label" }, label),
    h("meter", { min: "0", max: String(total || 1), value: String(used), "aria-label": label }),
    h("span", { class: "meter-text" }, `${bytes(used)} of ${bytes(total)} claimed (${pct} %)`));
}

export function showWorkers(main) {
  const status = h("p", { class: "list-status", role: "status" }, "Loading…");
  const list = h("div", { class: "workers", id: "workers" });
  main.append(h("section", { "aria-labelledby": "page-title" },
    h("div", { class: "page-head" }, h("h1", { id: "page-title" }, "Workers")),
    h("p", { class: "hint" }, "A node brings its own labels (",
      h("code", {}, "gpufleet node --label key=value"), "); labels set here are kept over them across node restarts. ",
      "Worker selectors in a deployment's Advanced section match them."),
    status, list));

  async function refresh() {
    try {
      const [workers, snapshot] = await Promise.all([get("/v1/workers"), get("/v1/cluster/snapshot")]);
      render(workers, claimsByWorker(snapshot));
      setText(status, `${workers.length} worker(s), ${workers.filter((w) => w.ready).length} ready · updated ${new Date().toLocaleTimeString()}`);
      status.classList.remove("error");
    } catch (exc) {
      setText(status, `Cannot refresh: ${exc.detail || exc.message}`);
      status.classList.add("error");
    }
  }

  function render(workers, claims) {
    // Rebuilding the cards keeps the focus on the control that had it (an Edit labels button).
    const focused = document.activeElement && list.contains(document.activeElement) ? document.activeElement.id : null;
    fill(list, workers.map((w) => card(w, claims[w.name] || { ram: 0, gpus: {} })));
    if (focused) document.getElementById(focused)?.focus();
    if (!workers.length) list.append(h("p", { class: "empty" }, "No workers. Start one with `gpufleet node`."));
  }

  function card(w, claim) {
    const gpus = w.gpus.length
      ? h("ul", { class: "gpus" }, w.gpus.map((g) => h("li", {},
        h("div", {}, `GPU ${g.index}: ${g.name}${g.virtual ? " (declared)" : ""}, ${g.vendor}`),
        meter(claim.gpus[g.index] || 0, g.memory_total, `VRAM of GPU ${g.index} on ${w.name}`))))
      : h("p", {}, "No GPUs: models run on the CPU here.");
    const engines = w.engines.length
      ? h("ul", { class: "engines" }, w.engines.map((e) =>
        h("li", {}, `${e.engine} ${e.version}${e.default ? " (default)" : ""} — ${e.devices.join(", ") || "no devices"}`)))
      : h("p", {}, "No engines reported.");
    const labels = Object.entries(w.labels);
    return h("article", { class: "worker card", "aria-labelledby": `worker-${w.name}`, dataset: { worker: w.name } },
      h("header", {},
        h("h2", { id: `worker-${w.name}` }, w.name),
        h("span", { class: `state ${w.ready ? "state-running" : "state-error"}` }, w.ready ? "READY" : "NOT READY")),
      h("dl", {},
        h("dt", {}, "Address"), h("dd", {}, w.address),
        h("dt", {}, "Last heartbeat"), h("dd", {}, ago(w.last_heartbeat)),
        h("dt", {}, "CPUs"), h("dd", {}, w.cpu_count),
        h("dt", {}, "RAM"), h("dd", {}, meter(claim.ram, w.memory_total, `RAM on ${w.name}`),
          w.ram_reserved ? ` ${bytes(w.ram_reserved)} reserved` : ""),
        h("dt", {}, "Labels"), h("dd", { class: "labels" },
          labels.length ? labels.map(([k, v]) => h("span", { class: "chip" }, `${k}=${v}`)) : "none",
          h("button", { type: "button", class: "link", id: `labels-${w.name}`,
            onclick: () => openLabelsDialog(w, refresh) }, "Edit labels")),
        h("dt", {}, "Runtime"), h("dd", {}, w.runtime),
        h("dt", {}, "Can run"), h("dd", {}, engines,
          w.capabilities.length ? h("p", {}, `Capabilities: ${w.capabilities.join(", ")}`) : "")),
      h("h3", {}, "GPUs"), gpus);
  }

  return poll(refresh, POLL_MS);
}

/** The operator's labels of a worker (`PATCH /v1/workers/NAME`); the node's own are shown. */
export function openLabelsDialog(w, onSaved) {
  const { body, close } = openDialog(`Labels of ${w.name}`);
  const own = Object.entries(w.labels).filter(([k]) => !(k in w.operator_labels));
  const rows = pairRows({ prefix: "labels", key: "labels", legend: "Labels set here", first: "Key", second: "Value",
    addLabel: "Add label", initial: Object.entries(w.operator_labels),
    hint: "They win over the node's labels of the same key and survive node restarts." });
  const formError = h("p", { class: "field-error form-error", dataset: { errorFor: "" }, hidden: true });
  const form = h("form", { id: "labels-form", novalidate: true },
    h("p", {}, own.length ? `From the node: ${own.map(([k, v]) => `${k}=${v}`).join(", ")}` : "The node sets no labels."),
    rows.el, formError,
    h("div", { class: "buttons" }, h("button", { type: "button", onclick: close }, "Cancel"),
      h("button", { type: "submit", class: "primary", id: "labels-save" }, "Save")));
  body.append(form);
  (form.querySelector(".pair-a") || form.querySelector("#labels-add")).focus();
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearErrors(form);
    const labels = Object.fromEntries(rows.values().map(([k, v]) => [k, v.trim()]));
    try {
      await patch(`/v1/workers/${encodeURIComponent(w.name)}`, { labels });
      close();
      onSaved();
    } catch (exc) {
      if (!(exc instanceof ApiError)) throw exc;
      showErrors(form, Object.keys(exc.fields).length ? exc.fields : { "": exc.detail });
    }
  });
}
