// Live job events: the job list, a batch and the job page follow them without a reload.
(function () {
  "use strict";
  var FINAL = ["succeeded", "failed", "timed_out", "aborted", "lost", "rejected"];
  var stateEl;

  function setState(state) {
    if (!stateEl) return;
    stateEl.dataset.state = state;
    stateEl.textContent = state === "open" ? "live" : state;
  }

  function setStatus(el, status) {
    el.textContent = status;
    el.className = "status status-" + status;
  }

  var fragmentRequest = 0;
  function refreshJob(container) {
    // Only the newest request may write: an older answer arriving late must not undo a newer one.
    var mine = ++fragmentRequest;
    fetch(container.dataset.fragmentUrl, { credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (html) { if (html !== null && mine === fragmentRequest) container.innerHTML = html; });
  }

  // A running job's output, as its agent streams it: each event continues a stream where the
  // page's copy ends (data-total, in the server's count); anything else reloads the fragment.
  var TAIL_CHARS = 65536;
  function appendOutput(ev) {
    var job = document.getElementById("job"), box = document.getElementById("live-output");
    if (!job || job.dataset.jobId !== ev.id) return;
    if (!box || box.dataset.instruction !== ev.instruction) { refreshJob(job); return; }
    ["stdout", "stderr"].forEach(function (name) {
      var part = ev[name], pre = document.getElementById("live-" + name);
      if (!part || !pre) return;
      var have = Number(pre.dataset.total);
      if (part.to <= have) return;
      if (part.from !== have) { refreshJob(job); return; }
      pre.textContent = (pre.textContent + part.text).slice(-TAIL_CHARS);
      pre.dataset.total = part.to;
    });
  }

  function refreshBanner() {
    var banner = document.getElementById("kill-banner");
    if (!banner) return;
    fetch("/console/kill-switches/banner/", { credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (html) { if (html !== null) banner.innerHTML = html; });
  }

  // Lists and batch pages that follow jobs (hx-trigger "rmm:jobs-changed from:body") reload
  // themselves through htmx, at their own address: the rows stay in their query's order and
  // filters. At most one reload every RELOAD_MS, and one more after the last event.
  var RELOAD_MS = 2000, lastReload = 0, pending = null;
  function jobsChanged() {
    if (pending) return;
    var wait = Math.max(0, lastReload + RELOAD_MS - Date.now());
    pending = setTimeout(function () {
      pending = null;
      lastReload = Date.now();
      document.body.dispatchEvent(new CustomEvent("rmm:jobs-changed"));
    }, wait);
  }

  function onEvent(ev) {
    // Page scripts (e.g. evidence exports) listen for every event without a socket of their own.
    document.dispatchEvent(new CustomEvent("rmm:event", { detail: ev }));
    if (ev.type === "kill_switch") { refreshBanner(); return; }
    if (ev.type === "job_output") { appendOutput(ev); return; }
    if (ev.type !== "job") return;
    jobsChanged();
    var job = document.getElementById("job");
    if (job && job.dataset.jobId === ev.id) {
      setStatus(document.getElementById("job-status"), ev.status);
      refreshJob(job);
    }
  }

  function connect(delay) {
    var proto = location.protocol === "https:" ? "wss://" : "ws://";
    var ws = new WebSocket(proto + location.host + "/ws/console/");
    ws.onopen = function () { setState("open"); delay = 1000; };
    ws.onmessage = function (m) { onEvent(JSON.parse(m.data)); };
    ws.onclose = function () {
      setState("reconnecting");
      setTimeout(function () { connect(Math.min(delay * 2, 30000)); }, delay);
    };
  }

  document.addEventListener("DOMContentLoaded", function () {
    stateEl = document.getElementById("live-state");
    connect(1000);
  });
  window.rmmFinalStatuses = FINAL;
})();
