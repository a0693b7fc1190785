// apitoken web console: the copy button of a new secret. Every page works
// without this file; it only adds the button.
"use strict";
document.querySelectorAll("button[data-copy]").forEach(function (button) {
  var field = document.getElementById(button.getAttribute("data-copy"));
  var status = document.getElementById("copied");
  if (!field || !navigator.clipboard) { return; }
  button.hidden = false;
  button.addEventListener("click", function () {
    navigator.clipboard.writeText(field.value).then(function () {
      if (status) { status.textContent = "Copied to the clipboard."; }
    }, function () {
      field.select();
      if (status) { status.textContent = "Select the secret and copy it by hand."; }
    });
  });
});
