// Click a column heading of a table.sortable to sort its rows; click again to reverse.
// Cells may carry data-value (what to sort by); headings say data-type="number" or "text".
// Without JavaScript the tables simply stay in their ranked order.
(function () {
  function key(row, index, numeric) {
    var cell = row.cells[index];
    var raw = cell ? (cell.getAttribute("data-value") || cell.textContent.trim()) : "";
    if (!numeric) return raw.toLowerCase();
    var value = parseFloat(raw);
    return isNaN(value) ? Infinity : value;
  }
  function sortBy(table, heading) {
    var headings = Array.prototype.slice.call(heading.parentNode.children);
    var index = headings.indexOf(heading);
    var numeric = heading.getAttribute("data-type") === "number";
    var descending = heading.getAttribute("aria-sort") === "ascending";
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = key(a, index, numeric), y = key(b, index, numeric);
      var order = x < y ? -1 : x > y ? 1 : 0;
      return descending ? -order : order;
    });
    rows.forEach(function (row) { body.appendChild(row); });
    headings.forEach(function (h) { h.removeAttribute("aria-sort"); });
    heading.setAttribute("aria-sort", descending ? "descending" : "ascending");
  }
  document.querySelectorAll("table.sortable").forEach(function (table) {
    table.querySelectorAll("thead th").forEach(function (heading) {
      heading.addEventListener("click", function () { sortBy(table, heading); });
    });
  });
})();
