// bemi-ui: the live tail. Served from the binary; no dependencies, no build step.
// Rows arrive as HTML the server rendered (every value escaped there); they are inserted as
// they are, newest at the top. Pause keeps receiving and holds the rows back until Resume.
"use strict";

(function () {
  const table = document.getElementById("tail");
  if (!table) {
    return;
  }
  const body = table.querySelector("tbody");
  const status = document.getElementById("tail-status");
  const button = document.getElementById("pause");
  let paused = false;
  let held = [];
  let shown = 0;

  function show(html) {
    body.insertAdjacentHTML("afterbegin", html);
    const row = body.firstElementChild;
    if (row) {
      row.classList.add("new");
    }
    shown += 1;
  }

  function describe(text) {
    status.textContent = text;
  }

  const source = new EventSource(table.dataset.source);
  source.addEventListener("open", function () {
    describe(paused ? "paused" : "live");
  });
  source.addEventListener("change", function (event) {
    if (paused) {
      held.push(event.data);
      describe("paused, " + held.length + " new");
    } else {
      show(event.data);
      describe("live, " + shown + " shown");
    }
  });
  source.addEventListener("lagging", function () {
    describe("reconnecting to the audit trail…");
  });
  source.addEventListener("error", function () {
    describe("disconnected, retrying…");
  });

  button.addEventListener("click", function () {
    paused = !paused;
    button.textContent = paused ? "Resume" : "Pause";
    if (!paused) {
      held.forEach(show);
      held = [];
      describe("live, " + shown + " shown");
    } else {
      describe("paused");
    }
  });
})();
