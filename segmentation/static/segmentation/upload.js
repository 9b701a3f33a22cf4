// Upload page: drag and drop, then one POST /api/jobs/ per photo (the public API, with the
// session and its CSRF token) so that each gets its own result or error next to its name.
// Without JavaScript the form posts all files at once and still works.
import { csrfToken } from "./ui.js";

const form = document.getElementById("upload-form");
const zone = document.getElementById("dropzone");
const input = document.getElementById("id_images");
const list = document.getElementById("file-list");
const button = document.getElementById("upload-button");
const maxBytes = Number(form?.dataset.maxBytes || 0);
let files = [];

function human(bytes) {
  return bytes >= 1048576 ? (bytes / 1048576).toFixed(1) + " MB" : Math.ceil(bytes / 1024) + " KB";
}

function show() {
  list.replaceChildren();
  files.forEach((file, i) => {
    const item = document.createElement("li");
    item.className = "file-item";
    item.id = "file-" + i;
    const name = document.createElement("span");
    name.className = "file-name";
    name.textContent = file.name + " · " + human(file.size);
    const state = document.createElement("span");
    const tooLarge = maxBytes && file.size > maxBytes;
    state.className = tooLarge ? "file-state error" : "file-state muted";
    state.textContent = tooLarge ? "too large (limit " + human(maxBytes) + ")" : "ready";
    item.append(name, state);
    list.append(item);
  });
}

function choose(fileList) {
  files = Array.from(fileList);
  show();
}

/** The job page of a job the API created (the page gives its URL pattern). */
function jobPage(id) {
  return form.dataset.jobUrl.replace("00000000-0000-0000-0000-000000000000", id);
}

async function send(file, i) {
  const state = document.querySelector("#file-" + i + " .file-state");
  const data = new FormData();
  data.append("image", file, file.name);
  data.append("score_threshold", form.elements.score_threshold.value);
  data.append("model", form.elements.model.value);
  if (form.elements.precision) data.append("precision", form.elements.precision.value);
  state.className = "file-state muted";
  state.textContent = "uploading…";
  try {
    const response = await fetch(form.dataset.apiUrl, {
      method: "POST",
      body: data,
      credentials: "same-origin",
      headers: { Accept: "application/json", "X-CSRFToken": csrfToken() },
    });
    const result = await response.json().catch(() => ({}));
    if (response.status === 201 && result.id) {
      const url = jobPage(result.id);
      const link = document.createElement("a");
      link.href = url;
      link.textContent = "queued — view";
      state.className = "file-state";
      state.replaceChildren(link);
      return url;
    }
    state.className = "file-state error";
    state.textContent = result.detail || "Upload failed (" + response.status + ").";
  } catch (err) {
    state.className = "file-state error";
    state.textContent = "Network error: the upload did not reach the server.";
  }
  return null;
}

if (form && input) {
  input.addEventListener("change", () => choose(input.files));
  ["dragenter", "dragover"].forEach((type) =>
    zone.addEventListener(type, (event) => { event.preventDefault(); zone.classList.add("dragging"); }));
  ["dragleave", "drop"].forEach((type) =>
    zone.addEventListener(type, (event) => { event.preventDefault(); zone.classList.remove("dragging"); }));
  zone.addEventListener("drop", (event) => choose(event.dataTransfer.files));

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
}
