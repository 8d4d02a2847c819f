// Entry point: a hash router between the Deployments and Workers pages. Each page
// polls the API while it is shown, so states change without reloading.
import { showDeployments } from "./deployments.js";
import { showWorkers } from "./workers.js";

const PAGES = { deployments: showDeployments, workers: showWorkers };
let stopCurrent = null;

function route() {
  const name = (location.hash.replace(/^#\/?/, "").split("/")[0]) || "deployments";
  const page = PAGES[name] ? name : "deployments";
  if (stopCurrent) stopCurrent();
  for (const key of Object.keys(PAGES)) {
    const link = document.getElementById(`nav-${key}`);
    if (key === page) link.setAttribute("aria-current", "page"); else link.removeAttribute("aria-current");
  }
  const main = document.getElementById("main");
  main.replaceChildren();
  stopCurrent = PAGES[page](main);
}

window.addEventListener("hashchange", route);
route();
