// Collection page: while photos are queued or running, poll the public API for the progress and,
// when it moves, for the jobs shown on this page (same page, same order), and update them.
(function () {
  const panel = document.getElementById("collection-progress");
  if (!panel || panel.dataset.finished === "true") return;
  const bar = document.getElementById("collection-bar");
  const state = document.getElementById("collection-state");
  const grid = document.getElementById("job-grid");
  const labels = { queued: "Queued", running: "Running", succeeded: "Succeeded", failed: "Failed" };
  let delay = 2000;
  let last = "";

  function showProgress(progress) {
    for (const [name, value] of Object.entries(progress)) {
      const cell = panel.querySelector('[data-count="' + name + '"]');
      if (cell) cell.textContent = String(value);
    }
    bar.max = Math.max(progress.total, 1);
    bar.value = progress.done + progress.failed;
    bar.textContent = bar.value + " / " + progress.total;
    // "Cancel queued" while some wait, "Retry failed" once some failed.
    document.querySelectorAll("[data-shown-while]").forEach((form) => {
      form.hidden = !progress[form.dataset.shownWhile];
    });
  }

  function showJob(job) {
    const card = grid && grid.querySelector('[data-job="' + job.id + '"]');
    if (!card) return;
    const badge = card.querySelector('[data-role="status"]');
    badge.className = "badge " + job.status;
    badge.textContent = labels[job.status] || job.status;
    const chips = card.querySelector('[data-role="labels"]');
    chips.replaceChildren();
    for (const label of job.labels) {
      const chip = document.createElement("span");
      chip.className = "chip";
      chip.textContent = label;
      chips.append(chip);
    }
    if (job.status === "succeeded" && !job.labels.length) {
      const none = document.createElement("span");
      none.className = "muted small";
      none.textContent = "nothing found";
      chips.append(none);
    }
  }

  async function getJson(url) {
    const response = await fetch(url, { headers: { Accept: "application/json" }, cache: "no-store", credentials: "same-origin" });
    if (!response.ok) throw Object.assign(new Error("HTTP " + response.status), { status: response.status });
    return response.json();
  }

  async function poll() {
    try {
      const collection = await getJson(panel.dataset.apiUrl);
      const key = JSON.stringify(collection.progress);
      if (key !== last) {
        last = key;
        showProgress(collection.progress);
        const page = await getJson(panel.dataset.jobsUrl);
        page.results.forEach(showJob);
      }
      if (collection.finished) {
        panel.dataset.finished = "true";
        state.textContent = "— finished";
        return;
      }
      delay = 2000;
    } catch (err) {
      if (err.status === 404) return; // deleted meanwhile
      delay = Math.min(delay * 2, 30000); // server restarting: back off, keep trying
    }
    setTimeout(poll, delay);
  }
  setTimeout(poll, delay);
})();
