"use strict";
// Draws the usage report's cost per day with the vendored Chart.js; the table beside it has the numbers.
document.addEventListener("DOMContentLoaded", () => {
  const canvas = document.getElementById("daily-cost-chart");
  const source = document.getElementById("daily-cost-data");
  if (!canvas || !source || typeof Chart === "undefined") return;
  const data = JSON.parse(source.textContent);
  new Chart(canvas, {
    type: "bar",
    data: {
      labels: data.labels,
      datasets: [{ label: data.label, data: data.values.map(Number), backgroundColor: "#417690" }],
    },
    options: {
      animation: false,
      maintainAspectRatio: false,
      scales: { y: { beginAtZero: true, ticks: { callback: (value) => "$" + value } } },
      plugins: { tooltip: { callbacks: { label: (item) => "$" + item.parsed.y.toFixed(2) } } },
    },
  });
});
