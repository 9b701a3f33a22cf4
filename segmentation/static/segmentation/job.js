// Job page: while the job is queued or running, poll its status and swap in the new body;
// once it has succeeded, start the viewer on it.
import { confirmForms } from "./ui.js";
import { initViewer } from "./viewer.js";

const body = document.getElementById("job-body");
let lastHtml = null;
confirmForms();

function start() {
  initViewer(document.getElementById("viewer"));
}

async function poll(url, delay) {
  try {
    const response = await fetch(url, { headers: { Accept: "application/json" }, cache: "no-store" });
    if (response.ok) {
      const data = await response.json();
      if (data.html !== lastHtml) {
        body.innerHTML = data.html; // only when it changed: no flicker while waiting
        lastHtml = data.html;
      }
      if (data.finished) {
        body.dataset.finished = "true";
        start();
        return;
      }
      delay = 1000;
    } else if (response.status === 404) {
      return; // deleted meanwhile
    }
  } catch (err) {
    delay = Math.min(delay * 2, 15000); // server restarting: back off, keep trying
  }
  window.setTimeout(() => poll(url, delay), delay);
}

if (body) {
  if (body.dataset.finished === "true") start();
  else window.setTimeout(() => poll(body.dataset.statusUrl, 1000), 1000);
}
