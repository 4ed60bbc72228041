// Report charts: each <canvas data-chart="ID"> is drawn from the JSON config in <script id="ID">.
// Charts are kept on window.looplineCharts so tests (and curious users) can read the plotted numbers.
(function () {
  "use strict";
  window.looplineCharts = window.looplineCharts || {};
  function money(v) { return Number(v).toLocaleString(undefined, {maximumFractionDigits: 2}); }
  function draw() {
    if (typeof Chart === "undefined") { return; }
    document.querySelectorAll("canvas[data-chart]").forEach(function (canvas) {
      var id = canvas.getAttribute("data-chart");
      var source = document.getElementById(id);
      if (!source || window.looplineCharts[id]) { return; }
      var config = JSON.parse(source.textContent);
      config.options = config.options || {};
      config.options.responsive = true;
      config.options.maintainAspectRatio = false;
      config.options.animation = false;
      config.options.plugins = config.options.plugins || {};
      config.options.plugins.tooltip = {callbacks: {label: function (ctx) {
        return (ctx.dataset.label ? ctx.dataset.label + ": " : "") + money(ctx.raw);
      }}};
      window.looplineCharts[id] = new Chart(canvas, config);
      canvas.setAttribute("data-rendered", "true");
    });
  }
  if (document.readyState === "loading") { document.addEventListener("DOMContentLoaded", draw); } else { draw(); }
  document.addEventListener("htmx:afterSwap", draw);
})();
