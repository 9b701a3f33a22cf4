// History: colour the class chips, and keep the statuses of waiting jobs current without a
// reload: one request for the whole page (GET /api/jobs/?id=...), only while some wait.
import { announce, inkFor, paintColours } from "./ui.js";

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
    chip.href = `?label=${encodeURIComponent(c.label)}`;
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
