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

  // A reload never undoes nor loses what a person asked for. While their own request on a live
  // part is in flight (a sort, a page, a filter), its reload waits and runs once theirs is in; a
  // reload that was already in flight when they asked is not swapped in (theirs is newer, and
  // swapping the part out would drop their answer). htmx's hx-sync would abort one of the two
  // requests, which htmx reports as a console error.
  var LIVE_PART = "[data-live-list], #batch", asked = 0, inFlight = 0, owed = false;
  function isLivePart(el) { return !!(el && el.matches && el.matches(LIVE_PART)); }
  document.addEventListener("htmx:beforeRequest", function (e) {
    var d = e.detail;
    if (isLivePart(d.elt)) {
      if (inFlight) { owed = true; e.preventDefault(); return; }
      d.requestConfig.rmmAsked = asked;
    } else if (isLivePart(d.target)) {
      asked++;
      inFlight++;
      d.requestConfig.rmmPerson = true;
    }
  });
  document.addEventListener("htmx:afterRequest", function (e) {
    if (!e.detail.requestConfig || !e.detail.requestConfig.rmmPerson) return;
    inFlight = Math.max(0, inFlight - 1);
    if (!inFlight && owed) { owed = false; jobsChanged(); }
  });
  document.addEventListener("htmx:beforeSwap", function (e) {
    var d = e.detail;
    if (isLivePart(d.elt) && d.requestConfig && d.requestConfig.rmmAsked !== undefined && d.requestConfig.rmmAsked !== asked) {
      d.shouldSwap = false;
    }
  });

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

  // Events sent before this socket opened never reach it: between the page's render and the
  // first open, and while it was reconnecting. So on each open, a page that shows an unfinished
  // job reloads that part once; after a reconnect, every live part does (the banner too).
  var ACTIVE = ".status-awaiting_approval, .status-queued, .status-running";
  function catchUp(reconnected) {
    var job = document.getElementById("job"), status = document.getElementById("job-status");
    if (job && (reconnected || (status && status.matches(ACTIVE)))) refreshJob(job);
    var live = document.querySelectorAll("[data-live-list], #batch");
    for (var i = 0; i < live.length; i++) {
      if (reconnected || live[i].querySelector(ACTIVE)) { jobsChanged(); break; }
    }
    if (reconnected) refreshBanner();
  }

  var opened = false;
  function connect(delay) {
    var proto = location.protocol === "https:" ? "wss://" : "ws://";
    var ws = new WebSocket(proto + location.host + "/ws/console/");
    ws.onopen = function () {
      setState("open");
      delay = 1000;
      catchUp(opened);
      opened = true;
    };
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
