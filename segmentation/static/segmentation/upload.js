// Upload page: drag and drop, then one request per photo so that each gets its own result or
// error next to its name. Without JavaScript the form posts all files at once and still works.
(function () {
  const form = document.getElementById("upload-form");
  const zone = document.getElementById("dropzone");
  const input = document.getElementById("id_images");
  const list = document.getElementById("file-list");
  const button = document.getElementById("upload-button");
  if (!form || !input) return;
  const maxBytes = Number(form.dataset.maxBytes || 0);
  let files = [];

  function human(bytes) {
    return bytes >= 1048576 ? (bytes / 1048576).toFixed(1) + " MB" : Math.ceil(bytes / 1024) + " KB";
  }

  function show() {
    list.innerHTML = "";
    files.forEach((file, i) => {
      const item = document.createElement("li");
      item.className = "file-item";
      item.id = "file-" + i;
      const name = document.createElement("span");
      name.className = "file-name";
      name.textContent = file.name + " · " + human(file.size);
      const state = document.createElement("span");
      state.className = "file-state muted";
      state.textContent = maxBytes && file.size > maxBytes ? "too large (limit " + human(maxBytes) + ")" : "ready";
      if (maxBytes && file.size > maxBytes) state.className = "file-state error";
      item.append(name, state);
      list.append(item);
    });
  }

  function choose(fileList) {
    files = Array.from(fileList).filter((f) => f.size >= 0);
    show();
  }

  input.addEventListener("change", () => choose(input.files));
  ["dragenter", "dragover"].forEach((type) =>
    zone.addEventListener(type, (event) => { event.preventDefault(); zone.classList.add("dragging"); }));
  ["dragleave", "drop"].forEach((type) =>
    zone.addEventListener(type, (event) => { event.preventDefault(); zone.classList.remove("dragging"); }));
  zone.addEventListener("drop", (event) => choose(event.dataTransfer.files));

  async function send(file, i) {
    const state = document.querySelector("#file-" + i + " .file-state");
    const data = new FormData();
    data.append("images", file, file.name);
    data.append("score_threshold", form.elements.score_threshold.value);
    data.append("model", form.elements.model.value);
    if (form.elements.precision) data.append("precision", form.elements.precision.value);
    data.append("csrfmiddlewaretoken", form.elements.csrfmiddlewaretoken.value);
    state.className = "file-state muted";
    state.textContent = "uploading…";
    try {
      const response = await fetch(form.action, { method: "POST", body: data, headers: { Accept: "application/json" } });
      const result = await response.json().catch(() => ({ jobs: [], errors: [{ error: "Unexpected answer (" + response.status + ")." }] }));
      if (result.jobs && result.jobs.length) {
        state.className = "file-state";
        state.innerHTML = "";
        const link = document.createElement("a");
        link.href = result.jobs[0].url;
        link.textContent = "queued — view";
        state.append(link);
        return result.jobs[0].url;
      }
      state.className = "file-state error";
      state.textContent = (result.errors && result.errors[0] && result.errors[0].error) || "Upload failed.";
    } catch (err) {
      state.className = "file-state error";
      state.textContent = "Network error: the upload did not reach the server.";
    }
    return null;
  }

  form.addEventListener("submit", async (event) => {
    if (!files.length) return; // let the server say "choose at least one photo"
    event.preventDefault();
    button.disabled = true;
    const urls = [];
    for (let i = 0; i < files.length; i++) {
      const url = await send(files[i], i);
      if (url) urls.push(url);
    }
    button.disabled = false;
    const failed = urls.length < files.length;
    if (!failed && urls.length === 1) window.location.href = urls[0];
    else if (!failed) window.location.href = form.dataset.historyUrl || "/jobs/";
  });
})();
