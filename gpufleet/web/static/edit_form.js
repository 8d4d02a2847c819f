// Edit a deployment: Replicas (scale), backend version, backend parameters and
// environment. Running instances keep the configuration they were started with; new
// instances (scale up, replacements) get the new one, and the dialog offers to replace
// the running ones now: the server's rollout (`rollout: true`), each new one RUNNING before
// an old one goes, stopped with its reason if a new one fails.
import { ApiError, get, patch, post } from "./api.js";
import { bytes, h, notice } from "./dom.js";
import { openDialog } from "./dialogs.js";
import { clearErrors, field, intOrText, pairRows, paramList, paramRows, showErrors } from "./form.js";

const REPLACE_TIMEOUT_MS = 600_000;

function sameList(a, b) {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

function sameEnv(a, b) {
  const ka = Object.keys(a).sort();
  return sameList(ka, Object.keys(b).sort()) && ka.every((k) => a[k] === b[k]);
}

export function openEditDialog(dep, instances, { onSaved }) {
  if (!dep) return;
  const { body, close } = openDialog(`Edit ${dep.name}`, { wide: true });
  const replicas = h("input", { type: "number", id: "edit-replicas", value: String(dep.replicas), inputmode: "numeric" });
  const version = h("input", { type: "text", id: "edit-backend-version", value: dep.backend_version || "",
    autocomplete: "off", placeholder: "the worker's default" });
  const params = pairRows({ prefix: "edit-param", key: "backend_params", legend: "Backend parameters",
    first: "Parameter", second: "Value", addLabel: "Add parameter", initial: paramRows(dep.backend_params),
    hint: "A flag with its value (--ctx-size and 4096) or a flag alone (--flash-attn)." });
  const env = pairRows({ prefix: "edit-env", key: "env", legend: "Environment variables",
    first: "Name", second: "Value", addLabel: "Add variable", initial: Object.entries(dep.env) });
  const restartOnError = h("input", { type: "checkbox", id: "edit-restart-on-error", checked: dep.restart_on_error !== false });
  const running = instances.filter((i) => !i.deleting);
  const replace = h("input", { type: "checkbox", id: "edit-replace" });
  const formError = h("p", { class: "field-error form-error", dataset: { errorFor: "" }, hidden: true, id: "edit-form-error" });
  const save = h("button", { type: "submit", class: "primary", id: "edit-save" }, "Save");
  const form = h("form", { id: "edit-form", novalidate: true },
    h("p", { class: "callout", id: "edit-note" },
      `Running instances keep their configuration. New instances (scale up, a deleted instance's replacement) use the new one. ` +
      `Source: ${dep.source.local_path || dep.source.repo}; backend ${dep.backend}` +
      (dep.estimate && dep.estimate.known ? `; estimated ${bytes(dep.estimate.gpu_vram)} VRAM per replica.` : ".")),
    field("edit", "replicas", "Replicas", replicas, "0 stops the deployment; more adds instances, fewer removes some."),
    field("edit", "backend_version", "Backend version", version),
    params.el, env.el,
    field("edit", "restart_on_error", "Auto-restart on error (applies to running instances too)", restartOnError),
    field("edit", "replace", `Replace the ${running.length} running instance(s) now, one at a time (each new one running before an old one goes), so they use the new configuration`,
      replace),
    formError,
    h("div", { class: "buttons" }, h("button", { type: "button", onclick: close }, "Cancel"), save));
  body.append(form);
  replicas.focus();

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearErrors(form);
    const n = intOrText(replicas.value);
    // Checked here as the API's ScaleRequest does, before the edit is sent: the edit and the
    // scale are two requests, and a refused scale after a saved edit would be half-saved.
    if (!Number.isInteger(n) || n < 0 || n > 1000) {
      showErrors(form, { replicas: "Replicas must be a whole number from 0 to 1000." });
      return;
    }
    const edit = {};
    const newParams = paramList(params.values());
    const newEnv = Object.fromEntries(env.values());
    if (!sameList(newParams, dep.backend_params)) edit.backend_params = newParams;
    if (!sameEnv(newEnv, dep.env)) edit.env = newEnv;
    if (restartOnError.checked !== (dep.restart_on_error !== false)) edit.restart_on_error = restartOnError.checked;
    if ((version.value.trim() || null) !== (dep.backend_version || null)) {
      if (!version.value.trim()) { showErrors(form, { backend_version: "A backend version cannot be unset by an edit; give one." }); return; }
      edit.backend_version = version.value.trim();
    }
    save.disabled = true;
    const name = encodeURIComponent(dep.name);
    try {
      const changed = Object.keys(edit).length > 0;
      if (replace.checked) edit.rollout = true;
      if (changed || replace.checked) await patch(`/v1/deployments/${name}`, edit);
      if (n !== dep.replicas) await post(`/v1/deployments/${name}/scale`, { replicas: n });
      close();
      notice(`${dep.name}: ${[changed ? "configuration saved" : "", n !== dep.replicas ? `scaling to ${n}` : ""].filter(Boolean).join(", ") || "nothing changed"}`);
      if (onSaved) onSaved();
      if (replace.checked) followRollout(dep.name, onSaved);
    } catch (exc) {
      showErrors(form, exc.fields || { "": exc.message });
    } finally {
      save.disabled = false;
    }
  });
}

/** Say how the server's rollout goes until it is done or stopped. */
async function followRollout(name, onProgress) {
  const path = `/v1/deployments/${encodeURIComponent(name)}`;
  const deadline = Date.now() + REPLACE_TIMEOUT_MS;
  let last = "";
  try {
    for (;;) {
      await new Promise((r) => setTimeout(r, 1000));
      if (onProgress) onProgress();
      const d = await get(path);
      if (d.rollout_status && d.rollout_status !== last && d.rolling_out) notice(d.rollout_status);
      last = d.rollout_status;
      if (!d.rolling_out) {
        const stopped = (d.rollout_status || "").startsWith("rollout stopped");
        notice(stopped ? d.rollout_status : `${name}: every instance now runs the new configuration`, stopped ? "error" : undefined);
        return;
      }
      if (Date.now() > deadline) throw new ApiError(0, `the rollout of ${name} still runs after 10 minutes: ${d.rollout_status}`, {});
    }
  } catch (exc) {
    notice(exc.detail || exc.message, "error");
  }
}
