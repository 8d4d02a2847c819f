// The Deployments page: every deployment with its replicas and live instance states,
// Deploy Model, and per deployment Edit, Stop, Start, Delete; `›` expands the
// instances, each with View Logs and Delete. Rows are updated in place on each poll
// (keyed by name and id), so focus, expansion and selection survive the refresh.
import { del, get, post } from "./api.js";
import { confirmDialog } from "./dialogs.js";
import { openDeployDialog } from "./deploy_form.js";
import { openEditDialog } from "./edit_form.js";
import { ago, h, keepOrder, notice, setText } from "./dom.js";
import { openLogs } from "./logs.js";
import { poll } from "./poll.js";

const COLUMNS = ["", "Name", "Source", "Category", "Backend", "Ready / desired", "State", "Instances", "Actions"];
const INSTANCE_COLUMNS = ["ID", "State", "Message", "Worker", "GPUs", "Port", "Restarts", "Created", "Actions"];
const POLL_MS = 1500;

export function describeSource(source) {
  if (source.kind === "local_path") return source.local_path;
  const prefix = source.kind === "huggingface" ? "hf" : "modelscope";
  return `${prefix}:${source.repo}${source.file ? `/${source.file}` : ""}`;
}

export function stateText(inst) {
  const m = /(\d+(?:\.\d+)?)\s*%/.exec(inst.state_message || "");
  return inst.state === "DOWNLOADING" && m ? `DOWNLOADING ${m[1]} %` : inst.state;
}

const cssState = (s) => `state state-${String(s).split(" ")[0].toLowerCase()}`;

export function showDeployments(main) {
  const bodies = new Map();  // name -> {tbody, cells, instances: Map}
  let latest = { deployments: [], instances: [] };

  const status = h("p", { id: "list-status", class: "list-status", role: "status" }, "Loading…");
  const deployButton = h("button", { type: "button", id: "deploy-model", class: "primary",
    onclick: () => openDeployDialog({ onDeployed: () => refresh() }) }, "Deploy Model");
  const table = h("table", { class: "deployments responsive", id: "deployments" },
    h("caption", { class: "sr-only" }, "Deployments, with their instances"),
    h("thead", {}, h("tr", {}, COLUMNS.map((c, i) =>
      h("th", { scope: "col" }, i === 0 ? h("span", { class: "sr-only" }, "Expand") : c)))));
  const empty = h("p", { class: "empty", hidden: true }, "No deployments yet. Deploy Model starts one.");
  main.append(h("section", { "aria-labelledby": "page-title" },
    h("div", { class: "page-head" }, h("h1", { id: "page-title" }, "Deployments"), deployButton),
    status, table, empty));

  async function refresh() {
    try {
      const [deployments, instances] = await Promise.all([get("/v1/deployments"), get("/v1/instances")]);
      latest = { deployments, instances };
      render();
      setText(status, `${deployments.length} deployment(s) · updated ${new Date().toLocaleTimeString()}`);
      status.classList.remove("error");
    } catch (exc) {
      setText(status, `Cannot refresh: ${exc.detail || exc.message}`);
      status.classList.add("error");
    }
  }

  function render() {
    const names = new Set(latest.deployments.map((d) => d.name));
    for (const [name, entry] of bodies) {
      if (!names.has(name)) { entry.tbody.remove(); bodies.delete(name); }
    }
    for (const dep of latest.deployments) {
      const insts = latest.instances.filter((i) => i.deployment === dep.name).sort((a, b) => a.id - b.id);
      let entry = bodies.get(dep.name);
      if (!entry) { entry = createBody(dep); bodies.set(dep.name, entry); }
      updateBody(entry, dep, insts);
    }
    keepOrder(table, latest.deployments.map((d) => bodies.get(d.name).tbody), table.tHead);
    empty.hidden = latest.deployments.length > 0;
  }

  function createBody(dep) {
    const name = dep.name;
    const detailId = `instances-${name}`;
    const toggle = h("button", { type: "button", class: "icon expand", "aria-expanded": "false",
      "aria-controls": detailId, "aria-label": `Show instances of ${name}`, dataset: { action: "expand" } }, "›");
    const cells = {
      source: h("td", { "data-label": "Source", class: "source" }),
      category: h("td", { "data-label": "Category" }),
      backend: h("td", { "data-label": "Backend" }),
      replicas: h("td", { "data-label": "Ready / desired", class: "replicas" }),
      state: h("span", {}),
      chips: h("td", { "data-label": "Instances", class: "chips" }),
    };
    const stop = h("button", { type: "button", dataset: { action: "stop" } }, "Stop");
    const start = h("button", { type: "button", dataset: { action: "start" } }, "Start");
    const actions = h("td", { "data-label": "Actions", class: "actions" },
      h("button", { type: "button", dataset: { action: "edit" },
        onclick: () => openEditDialog(current(name), instancesOf(name), { onSaved: refresh }) }, "Edit"),
      stop, start,
      h("button", { type: "button", class: "danger", dataset: { action: "delete" }, onclick: () => removeDeployment(name) },
        "Delete"));
    stop.addEventListener("click", () => stopDeployment(name));
    start.addEventListener("click", () => startDeployment(name));
    const instBody = h("tbody", {});
    const detail = h("tr", { class: "detail", id: detailId, hidden: true },
      h("td", { colspan: COLUMNS.length },
        h("table", { class: "instances responsive", "aria-label": `Instances of ${name}` },
          h("thead", {}, h("tr", {}, INSTANCE_COLUMNS.map((c) => h("th", { scope: "col" }, c)))), instBody),
        h("p", { class: "empty no-instances", hidden: true }, "No instances.")));
    toggle.addEventListener("click", () => {
      const open = toggle.getAttribute("aria-expanded") !== "true";
      toggle.setAttribute("aria-expanded", String(open));
      toggle.setAttribute("aria-label", `${open ? "Hide" : "Show"} instances of ${name}`);
      detail.hidden = !open;
    });
    const row = h("tr", { class: "deployment" },
      h("td", { class: "expand-cell" }, toggle),
      h("th", { scope: "row", "data-label": "Name", class: "name" }, name),
      cells.source, cells.category, cells.backend, cells.replicas,
      h("td", { "data-label": "State" }, cells.state), cells.chips, actions);
    const tbody = h("tbody", { class: "deployment-group", dataset: { deployment: name } }, row, detail);
    return { tbody, cells, stop, start, instBody, detail, instances: new Map() };
  }

  function updateBody(entry, dep, insts) {
    const { cells } = entry;
    setText(cells.source, describeSource(dep.source));
    const detected = dep.metadata ? dep.metadata.category : null;
    setText(cells.category, dep.category ? `${dep.category} (set)` : (detected || "-"));
    setText(cells.backend, dep.backend_version ? `${dep.backend} ${dep.backend_version}` : dep.backend);
    setText(cells.replicas, `${dep.ready_replicas} / ${dep.replicas}`);
    setText(cells.state, dep.state);
    cells.state.className = cssState(dep.state);
    const chipText = insts.map((i) => `${i.id}: ${stateText(i)}${i.deleting ? " (deleting)" : ""}`).join(" · ");
    setText(cells.chips, chipText || "-");
    entry.stop.hidden = dep.replicas === 0;
    entry.start.hidden = dep.replicas !== 0;
    updateInstances(entry, insts);
  }

  function updateInstances(entry, insts) {
    const ids = new Set(insts.map((i) => i.id));
    for (const [id, row] of entry.instances) if (!ids.has(id)) { row.tr.remove(); entry.instances.delete(id); }
    for (const inst of insts) {
      let row = entry.instances.get(inst.id);
      if (!row) { row = createInstanceRow(inst); entry.instances.set(inst.id, row); }
      const c = row.cells;
      setText(c.state, stateText(inst) + (inst.deleting ? " (deleting)" : ""));
      c.state.className = cssState(inst.state);
      setText(c.message, inst.state_message || "");
      setText(c.worker, inst.worker || "-");
      setText(c.gpus, inst.gpu_indexes.length ? inst.gpu_indexes.join(", ") : (inst.worker ? "CPU" : "-"));
      setText(c.port, inst.port ?? "-");
      setText(c.restarts, restartsNote(inst));
      setText(c.created, ago(inst.created_at));
      row.logs.disabled = !inst.worker;
    }
    keepOrder(entry.instBody, insts.map((i) => entry.instances.get(i.id).tr));
    entry.detail.querySelector(".no-instances").hidden = insts.length > 0;
  }

  function createInstanceRow(inst) {
    const cells = {
      state: h("span", {}), message: h("td", { "data-label": "Message", class: "message" }),
      worker: h("td", { "data-label": "Worker" }), gpus: h("td", { "data-label": "GPUs" }),
      port: h("td", { "data-label": "Port" }), restarts: h("td", { "data-label": "Restarts" }),
      created: h("td", { "data-label": "Created" }),
    };
    const logs = h("button", { type: "button", dataset: { action: "logs" },
      onclick: () => openLogs(inst.id, inst.deployment) }, "View Logs");
    const remove = h("button", { type: "button", class: "danger", dataset: { action: "delete-instance" },
      onclick: () => removeInstance(inst.id, inst.deployment) }, "Delete");
    const tr = h("tr", { class: "instance", dataset: { instance: inst.id } },
      h("th", { scope: "row", "data-label": "ID" }, inst.id),
      h("td", { "data-label": "State" }, cells.state), cells.message, cells.worker, cells.gpus, cells.port,
      cells.restarts, cells.created,
      h("td", { "data-label": "Actions", class: "actions" }, logs, remove));
    return { tr, cells, logs };
  }

  const current = (name) => latest.deployments.find((d) => d.name === name);
  const instancesOf = (name) => latest.instances.filter((i) => i.deployment === name);

  async function run(action, successText) {
    try {
      const op = await action();
      notice(successText + (op && op.detail ? ` (${op.detail})` : ""));
      await refresh();
    } catch (exc) {
      notice(exc.detail || exc.message, "error");
    }
  }

  async function stopDeployment(name) {
    const n = current(name)?.replicas ?? 0;
    const ok = await confirmDialog({ title: `Stop ${name}?`, confirmLabel: "Stop",
      message: `Its ${n} instance(s) and their processes go and their memory is released. ` +
        "The deployment stays; Start brings one replica back." });
    if (ok) await run(() => post(`/v1/deployments/${encodeURIComponent(name)}/scale`, { replicas: 0 }), `stopping ${name}`);
  }

  async function startDeployment(name) {
    await run(() => post(`/v1/deployments/${encodeURIComponent(name)}/scale`, { replicas: 1 }),
      `starting ${name} with 1 replica`);
  }

  async function removeDeployment(name) {
    const ok = await confirmDialog({ title: `Delete ${name}?`, confirmLabel: "Delete",
      message: "The deployment, its instances and their processes are removed. This cannot be undone." });
    if (ok) await run(() => del(`/v1/deployments/${encodeURIComponent(name)}`), `deleting ${name}`);
  }

  async function removeInstance(id, name) {
    const ok = await confirmDialog({ title: `Delete instance ${id}?`, confirmLabel: "Delete instance",
      message: `Instance ${id} of ${name} and its process go; a new instance replaces it to keep the replica count.` });
    if (ok) await run(() => del(`/v1/instances/${id}`), `deleting instance ${id}`);
  }

  return poll(refresh, POLL_MS);
}

/** The Restarts cell, as `gpufleet ps` says it: "3, crash-looping, restarting in 40 s, attempt 4". */
export function restartsNote(inst, now = Date.now()) {
  const parts = [String(inst.restart_count)];
  const failing = ["ERROR", "STARTING", "DOWNLOADING"].includes(inst.state);
  if (inst.crash_looping && failing) parts.push("crash-looping");
  if (inst.state === "ERROR" && inst.next_restart_at) {
    const wait = Math.max(0, (Date.parse(inst.next_restart_at.endsWith("Z") || /[+-]\d\d:\d\d$/.test(inst.next_restart_at)
      ? inst.next_restart_at : `${inst.next_restart_at}Z`) - now) / 1000);
    parts.push(wait >= 0.5 ? `restarting in ${Math.round(wait)} s, attempt ${inst.restart_count + 1}`
      : `restarting now, attempt ${inst.restart_count + 1}`);
  }
  return parts.join(", ");
}
