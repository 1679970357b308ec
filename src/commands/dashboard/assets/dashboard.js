// dmf dashboard: live updates without reloading, the cluster filter, the action confirmation.
// Hand-written, no build step. The server pushes a change notice (server-sent events); the page
// then fetches its own <main> again and swaps it in, keeping the filter and the scroll position.
(function () {
  "use strict";
  var main = document.getElementById("live");
  var state = document.getElementById("live-state");
  if (!main) return;
  var fragment = main.getAttribute("data-fragment");
  var busy = false, again = false;

  function filterRows() {
    var input = document.getElementById("filter");
    if (!input) return;
    var words = input.value.toLowerCase().split(/\s+/).filter(Boolean);
    var rows = document.querySelectorAll("table.clusters tbody tr");
    for (var i = 0; i < rows.length; i++) {
      var text = rows[i].textContent.toLowerCase();
      rows[i].hidden = !words.every(function (w) { return text.indexOf(w) >= 0; });
    }
  }

  function wire() {
    var input = document.getElementById("filter");
    if (input) input.addEventListener("input", filterRows);
    var forms = document.querySelectorAll("form.actions");
    for (var i = 0; i < forms.length; i++) {
      forms[i].addEventListener("submit", function (e) {
        var f = e.target, action = f.elements.action.value, cluster = f.getAttribute("data-cluster");
        if (!window.confirm(action + " " + cluster + "? This is written to the event log with your name.")) e.preventDefault();
      });
    }
  }

  function refresh() {
    if (busy) { again = true; return; }
    // a form being filled in is not swapped away under the operator
    var active = document.activeElement;
    if (active && active.form && active.form.classList.contains("actions")) { again = true; return; }
    busy = true;
    var filter = document.getElementById("filter");
    var value = filter ? filter.value : "";
    fetch(fragment, { cache: "no-store" }).then(function (r) {
      if (!r.ok) throw new Error("HTTP " + r.status);
      return r.text();
    }).then(function (html) {
      main.innerHTML = html;
      var f = document.getElementById("filter");
      if (f && value) { f.value = value; }
      wire();
      filterRows();
      state.textContent = "live · " + new Date().toLocaleTimeString();
      state.className = "live on";
    }).catch(function (e) {
      state.textContent = "update failed: " + e.message;
      state.className = "live off";
    }).then(function () {
      busy = false;
      if (again) { again = false; setTimeout(refresh, 200); }
    });
  }

  wire();
  var first = true;
  var source = new EventSource("/events");
  source.onopen = function () { state.textContent = "live"; state.className = "live on"; };
  source.onmessage = function () {
    // the first message says where the server stands; the page was rendered at about that point
    if (first) { first = false; return; }
    refresh();
  };
  source.onerror = function () { state.textContent = "reconnecting…"; state.className = "live off"; };
})();
