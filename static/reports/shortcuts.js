// Keyboard shortcuts of the radiologist's pages (documented on each page).
// Worklist: j/k or arrows move between studies, Enter opens, n opens the most urgent,
// "/" goes to the search. Report page: Alt+N (or n) next study, Alt+S sign (asks first),
// Alt+D save draft. Plain keys are ignored while typing in a text box.
(function () {
  "use strict";

  function typing(element) {
    if (!element) return false;
    var tag = element.tagName;
    return tag === "TEXTAREA" || tag === "INPUT" || tag === "SELECT" || element.isContentEditable;
  }

  function activate(selector, question) {
    var target = document.querySelector(selector);
    if (!target || target.disabled) return false;
    if (question && !window.confirm(question)) return true;
    target.click();
    return true;
  }

  var rows = Array.prototype.slice.call(document.querySelectorAll("[data-row-link]"));
  var focused = -1;

  function focusRow(index) {
    if (!rows.length) return;
    focused = Math.max(0, Math.min(rows.length - 1, index));
    rows.forEach(function (link, i) {
      link.closest("tr").classList.toggle("focused", i === focused);
    });
    rows[focused].focus();
  }

  rows.forEach(function (link, i) {
    link.addEventListener("focus", function () {
      focused = i;
    });
  });

  document.addEventListener("keydown", function (event) {
    if (event.ctrlKey || event.metaKey) return;
    if (event.altKey) {
      var done = false;
      if (event.code === "KeyN") done = activate("[data-shortcut=next]");
      else if (event.code === "KeyS")
        done = activate(
          "[data-shortcut=sign]",
          "Sign this report? A signed version is final; later changes make an amended version."
        );
      else if (event.code === "KeyD") done = activate("[data-shortcut=draft]");
      if (done) event.preventDefault();
      return;
    }
    if (typing(document.activeElement)) return;
    if (event.key === "n") {
      if (activate("[data-shortcut=next]") || (rows.length && (rows[0].click(), true)))
        event.preventDefault();
    } else if (event.key === "/") {
      var search = document.getElementById("id_q");
      if (search) {
        search.focus();
        event.preventDefault();
      }
    } else if (rows.length && (event.key === "j" || event.key === "ArrowDown")) {
      focusRow(focused + 1);
      event.preventDefault();
    } else if (rows.length && (event.key === "k" || event.key === "ArrowUp")) {
      focusRow(focused - 1);
      event.preventDefault();
    }
  });
})();
