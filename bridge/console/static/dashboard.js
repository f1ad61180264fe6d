// The dashboard's chart: sends and inbound SMS per minute over the last hour, drawn with
// the vendored uPlot from the figures the page carries (no request of its own).
(function () {
  "use strict";
  function draw() {
    var holder = document.getElementById("chart");
    var source = document.getElementById("chart-data");
    if (!holder || !source || typeof uPlot === "undefined") { return; }
    var data = JSON.parse(source.textContent);
    var xs = [];
    for (var i = 0; i < data.sent.length; i++) { xs.push(data.start + 60 * i); }
    var width = Math.max(320, holder.clientWidth - 16);
    var options = {
      width: width, height: 240, tzDate: function (ts) { return uPlot.tzDate(new Date(ts * 1000), "Etc/UTC"); },
      scales: { x: { time: true }, y: { range: function (u, min, max) { return [0, Math.max(5, max)]; } } },
      series: [
        {},
        { label: "sent / min", stroke: "#1f5fbf", width: 2, fill: "rgba(31,95,191,0.08)" },
        { label: "inbound / min", stroke: "#1e7f45", width: 2 }
      ],
      axes: [{}, { label: "per minute" }]
    };
    holder.textContent = "";
    new uPlot(options, [xs, data.sent, data.inbound], holder);
    holder.setAttribute("data-drawn", "1");
  }
  if (document.readyState === "loading") { document.addEventListener("DOMContentLoaded", draw); } else { draw(); }
}());
