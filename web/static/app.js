// atcr UI: progressive enhancement only. Every page works without this file.
// - the theme toggle (the choice is applied before first paint by an inline script in <head>);
// - "/" focuses the search box;
// - copy buttons for pull commands and digests;
// - htmx live search: keep the address bar's query in the nav search box;
// - live pages: an event on the page's stream (htmx SSE extension) re-fetches its live region,
//   at most once a second and always once after the last event (later while a field in it has
//   focus); a reconnect re-fetches too (events may have been missed while it was down).
(function () {
  "use strict";
  var root = document.documentElement;
  var darkQuery = window.matchMedia ? window.matchMedia("(prefers-color-scheme: dark)") : null;

  function effectiveTheme() {
    var chosen = root.getAttribute("data-theme");
    if (chosen === "dark" || chosen === "light") return chosen;
    return darkQuery && darkQuery.matches ? "dark" : "light";
  }

  function syncToggle() {
    var button = document.getElementById("theme-toggle");
    if (!button) return;
    var dark = effectiveTheme() === "dark";
    button.setAttribute("aria-pressed", dark ? "true" : "false");
    button.title = dark ? "Switch to light mode" : "Switch to dark mode";
  }

  function toggleTheme() {
    var next = effectiveTheme() === "dark" ? "light" : "dark";
    root.setAttribute("data-theme", next);
    try { localStorage.setItem("atcr-theme", next); } catch (e) { /* private mode: not remembered */ }
    syncToggle();
  }

  function announce(message) {
    var region = document.getElementById("live-status");
    if (!region) return;
    region.textContent = "";
    window.setTimeout(function () { region.textContent = message; }, 30);
  }

  function copyText(button) {
    var text = button.getAttribute("data-copy") || "";
    var done = function () {
      var label = button.querySelector(".copy-label");
      if (label) {
        var previous = label.textContent;
        label.textContent = "Copied";
        window.setTimeout(function () { label.textContent = previous; }, 1500);
      }
      button.classList.add("copied");
      window.setTimeout(function () { button.classList.remove("copied"); }, 1500);
      announce("Copied to clipboard");
    };
    if (navigator.clipboard && navigator.clipboard.writeText) {
      navigator.clipboard.writeText(text).then(done, function () { announce("Copy failed"); });
    }
  }

  function enhance(scope) {
    var buttons = scope.querySelectorAll("button.copy[hidden]");
    for (var i = 0; i < buttons.length; i++) {
      if (navigator.clipboard) buttons[i].hidden = false;
    }
  }

  document.addEventListener("click", function (event) {
    var target = event.target instanceof Element ? event.target : null;
    if (!target) return;
    if (target.closest("#theme-toggle")) { toggleTheme(); return; }
    var copy = target.closest("button.copy");
    if (copy) copyText(copy);
  });

  document.addEventListener("keydown", function (event) {
    if (event.key !== "/" || event.ctrlKey || event.metaKey || event.altKey) return;
    var active = document.activeElement;
    var typing = active && (active.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(active.tagName));
    if (typing) return;
    var search = document.getElementById("page-search") || document.getElementById("site-search");
    if (!search) return;
    event.preventDefault();
    search.focus();
    search.select();
  });

  var LIVE_INTERVAL_MS = 1000;

  function refreshLive(container) {
    var state = container.atcrLive || (container.atcrLive = { last: 0, timer: null });
    if (state.timer) return; // a refresh is already scheduled: it will show this event too
    var wait = Math.max(0, state.last + LIVE_INTERVAL_MS - Date.now());
    state.timer = window.setTimeout(function () {
      state.timer = null;
      var region = container.querySelector("#live-region");
      if (!region || !window.htmx) return;
      // Someone typing in a field of the region (the home page's search box) would lose the
      // text: try again later.
      var active = document.activeElement;
      if (active && region.contains(active) && /^(INPUT|TEXTAREA|SELECT)$/.test(active.tagName)) {
        state.last = Date.now();
        refreshLive(container);
        return;
      }
      state.last = Date.now();
      window.htmx.trigger(region, "atcr:refresh");
    }, wait);
  }

  document.addEventListener("htmx:sseMessage", function (event) {
    var container = event.target instanceof Element ? event.target.closest("[data-live]") : null;
    if (container) refreshLive(container);
  });
  document.addEventListener("htmx:sseOpen", function (event) {
    var container = event.target instanceof Element ? event.target.closest("[data-live]") : null;
    if (!container) return;
    if (container.atcrLiveOpened) refreshLive(container);
    container.atcrLiveOpened = true;
  });

  if (darkQuery && darkQuery.addEventListener) darkQuery.addEventListener("change", syncToggle);
  document.addEventListener("htmx:afterSwap", function (event) { enhance(event.target); });
  function ready() { syncToggle(); enhance(document); }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", ready);
  else ready();
})();
