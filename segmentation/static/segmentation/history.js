// History: colour the class chips, and keep the statuses of waiting jobs current without a
// reload: one request for the whole page (GET /api/jobs/?id=...), only while some wait.
import { announce, csrfToken, inkFor, paintColours } from "./ui.js";

const grid = document.getElementById("job-grid");
const status = document.getElementById("history-status");
const FINISHED = new Set(["succeeded", "failed"]);
const LABELS = { queued: "Queued", running: "Running", succeeded: "Succeeded", failed: "Failed" };
paintColours();

function waiting() {
  return [...grid.querySelectorAll(".job-card")].filter((card) => !FINISHED.has(card.dataset.status));
}

function update(card, job) {
  if (job.status === card.dataset.status) return;
  card.dataset.status = job.status;
  const badge = card.querySelector("[data-badge]");
  badge.className = `badge ${job.status}`;
  badge.textContent = LABELS[job.status] || job.status;
  const name = card.querySelector(".card-title a").textContent.trim();
  if (!FINISHED.has(job.status)) return;
  const chips = card.querySelector("[data-chips]");
  chips.replaceChildren();
  for (const c of job.classes) {
    const chip = document.createElement("a");
    chip.className = "chip";
    chip.href = `?has=${encodeURIComponent(c.label)}`;
    chip.dataset.colour = c.colour;
    chip.dataset.ink = inkFor(c.colour);
    chip.setAttribute("aria-label", `${c.count} ${c.label}`);
    const count = document.createElement("span");
    count.className = "chip-count";
    count.textContent = String(c.count);
    chip.append(`${c.label} `, count);
    chips.append(chip);
  }
  if (job.status === "succeeded" && !job.classes.length) {
    const none = document.createElement("span");
    none.className = "muted small";
    none.textContent = "nothing found";
    chips.append(none);
  }
  paintColours(card);
  const thumb = card.querySelector("img.thumb");
  if (thumb && job.thumbnail_url) thumb.src = job.thumbnail_url;
  announce(status, `${name}: ${LABELS[job.status].toLowerCase()}.`);
}

async function poll(delay) {
  const cards = waiting();
  if (!cards.length) return;
  if (document.hidden) {
    window.setTimeout(() => poll(delay), delay);
    return;
  }
  const ids = cards.map((card) => card.dataset.job);
  const url = `${grid.dataset.apiUrl}?page_size=100&id=${ids.join(",")}`;
  try {
    const response = await fetch(url, { headers: { Accept: "application/json" }, credentials: "same-origin", cache: "no-store" });
    if (response.ok) {
      const body = await response.json();
      const byId = new Map(body.results.map((job) => [job.id, job]));
      for (const card of cards) {
        const job = byId.get(card.dataset.job);
        if (job) update(card, job);
      }
      delay = 2000;
    } else {
      delay = Math.min(delay * 2, 30000);
    }
  } catch (err) {
    delay = Math.min(delay * 2, 30000); // server restarting: back off, keep trying
  }
  window.setTimeout(() => poll(delay), delay);
}

if (grid) window.setTimeout(() => poll(2000), 2000);

// Export "what I am looking at": the page's filters go to POST /api/exports/, then the export's
// progress is polled until its download link is ready. Without JavaScript the form posts to the
// page route, which starts the same export and lists it under "Your exports".
const exportForm = document.getElementById("export-form");

async function startExport(event) {
  event.preventDefault();
  const button = document.getElementById("export-button");
  const box = document.getElementById("export-progress");
  const meter = document.getElementById("export-meter");
  const statusLine = document.getElementById("export-status");
  const link = document.getElementById("export-download");
  const filters = JSON.parse(document.getElementById("export-filters").textContent);
  const format = document.getElementById("export-format").value;
  button.disabled = true;
  box.hidden = false;
  link.hidden = true;
  meter.removeAttribute("value");
  announce(statusLine, "Starting the export…");
  let response;
  try {
    response = await fetch(exportForm.dataset.apiUrl, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", Accept: "application/json", "X-CSRFToken": csrfToken() },
      body: JSON.stringify({ format, filters }),
    });
  } catch (err) {
    announce(statusLine, "The server cannot be reached; try again.");
    button.disabled = false;
    return;
  }
  const body = await response.json().catch(() => ({}));
  if (response.status !== 202) {
    announce(statusLine, `Not started: ${body.detail || `the server answered ${response.status}`}`);
    button.disabled = false;
    return;
  }
  followExport(body.url, { button, meter, statusLine, link });
}

async function followExport(url, ui, delay = 1000) {
  let body;
  try {
    const response = await fetch(url, { headers: { Accept: "application/json" }, credentials: "same-origin", cache: "no-store" });
    if (!response.ok) throw new Error(String(response.status));
    body = await response.json();
  } catch (err) {
    window.setTimeout(() => followExport(url, ui, Math.min(delay * 2, 15000)), delay);
    return;
  }
  const { done, total } = body.progress;
  ui.meter.max = Math.max(total, 1);
  ui.meter.value = done;
  if (body.status === "succeeded") {
    ui.link.href = body.download_url;
    ui.link.hidden = false;
    ui.button.disabled = false;
    announce(ui.statusLine, `Export ready: ${total} job${total === 1 ? "" : "s"}.`);
    return;
  }
  if (body.status === "failed") {
    ui.button.disabled = false;
    announce(ui.statusLine, `Export failed: ${body.error}`);
    return;
  }
  ui.statusLine.textContent = body.status === "queued" ? "Waiting for a worker…" : `Exporting: ${done} of ${total} jobs…`;
  window.setTimeout(() => followExport(url, ui, 1000), 1000);
}

if (exportForm) exportForm.addEventListener("submit", startExport);
