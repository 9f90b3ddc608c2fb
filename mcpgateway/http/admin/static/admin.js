// The admin dashboard's script: actions (buttons with data-post) sent with
// the CSRF token, and the call chart, polled from GET /admin/stats.
"use strict";

(function () {
  const meta = document.querySelector('meta[name="csrf-token"]');
  const csrf = meta ? meta.content : "";
  const COLORS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#4d7c0f", "#be185d"];

  function flash(text) {
    let bar = document.getElementById("flash");
    if (!bar) {
      bar = document.createElement("p");
      bar.id = "flash";
      document.body.prepend(bar);
    }
    bar.textContent = text;
  }

  // <button data-post="/route" [data-method="DELETE"] [data-confirm="..."] [data-then="/admin"]>
  async function act(button) {
    if (button.dataset.confirm && !window.confirm(button.dataset.confirm)) return;
    button.disabled = true;
    try {
      const response = await fetch(button.dataset.post, {
        method: button.dataset.method || "POST",
        headers: { "X-CSRF-Token": csrf },
        credentials: "same-origin",
      });
      const body = await response.json().catch(() => ({}));
      if (!response.ok) {
        flash(`${response.status}: ${body.error || "refused"} (${body.code || "?"})`);
        button.disabled = false;
        return;
      }
      window.location.assign(button.dataset.then || window.location.href);
    } catch (error) {
      flash(`request failed: ${error}`);
      button.disabled = false;
    }
  }

  document.addEventListener("click", (event) => {
    const button = event.target.closest("button[data-post]");
    if (button) act(button);
  });

  const canvas = document.getElementById("chart");
  if (!canvas) return;

  function draw(calls) {
    const context = canvas.getContext("2d");
    const { width, height } = canvas;
    const names = Object.keys(calls.services);
    const pad = 28;
    let top = 1;
    for (const name of names) for (const point of calls.services[name].series) top = Math.max(top, point[1]);
    context.clearRect(0, 0, width, height);
    context.strokeStyle = "#d1d5db";
    context.fillStyle = "#6b7280";
    context.font = "11px sans-serif";
    context.beginPath();
    context.moveTo(pad, 4);
    context.lineTo(pad, height - pad);
    context.lineTo(width - 4, height - pad);
    context.stroke();
    context.fillText(String(top), 2, 12);
    context.fillText("0", 2, height - pad);
    context.fillText(`-${calls.window / 60} min`, pad, height - 10);
    context.fillText("now", width - 28, height - 10);
    names.forEach((name, index) => {
      const series = calls.services[name].series;
      const color = COLORS[index % COLORS.length];
      const step = (width - pad - 4) / Math.max(1, series.length - 1);
      context.strokeStyle = color;
      context.lineWidth = 2;
      context.beginPath();
      series.forEach((point, i) => {
        const x = pad + i * step;
        const y = height - pad - (point[1] / top) * (height - pad - 8);
        if (i === 0) context.moveTo(x, y);
        else context.lineTo(x, y);
      });
      context.stroke();
      const swatch = document.querySelector(`#calls tr:nth-child(${index + 1}) .swatch`);
      if (swatch) swatch.style.background = color;
    });
  }

  function show(value, unit) {
    if (value === null || value === undefined) return "-";
    return unit === "" ? `${(value * 100).toFixed(1)}%` : `${value}${unit}`;
  }

  async function poll() {
    try {
      const response = await fetch("/admin/stats", { credentials: "same-origin" });
      if (response.status === 401) {
        window.location.assign("/admin");
        return;
      }
      if (!response.ok) return;
      const stats = await response.json();
      draw(stats.calls);
      for (const [name, entry] of Object.entries(stats.calls.services)) {
        for (const [key, unit] of [["rate", "/s"], ["p50_ms", " ms"], ["p99_ms", " ms"], ["error_rate", ""]]) {
          const cell = document.querySelector(`[data-stat="${name}.${key}"]`);
          if (cell) cell.textContent = show(entry[key], unit);
        }
      }
      canvas.dataset.updated = stats.time;
    } catch (error) {
      // The gateway restarting: try again at the next tick.
    }
  }

  poll();
  window.setInterval(poll, 2000);
})();
