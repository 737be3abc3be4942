// Live job events: update the job list and the job page without a reload.
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

  function refreshBanner() {
    var banner = document.getElementById("kill-banner");
    if (!banner) return;
    fetch("/console/kill-switches/banner/", { credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (html) { if (html !== null) banner.innerHTML = html; });
  }

  function onEvent(ev) {
    // Page scripts (e.g. evidence exports) listen for every event without a socket of their own.
    document.dispatchEvent(new CustomEvent("rmm:event", { detail: ev }));
    if (ev.type === "kill_switch") { refreshBanner(); return; }
    if (ev.type !== "job") return;
    var row = document.querySelector('#jobs tr[data-job-id="' + ev.id + '"]');
    if (row) {
      setStatus(row.querySelector('[data-field="status"]'), ev.status);
      if (ev.completed_at) row.querySelector('[data-field="completed_at"]').textContent = ev.completed_at.replace("T", " ").slice(0, 19);
    } else if (document.getElementById("jobs")) {
      var tbody = document.querySelector("#jobs tbody");
      var empty = tbody.querySelector("tr.empty");
      if (empty) empty.remove();
      var tr = document.createElement("tr");
      tr.dataset.jobId = ev.id;
      var cells = [ev.kind, null, null, "", (ev.created_at || "").replace("T", " ").slice(0, 19), ""];
      cells.forEach(function (text, i) {
        var td = document.createElement("td");
        if (i === 1) {
          var a = document.createElement("a");
          a.href = "/console/jobs/" + ev.kind + "/" + ev.id + "/";
          a.textContent = ev.description;
          td.appendChild(a);
        } else if (i === 2) {
          var span = document.createElement("span");
          span.dataset.field = "status";
          setStatus(span, ev.status);
          td.appendChild(span);
        } else {
          td.textContent = text;
          if (i === 5) td.dataset.field = "completed_at";
        }
        tr.appendChild(td);
      });
      tbody.insertBefore(tr, tbody.firstChild);
    }
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
