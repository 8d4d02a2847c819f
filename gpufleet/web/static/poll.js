// Repeat a refresh while its page is shown (not while the tab is hidden); one
// refresh at a time, so a slow server is not sent a pile of requests.

export function poll(refresh, intervalMs) {
  let stopped = false;
  let timer = null;
  async function tick() {
    if (stopped) return;
    if (document.visibilityState !== "hidden") {
      try { await refresh(); } catch (exc) { /* refresh shows its own errors */ }
    }
    if (!stopped) timer = setTimeout(tick, intervalMs);
  }
  tick();
  return () => { stopped = true; clearTimeout(timer); };
}
