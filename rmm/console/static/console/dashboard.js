// The dashboard's charts: jobs by status, drawn by Chart.js from the page's json_script data (the
// CSP allows no inline script). The table beside them holds the same numbers in words.
(function () {
  "use strict";
  // Bars at 3:1 or more against the white card; the same families as the status words' colours.
  var COLOURS = {
    awaiting_approval: "#0b4fc2", queued: "#4a5361", running: "#a86400", succeeded: "#1e7b3a",
    failed: "#b3261e", timed_out: "#8c1d18", aborted: "#6f42c1", lost: "#5c0011", rejected: "#7b3fa0"
  };

  function draw(id, statuses, counts, title) {
    var canvas = document.getElementById(id);
    if (!canvas || typeof Chart === "undefined") return;
    new Chart(canvas, {
      type: "bar",
      data: {
        labels: statuses,
        datasets: [{
          label: title,
          data: counts,
          backgroundColor: statuses.map(function (s) { return COLOURS[s] || "#4a5361"; })
        }]
      },
      options: {
        animation: false,
        maintainAspectRatio: false,
        plugins: { legend: { display: false } },
        scales: { y: { beginAtZero: true, ticks: { precision: 0 } } }
      }
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    var source = document.getElementById("job-chart-data");
    if (!source) return;
    var data = JSON.parse(source.textContent);
    if (typeof Chart !== "undefined") Chart.defaults.color = "#1d2330";
    draw("chart-day", data.statuses, data.day, "Jobs in the last 24 hours");
    draw("chart-week", data.statuses, data.week, "Jobs in the last 7 days");
  });
})();
