"use strict";
// The "Copy" buttons of the page that shows new API keys once.
document.addEventListener("click", async (event) => {
  const button = event.target.closest("button.copy-key");
  if (!button) return;
  const key = document.getElementById(button.dataset.copyTarget).textContent;
  const status = button.parentElement.querySelector(".copy-key-status");
  try {
    await navigator.clipboard.writeText(key);
    status.textContent = "Copied.";
  } catch (error) {
    status.textContent = "Select the key and copy it by hand.";
  }
});
