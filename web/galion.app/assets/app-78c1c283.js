// Galion placeholder front end. Client-side routes (/dashboard/settings…)
// are answered with this same index by the gateway's SPA fallback; the
// script only shows which route the browser is on.
(function () {
  "use strict";
  var route = document.getElementById("route");
  function show() {
    route.textContent = window.location.pathname;
  }
  document.addEventListener("click", function (e) {
    var a = e.target.closest && e.target.closest("a[data-spa]");
    if (!a) return;
    e.preventDefault();
    window.history.pushState(null, "", a.getAttribute("href"));
    show();
  });
  window.addEventListener("popstate", show);
  show();
})();
