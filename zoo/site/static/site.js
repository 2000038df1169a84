// The zoo site's only script: sorting and filtering the index, choosing columns to compare,
// copy buttons. Pages work without it (every row and column is then shown).
"use strict";

document.documentElement.classList.add("js");

function sortKey(cell) {
  return cell.dataset.value !== undefined ? cell.dataset.value : cell.textContent.trim();
}

// Missing values ("") sort last in both directions.
function compareCells(a, b, numeric, ascending) {
  const x = sortKey(a), y = sortKey(b);
  if (x === "" || y === "") return x === y ? 0 : (x === "" ? 1 : -1);
  const order = numeric ? Number(x) - Number(y) : x.localeCompare(y, undefined, { numeric: true });
  return ascending ? order : -order;
}

function setupSorting(table) {
  const headers = Array.from(table.tHead.rows[0].cells);
  headers.forEach((th, index) => {
    const button = th.querySelector("button.sort");
    if (!button) return;
    button.addEventListener("click", () => {
      const ascending = th.getAttribute("aria-sort") !== "ascending";
      headers.forEach((h) => { if (h.hasAttribute("aria-sort")) h.setAttribute("aria-sort", "none"); });
      th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
      const body = table.tBodies[0];
      const rows = Array.from(body.rows);
      rows.sort((a, b) => compareCells(a.cells[index], b.cells[index], th.dataset.type === "number", ascending));
      rows.forEach((row) => body.appendChild(row));
    });
  });
}

function setupFilters(table) {
  const family = document.getElementById("filter-family");
  const task = document.getElementById("filter-task");
  const text = document.getElementById("filter-text");
  const count = document.getElementById("shown-count");
  const rows = Array.from(table.tBodies[0].rows);
  const params = new URLSearchParams(location.search);
  if (params.has("family")) family.value = params.get("family");
  if (params.has("task")) task.value = params.get("task");
  const apply = () => {
    const query = text.value.trim().toLowerCase();
    let shown = 0;
    rows.forEach((row) => {
      const visible = (!family.value || row.dataset.family === family.value)
        && (!task.value || row.dataset.task === task.value)
        && (!query || row.dataset.ref.toLowerCase().includes(query));
      row.hidden = !visible;
      if (visible) shown += 1;
    });
    count.textContent = `${shown} of ${rows.length} shown`;
  };
  family.addEventListener("change", apply);
  task.addEventListener("change", apply);
  text.addEventListener("input", apply);
  apply();
  document.getElementById("compare-selected").addEventListener("click", () => {
    const picked = Array.from(table.querySelectorAll("td.pick input:checked")).map((box) => box.value);
    const query = new URLSearchParams();
    picked.forEach((ref) => query.append("m", ref));
    location.href = "compare.html" + (picked.length ? "?" + query.toString() : "");
  });
}

function setupCompare(table) {
  const boxes = Array.from(document.querySelectorAll("#compare-pick input[type=checkbox]"));
  const wanted = new URLSearchParams(location.search).getAll("m");
  if (wanted.length) boxes.forEach((box) => { box.checked = wanted.includes(box.value); });
  const apply = () => {
    boxes.forEach((box) => {
      table.querySelectorAll(`[data-col="${box.dataset.col}"]`).forEach((cell) => { cell.hidden = !box.checked; });
    });
    // a metric none of the chosen versions reports is left out
    table.querySelectorAll("tr.metric").forEach((row) => {
      row.hidden = !Array.from(row.cells).some((cell) => !cell.hidden && cell.tagName === "TD" && cell.textContent !== "—");
    });
  };
  boxes.forEach((box) => box.addEventListener("change", apply));
  apply();
}

function setupCopyButtons() {
  document.querySelectorAll("button.copy").forEach((button) => {
    button.addEventListener("click", () => {
      const code = document.getElementById(button.dataset.target);
      if (!code || !navigator.clipboard) return;
      navigator.clipboard.writeText(code.textContent).then(
        () => { button.textContent = "Copied"; },
        () => { button.textContent = "Select and copy"; },
      );
    });
  });
}

document.addEventListener("DOMContentLoaded", () => {
  const models = document.getElementById("models");
  if (models) {
    setupSorting(models);
    setupFilters(models);
  }
  const compare = document.getElementById("compare");
  if (compare) setupCompare(compare);
  setupCopyButtons();
});
