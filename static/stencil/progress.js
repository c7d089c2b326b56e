// Live progress on the admin's pages: every [data-stencil-progress="kind:id"] element whose
// work is in flight (data-active="1") is refreshed from the staff-only JSON endpoint, with
// speed and time left worked out from successive samples. Only those elements change: no page
// reload, and polling stops once nothing is in flight.
(function () {
  "use strict";
  const script = document.currentScript;
  const url = script && script.dataset.progressUrl;
  const every = Number((script && script.dataset.intervalMs) || 1500);
  if (!url) return;
  const samples = new Map(); // key -> {t, bytes}

  function human(bytes) {
    const units = ["B", "KB", "MB", "GB", "TB"];
    let i = 0;
    while (bytes >= 1024 && i < units.length - 1) { bytes /= 1024; i++; }
    return bytes.toFixed(i ? 1 : 0) + " " + units[i];
  }

  function duration(seconds) {
    if (!isFinite(seconds)) return "";
    if (seconds < 60) return Math.ceil(seconds) + " s";
    if (seconds < 3600) return Math.floor(seconds / 60) + " min " + Math.ceil(seconds % 60) + " s";
    return Math.floor(seconds / 3600) + " h " + Math.ceil((seconds % 3600) / 60) + " min";
  }

  function active() {
    return Array.from(document.querySelectorAll('[data-stencil-progress][data-active="1"]'));
  }

  function describe(key, row) {
    let text = row.percent + "%";
    if (row.total_bytes) text += " of " + human(row.total_bytes);
    const now = performance.now();
    const before = samples.get(key);
    const bytes = row.done_bytes != null ? row.done_bytes : null;
    if (bytes != null) {
      if (before && now > before.t && bytes >= before.bytes) {
        const speed = ((bytes - before.bytes) * 1000) / (now - before.t);
        if (speed > 0) {
          text += " — " + human(speed) + "/s";
          if (row.total_bytes) text += " — " + duration((row.total_bytes - bytes) / speed) + " left";
        }
      }
      samples.set(key, {t: now, bytes: bytes});
    }
    if (!row.active) text += " — " + row.state + (row.error ? ": " + row.error : "");
    return text;
  }

  async function poll() {
    const elements = active();
    if (!elements.length) return;
    const wanted = {};
    elements.forEach((el) => {
      const [kind, id] = el.dataset.stencilProgress.split(":");
      (wanted[kind] = wanted[kind] || []).push(id);
    });
    const query = new URLSearchParams();
    Object.entries(wanted).forEach(([kind, ids]) => query.set(kind, ids.join(",")));
    try {
      const response = await fetch(url + "?" + query, {credentials: "same-origin", headers: {"Accept": "application/json"}});
      if (response.ok) {
        const answer = await response.json();
        elements.forEach((el) => {
          const [kind, id] = el.dataset.stencilProgress.split(":");
          const row = answer[kind] && answer[kind][id];
          if (!row) return;
          const bar = el.querySelector("progress");
          if (bar) bar.value = row.percent;
          const text = el.querySelector(".stencil-progress-text");
          if (text) text.textContent = describe(el.dataset.stencilProgress, row);
          el.dataset.state = row.state;
          if (!row.active) el.dataset.active = "0";
        });
      }
    } finally {
      if (active().length) setTimeout(poll, every);
    }
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", poll);
  else poll();
})();
