// Behaviour shared by every page: confirmations and showing htmx errors.
"use strict";

document.addEventListener("submit", (event) => {
  const form = event.target;
  const question = form.dataset && form.dataset.confirm;
  if (question && !window.confirm(question)) {
    event.preventDefault();
  }
});

// htmx does not swap 4xx and 5xx answers; show their text, which the server sends as plain text.
document.addEventListener("htmx:responseError", (event) => {
  showFlash(event.detail.xhr.responseText || "request failed (HTTP " + event.detail.xhr.status + ")");
});
document.addEventListener("htmx:sendError", () => {
  showFlash("cannot reach the server; check the connection and try again");
});

function showFlash(text) {
  const flash = document.getElementById("flash");
  if (!flash) return;
  flash.textContent = text;
  flash.hidden = false;
}
