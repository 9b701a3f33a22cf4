// Job page: while the job is queued or running, poll its status and swap in the new body.
(function () {
  const body = document.getElementById("job-body");
  if (!body || body.dataset.finished === "true") return;
  const url = body.dataset.statusUrl;
  let delay = 1000;

  async function poll() {
    try {
      const response = await fetch(url, { headers: { Accept: "application/json" }, cache: "no-store" });
      if (response.ok) {
        const data = await response.json();
        body.innerHTML = data.html;
        if (data.finished) {
          body.dataset.finished = "true";
          return;
        }
        delay = 1000;
      } else if (response.status === 404) {
        return; // deleted meanwhile
      }
    } catch (err) {
      delay = Math.min(delay * 2, 15000); // server restarting: back off, keep trying
    }
    setTimeout(poll, delay);
  }
  setTimeout(poll, delay);
})();
