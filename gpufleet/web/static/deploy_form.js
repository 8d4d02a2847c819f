// Deploy Model: a model from Hugging Face or ModelScope (search, GGUF filter, the
// repository's Available Files by quantization with the default preselected) or from a
// local path; Name and Replicas; the Advanced section with everything the API takes;
// a compatibility check (the dry-run placement of `gpufleet plan`); Save. Every error
// the API returns is shown next to its field, and nothing is recorded unless Save
// succeeds as a whole (the API validates the spec before writing).
import { get, post } from "./api.js";
import { BACKENDS, CATEGORIES, KV_CACHE_BACKENDS, STRATEGIES } from "./constants.js";
import { bytes, fill, h, notice, setText } from "./dom.js";
import { openDialog } from "./dialogs.js";
import { clearErrors, field, group, intOrText, pairRows, paramList, showErrors } from "./form.js";
import { planView } from "./plan_view.js";

const SEARCH_DELAY_MS = 300;
const HUBS = { huggingface: "Hugging Face", modelscope: "ModelScope", local_path: "Local Path" };

/** A deployment name from a repository or file name: lowercase letters, digits and '-'. */
export function suggestName(text) {
  const base = String(text).split("/").pop().replace(/\.gguf$/i, "").replace(/[-_.]gguf$/i, "");
  return base.toLowerCase().replace(/[^a-z0-9-]+/g, "-").replace(/-+/g, "-").replace(/^-|-$/g, "").slice(0, 63)
    .replace(/-$/, "");
}

export function openDeployDialog({ onDeployed }) {
  const { body, close } = openDialog("Deploy Model", { wide: true });
  const state = {
    kind: "huggingface", repo: null, files: null, inspected: null, unseenPath: null, confirmedUnseen: null,
    nameEdited: false, searchTimer: null, searchSeq: 0, workers: [],
  };

  // ---- source
  const kindRadios = Object.entries(HUBS).map(([kind, label]) => {
    const id = `deploy-kind-${kind}`;
    return h("label", { for: id, class: "tab" },
      h("input", { type: "radio", name: "deploy-kind", id, value: kind, checked: kind === state.kind,
        onchange: () => setKind(kind) }), ` ${label}`);
  });
  const search = h("input", { type: "search", id: "deploy-search", autocomplete: "off", placeholder: "e.g. qwen3" });
  const gguf = h("input", { type: "checkbox", id: "deploy-gguf", checked: true });
  const results = h("ul", { class: "results", id: "deploy-results", "aria-label": "Search results" });
  const resultsStatus = h("p", { class: "hint", role: "status", id: "deploy-results-status" });
  const repoLine = h("p", { class: "repo-line", id: "deploy-repo" }, "No repository chosen.");
  const filesBox = h("div", { class: "files", id: "deploy-files" });
  const revision = h("input", { type: "text", id: "deploy-revision", autocomplete: "off", placeholder: "main" });
  const hubSection = h("div", { class: "hub-section" },
    h("div", { class: "row" },
      field("deploy", "search", "Search models", search),
      field("deploy", "gguf", "GGUF only", gguf)),
    resultsStatus, results,
    group("source", "Available Files", repoLine, filesBox),
    field("deploy", "source.revision", "Revision", revision, "Branch, tag or commit; empty: the default branch."));
  const path = h("input", { type: "text", id: "deploy-path", autocomplete: "off", placeholder: "/models/model.gguf" });
  const localSection = h("div", { class: "local-section", hidden: true },
    field("deploy", "source", "Model Path", path, "A GGUF file or model directory as the workers see it."));
  const modelInfo = h("p", { class: "model-info", id: "deploy-model-info", role: "status" });

  // ---- name, replicas
  const name = h("input", { type: "text", id: "deploy-name", autocomplete: "off", required: true });
  const replicas = h("input", { type: "number", id: "deploy-replicas", value: "1", inputmode: "numeric" });
  name.addEventListener("input", () => { state.nameEdited = name.value.trim() !== ""; });

  // ---- advanced
  const category = h("select", { id: "deploy-category" }, h("option", { value: "" }, "Auto"),
    CATEGORIES.map((c) => h("option", { value: c }, c)));
  const backend = h("select", { id: "deploy-backend" }, h("option", { value: "" }, "Auto"),
    BACKENDS.map((b) => h("option", { value: b }, b)));
  const backendVersion = h("input", { type: "text", id: "deploy-backend-version", autocomplete: "off",
    placeholder: "the worker's default" });
  const params = pairRows({ prefix: "deploy-param", key: "backend_params", legend: "Backend parameters",
    first: "Parameter", second: "Value", addLabel: "Add parameter",
    hint: "A flag with its value (--ctx-size and 4096, or --ctx-size=4096 alone) or a flag alone (--flash-attn)." });
  const env = pairRows({ prefix: "deploy-env", key: "env", legend: "Environment variables",
    first: "Name", second: "Value", addLabel: "Add variable" });
  const scheduleRadios = ["auto", "manual"].map((v) => h("label", { class: "tab", for: `deploy-schedule-${v}` },
    h("input", { type: "radio", name: "deploy-schedule", id: `deploy-schedule-${v}`, value: v, checked: v === "auto",
      onchange: () => setSchedule(v) }), v === "auto" ? " Auto" : " Manual"));
  const strategy = h("select", { id: "deploy-strategy" }, STRATEGIES.map((s) => h("option", { value: s }, s)));
  const selector = h("textarea", { id: "deploy-selector", rows: "2", placeholder: "gpu=a100\nzone in (a,b)" });
  const autoBox = h("div", { class: "schedule-auto" },
    field("deploy", "placement.strategy", "Placement strategy", strategy,
      "spread: fill the emptiest workers first; binpack: the fullest that still fit."),
    field("deploy", "placement.worker_selector", "Worker selector", selector,
      "Label expressions, one a line, all must match: key=value, key!=value, key in (a,b), key notin (a,b), key, !key."));
  const gpuList = h("div", { class: "gpu-list", id: "deploy-gpus" }, "Loading workers…");
  const gpusPerReplica = h("input", { type: "number", id: "deploy-gpus-per-replica", inputmode: "numeric" });
  const manualBox = h("div", { class: "schedule-manual", hidden: true },
    group("placement.gpu_selector", "GPUs", gpuList),
    field("deploy", "placement.gpus_per_replica", "GPUs per replica", gpusPerReplica, "Empty: as many as the model needs."));
  const cpuOffloading = h("input", { type: "checkbox", id: "deploy-cpu-offloading" });
  const distributed = h("input", { type: "checkbox", id: "deploy-distributed" });
  const kvGib = h("input", { type: "number", id: "deploy-kv-gib", step: "any", inputmode: "decimal" });
  const kvChunk = h("input", { type: "number", id: "deploy-kv-chunk", placeholder: "256", inputmode: "numeric" });
  const kvRemote = h("input", { type: "text", id: "deploy-kv-remote", placeholder: "redis://host:6379", autocomplete: "off" });
  const kvHint = h("p", { class: "hint", id: "deploy-kv-hint" });
  const kvBox = group("kv_cache", "Extended KV cache", kvHint,
    field("deploy", "kv_cache.cpu_gib", "Max CPU cache (GiB)", kvGib),
    field("deploy", "kv_cache.chunk_size", "Chunk size (tokens)", kvChunk),
    field("deploy", "kv_cache.remote_url", "Remote URL", kvRemote));
  const image = h("input", { type: "text", id: "deploy-image", autocomplete: "off", placeholder: "the engine's default image" });
  const restartOnError = h("input", { type: "checkbox", id: "deploy-restart-on-error", checked: true });
  const advanced = h("details", { class: "advanced", id: "deploy-advanced" }, h("summary", {}, "Advanced"),
    h("div", { class: "row" },
      field("deploy", "category", "Category", category, "Detected from the model; override it here."),
      field("deploy", "backend", "Backend", backend, "Chosen from the model's format and category."),
      field("deploy", "backend_version", "Backend version", backendVersion)),
    params.el, env.el,
    group("placement", "Schedule", h("div", { class: "tabs" }, scheduleRadios), autoBox, manualBox),
    field("deploy", "placement.cpu_offloading", "CPU offloading (layers that do not fit run on the CPU)", cpuOffloading),
    field("deploy", "placement.distributed", "Distributed inference across workers (llama.cpp RPC)", distributed),
    kvBox,
    field("deploy", "image", "Container image", image, "Only for nodes with the docker runtime."),
    field("deploy", "restart_on_error", "Auto-restart on error", restartOnError,
      "A failed instance is restarted at once, then after 10 s, 20 s, 40 s … at most 5 minutes apart; " +
      "the count resets after 10 minutes of healthy running."));

  // ---- buttons, results
  const checkResult = h("div", { class: "check-result", id: "deploy-check-result", "aria-live": "polite" });
  const formError = h("p", { class: "field-error form-error", dataset: { errorFor: "" }, hidden: true, id: "deploy-form-error" });
  const checkButton = h("button", { type: "button", id: "deploy-check" }, "Check compatibility");
  const saveButton = h("button", { type: "submit", id: "deploy-save", class: "primary" }, "Save");
  const form = h("form", { id: "deploy-form", novalidate: true },
    group("source.kind", "Source", h("div", { class: "tabs" }, kindRadios)),
    hubSection, localSection, modelInfo,
    h("div", { class: "row" }, field("deploy", "name", "Name", name,
      "Lowercase letters, digits and '-'."), field("deploy", "replicas", "Replicas", replicas)),
    advanced, checkResult, formError,
    h("div", { class: "buttons" }, checkButton, h("button", { type: "button", onclick: close }, "Cancel"), saveButton));
  body.append(form);
  search.focus();

  // ---- behaviour
  function setKind(kind) {
    state.kind = kind;
    const hub = kind !== "local_path";
    hubSection.hidden = !hub;
    localSection.hidden = hub;
    setText(modelInfo, "");
    state.inspected = null;
    if (hub) { state.repo = null; state.files = null; fill(results); fill(filesBox); setText(repoLine, "No repository chosen."); runSearch(); }
    clearErrors(form);
    fill(checkResult);
  }

  function setSchedule(mode) {
    autoBox.hidden = mode !== "auto";
    manualBox.hidden = mode !== "manual";
  }

  function chosenBackend() {
    return backend.value || (state.inspected ? state.inspected.backend : "");
  }

  function updateKvAvailability() {
    const b = chosenBackend();
    const ok = KV_CACHE_BACKENDS.includes(b);
    for (const input of [kvGib, kvChunk, kvRemote]) input.disabled = !ok;
    setText(kvHint, ok ? "KV blocks evicted from GPU memory are kept in the worker's RAM (claimed by placement), and optionally in a shared store."
      : `Available with ${KV_CACHE_BACKENDS.join(", ")} on CUDA or ROCm workers${b ? `, not ${b}` : ""}.`);
  }
  backend.addEventListener("change", updateKvAvailability);
  updateKvAvailability();

  async function runSearch() {
    const q = search.value.trim();
    const seq = ++state.searchSeq;
    clearFieldError("search");
    if (!q) { fill(results); setText(resultsStatus, "Type a name to search."); return; }
    setText(resultsStatus, "Searching…");
    try {
      const hits = await get(`/v1/hubs/${state.kind}/models?${new URLSearchParams({ search: q, gguf: String(gguf.checked), limit: "20" })}`);
      if (seq !== state.searchSeq) return;
      fill(results, hits.map((hit) => h("li", {}, h("button", {
        type: "button", class: "result", dataset: { repo: hit.repo }, "aria-pressed": String(hit.repo === state.repo),
        onclick: () => chooseRepo(hit.repo),
      }, h("span", { class: "repo" }, hit.repo),
      h("span", { class: "meta" }, [hit.downloads !== null ? `${hit.downloads} downloads` : "", hit.likes !== null ? `${hit.likes} likes` : "",
        hit.has_gguf ? "GGUF" : ""].filter(Boolean).join(" · "))))));
      setText(resultsStatus, hits.length ? `${hits.length} result(s)` : `No ${HUBS[state.kind]} models match “${q}”.`);
    } catch (exc) {
      if (seq !== state.searchSeq) return;
      fill(results);
      setText(resultsStatus, "");
      showErrors(form, { search: exc.detail || exc.message });
    }
  }
  search.addEventListener("input", () => { clearTimeout(state.searchTimer); state.searchTimer = setTimeout(runSearch, SEARCH_DELAY_MS); });
  search.addEventListener("keydown", (e) => { if (e.key === "Enter") { e.preventDefault(); clearTimeout(state.searchTimer); runSearch(); } });
  gguf.addEventListener("change", runSearch);

  async function chooseRepo(repo) {
    state.repo = repo;
    state.files = null;
    for (const b of results.querySelectorAll("button.result")) b.setAttribute("aria-pressed", String(b.dataset.repo === repo));
    setText(repoLine, `Repository: ${repo} — loading its files…`);
    fill(filesBox);
    clearFieldError("source");
    try {
      const q = new URLSearchParams({ repo });
      if (revision.value.trim()) q.set("revision", revision.value.trim());
      const listing = await get(`/v1/hubs/${state.kind}/files?${q}`);
      if (state.repo !== repo) return;
      state.files = listing;
      renderFiles(listing);
      if (!state.nameEdited) name.value = suggestName(repo);
      await inspect();
    } catch (exc) {
      setText(repoLine, `Repository: ${repo}`);
      showErrors(form, { source: exc.detail || exc.message });
    }
  }

  function renderFiles(listing) {
    setText(repoLine, `Repository: ${listing.repo}`);
    const options = [];
    const radio = (value, label, checked, extra) => {
      const id = `deploy-file-${options.length}`;
      options.push(h("label", { for: id, class: "file-option" },
        h("input", { type: "radio", name: "deploy-file", id, value, checked, onchange: () => inspect() }),
        h("span", { class: "quant" }, label), extra));
    };
    for (const g of listing.gguf) {
      const shards = g.shards_expected > 1 ? ` · ${g.files.length}/${g.shards_expected} shards` : "";
      radio(g.files[0].path, g.quantization, g.default,
        h("span", { class: "meta" }, `${bytes(g.size)}${shards} · ${g.files[0].path}${g.default ? " · default" : ""}${g.complete ? "" : " · incomplete"}`));
    }
    if (!listing.gguf.length && listing.safetensors.length) {
      const size = listing.safetensors.reduce((n, f) => n + f.size, 0);
      radio("", "safetensors checkpoint", true, h("span", { class: "meta" }, `${listing.safetensors.length} file(s), ${bytes(size)}`));
    }
    fill(filesBox, options.length
      ? h("div", { class: "file-options", role: "radiogroup", "aria-label": "Quantization" }, options)
      : h("p", {}, "No model files gpufleet can deploy in this repository."),
    listing.mmproj.length ? h("p", { class: "hint" }, `Projector${listing.mmproj.length > 1 ? "s" : ""}: ${listing.mmproj.map((g) => g.files[0].path).join(", ")} (deployed beside the model)`) : null,
    listing.note ? h("p", { class: "hint" }, listing.note) : null);
  }

  function chosenFile() {
    const checked = filesBox.querySelector('input[name="deploy-file"]:checked');
    return checked ? checked.value : null;
  }

  function source() {
    if (state.kind === "local_path") return { kind: "local_path", local_path: path.value.trim() };
    const src = { kind: state.kind, repo: state.repo || "" };
    const file = chosenFile();
    if (file) src.file = file;
    if (revision.value.trim()) src.revision = revision.value.trim();
    return src;
  }

  /** What gpufleet reads from the model: shown, and used for the Auto labels. Leaving the path
   * field by pressing Save starts two inspections of one source at once: they share a request. */
  function inspect() {
    const src = source();
    if ((src.kind === "local_path" && !src.local_path) || (src.kind !== "local_path" && !src.repo)) return Promise.resolve(null);
    const key = JSON.stringify([src, category.value]);
    if (state.inspecting && state.inspecting.key === key) return state.inspecting.promise;
    const promise = inspectNow(src).finally(() => { if (state.inspecting && state.inspecting.promise === promise) state.inspecting = null; });
    state.inspecting = { key, promise };
    return promise;
  }

  async function inspectNow(src) {
    clearFieldError("source");
    state.unseenPath = null;
    try {
      const body = { source: src };
      if (category.value) body.category = category.value;
      const info = await post("/v1/models/inspect", body);
      state.inspected = info;
      const m = info.metadata;
      setText(modelInfo, `${m.format.toUpperCase()} · ${m.architecture} · ${(m.n_params / 1e9).toFixed(2)} B parameters` +
        `${m.quantization ? ` · ${m.quantization}` : ""} · ${bytes(m.file_size)} · category ${info.category} · backend ${info.backend}`);
      category.options[0].textContent = `Auto (${m.category})`;
      backend.options[0].textContent = `Auto (${info.backend})`;
      updateKvAvailability();
      return info;
    } catch (exc) {
      state.inspected = null;
      setText(modelInfo, "");
      category.options[0].textContent = "Auto";
      backend.options[0].textContent = "Auto";
      if (exc.status === 404 && src.kind === "local_path") state.unseenPath = src.local_path;
      showErrors(form, { source: exc.detail || exc.message });
      return null;
    }
  }
  path.addEventListener("change", () => {
    if (!state.nameEdited && path.value.trim()) name.value = suggestName(path.value.trim());
    inspect();
  });
  category.addEventListener("change", () => inspect());

  async function loadWorkers() {
    try {
      state.workers = await get("/v1/workers");
      const boxes = state.workers.flatMap((w) => w.gpus.map((g) => {
        const id = `deploy-gpu-${w.name}-${g.index}`;
        return h("label", { for: id, class: "check" },
          h("input", { type: "checkbox", id, value: `${w.name}:${g.index}`, class: "gpu-choice" }),
          ` ${w.name}:${g.index} — ${g.name}, ${bytes(g.memory_total)}${w.ready ? "" : " (worker not ready)"}`);
      }));
      fill(gpuList, boxes.length ? boxes : h("p", {}, "No worker has GPUs."));
    } catch (exc) {
      fill(gpuList, h("p", { class: "field-error" }, `Cannot list workers: ${exc.detail || exc.message}`));
    }
  }
  loadWorkers();

  function spec() {
    const manual = form.querySelector("#deploy-schedule-manual").checked;
    const placement = {
      strategy: strategy.value,
      worker_selector: manual ? [] : selector.value.split("\n").map((s) => s.trim()).filter(Boolean),
      gpu_selector: manual ? [...gpuList.querySelectorAll(".gpu-choice:checked")].map((c) => c.value) : [],
      cpu_offloading: cpuOffloading.checked,
      distributed: distributed.checked,
    };
    if (manual && gpusPerReplica.value.trim()) placement.gpus_per_replica = intOrText(gpusPerReplica.value);
    const s = {
      name: name.value.trim(), replicas: intOrText(replicas.value), source: source(), placement,
      backend_params: paramList(params.values()),
      env: Object.fromEntries(env.values().map(([k, v]) => [k, v])),
      restart_on_error: restartOnError.checked,
    };
    if (backend.value) s.backend = backend.value;
    if (category.value) s.category = category.value;
    if (backendVersion.value.trim()) s.backend_version = backendVersion.value.trim();
    if (image.value.trim()) s.image = image.value.trim();
    if (!kvGib.disabled && kvGib.value.trim()) {
      s.kv_cache = { cpu_gib: Number(kvGib.value) };
      if (kvChunk.value.trim()) s.kv_cache.chunk_size = intOrText(kvChunk.value);
      if (kvRemote.value.trim()) s.kv_cache.remote_url = kvRemote.value.trim();
    }
    return s;
  }

  function clearFieldError(key) {
    for (const el of form.querySelectorAll(`.field-error[data-error-for="${key}"]`)) { el.hidden = true; el.textContent = ""; }
  }

  function localFirst() {
    // A hub source needs a repository; say so next to the files rather than send an empty repo.
    if (state.kind !== "local_path" && !state.repo) {
      showErrors(form, { source: "Search and choose a repository first." });
      return false;
    }
    return true;
  }

  checkButton.addEventListener("click", async () => {
    clearErrors(form);
    fill(checkResult);
    if (!localFirst()) return;
    checkButton.disabled = true;
    setText(checkButton, "Checking…");
    try {
      const result = await post("/v1/plan", { spec: spec() });
      fill(checkResult, planView(result));
    } catch (exc) {
      showErrors(form, exc.fields || { "": exc.message });
    } finally {
      checkButton.disabled = false;
      setText(checkButton, "Check compatibility");
    }
  });

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearErrors(form);
    if (!localFirst()) return;
    const s = spec();
    if (s.source.kind === "local_path" && s.source.local_path && state.confirmedUnseen !== s.source.local_path) {
      const info = await inspect();
      if (!info && state.unseenPath === s.source.local_path) {
        // Not an error for the API (the workers may hold the path), but most often a typo: ask once.
        state.confirmedUnseen = s.source.local_path;
        setText(saveButton, "Save anyway");
        return;
      }
    }
    clearErrors(form);  // the deploy's own answer replaces what the inspection said
    saveButton.disabled = true;
    try {
      const op = await post("/v1/deployments", s);
      close();
      notice(`deployment ${s.name} created with ${s.replicas} replica(s)${op.detail ? `: ${op.detail}` : ""}`);
      if (onDeployed) onDeployed(s.name);
    } catch (exc) {
      showErrors(form, exc.fields || { "": exc.message });
    } finally {
      saveButton.disabled = false;
    }
  });
  path.addEventListener("input", () => { if (state.confirmedUnseen) { state.confirmedUnseen = null; setText(saveButton, "Save"); } });
}
