// The compatibility check: `POST /v1/plan` (what `gpufleet plan` shows), rendered as
// one row per replica with the worker, devices and estimated memory, or the reason it
// does not fit for every worker.
import { bytes, h } from "./dom.js";

export function planView(result) {
  const placed = result.replicas.filter((r) => r.placement).length;
  const total = result.replicas.length;
  const ok = placed === total;
  const rows = result.replicas.map((r) => {
    const p = r.placement;
    if (!p) {
      return h("tr", { class: "unplaced" }, h("th", { scope: "row" }, r.replica),
        h("td", { colspan: 4 }, h("strong", {}, "Does not fit: "), r.reason || "no worker can take it",
          Object.keys(r.reasons || {}).length
            ? h("ul", { class: "reasons" }, Object.entries(r.reasons).map(([w, why]) => h("li", {}, h("strong", {}, `${w}: `), why)))
            : null));
    }
    const devices = [
      ...(p.gpu_indexes.length ? [`${p.worker} GPU ${p.gpu_indexes.join(", ")}`] : [`${p.worker} CPU`]),
      ...(p.parts || []).map((part) => `${part.worker} GPU ${part.gpu_indexes.join(", ")} (RPC)`),
    ];
    const vram = [
      ...Object.entries(p.vram_claim || {}).map(([i, n]) => `${p.worker} GPU ${i}: ${bytes(n)}`),
      ...(p.parts || []).flatMap((part) => Object.entries(part.vram_claim || {}).map(([i, n]) => `${part.worker} GPU ${i}: ${bytes(n)}`)),
    ];
    const how = [p.stage, p.offloaded && p.gpu_layers !== null ? `${p.gpu_layers}/${p.total_layers} layers on GPU` : "",
      p.estimate_known ? "" : "estimate unknown", p.note].filter(Boolean).join("; ");
    return h("tr", {}, h("th", { scope: "row" }, r.replica), h("td", {}, devices.join("; ")),
      h("td", {}, vram.join("; ") || "-"), h("td", {}, bytes(p.ram_claim)), h("td", {}, how));
  });
  return h("div", { class: `plan ${ok ? "plan-ok" : "plan-bad"}` },
    h("p", { class: "plan-summary", role: "status" },
      `${placed} of ${total} replica(s) fit`, ok ? "." : " — see the reasons below."),
    h("table", { class: "plan-table responsive-plain" },
      h("caption", { class: "sr-only" }, "Dry-run placement of every replica"),
      h("thead", {}, h("tr", {}, ["Replica", "Devices", "VRAM per GPU", "RAM", "How"].map((c) => h("th", { scope: "col" }, c)))),
      h("tbody", {}, rows)));
}
