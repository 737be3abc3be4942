// Export progress, live: the console websocket pushes each step (live.js re-dispatches every event
// as "rmm:event"); while an export is still running the page also asks the API now and then,
// because the task cluster's events reach the browser only through a shared channel layer (Redis).
(function () {
  "use strict";
  var ACTIVE = ["queued", "running"];
  var POLL_MS = 2000;

  function update(row, ev) {
    row.dataset.status = ev.status;
    var status = row.querySelector('[data-field="status"]');
    status.textContent = ev.status;
    status.className = "status status-" + ev.status;
    var bar = row.querySelector('[data-field="progress"]');
    bar.value = ev.progress;
    bar.textContent = ev.progress + "%";
    row.querySelector('[data-field="item_count"]').textContent = ev.item_count;
    row.querySelector('[data-field="error"]').textContent = ev.error || "";
    var cell = row.querySelector('[data-field="download"]');
    if (ev.download && !cell.querySelector("a")) {
      var a = document.createElement("a");
      a.href = ev.download;
      a.textContent = "download";
      cell.textContent = "";
      cell.appendChild(a);
    }
  }

  function rowOf(id) {
    return document.querySelector('#exports tr[data-export-id="' + id + '"]');
  }

  document.addEventListener("rmm:event", function (e) {
    var ev = e.detail;
    if (!ev || ev.type !== "evidence_export") return;
    var row = rowOf(ev.id);
    if (row) update(row, ev);
  });

  function poll() {
    var rows = document.querySelectorAll("#exports tr[data-export-id]");
    rows.forEach(function (row) {
      if (ACTIVE.indexOf(row.dataset.status) === -1) return;
      fetch("/api/v1/evidence/exports/" + row.dataset.exportId + "/", { credentials: "same-origin" })
        .then(function (r) { return r.ok ? r.json() : null; })
        .then(function (data) { if (data) update(row, data); });
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    setInterval(poll, POLL_MS);
  });
})();
