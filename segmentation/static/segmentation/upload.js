// Upload page: photos, folders and ZIPs by choosing or drag and drop, sent to the public API
// with the session and its CSRF token. One photo becomes a job (POST /api/jobs/); several
// photos or a folder become ONE collection (POST /api/collections/ with `images` repeated);
// each ZIP becomes its own collection. XMLHttpRequest rather than fetch: only it reports upload
// progress. Without JavaScript the form posts the files at once and still works (one ZIP too).
import { csrfToken } from "./ui.js";

const form = document.getElementById("upload-form");
const zone = document.getElementById("dropzone");
const input = document.getElementById("id_images");
const folderInput = document.getElementById("id_folder");
const list = document.getElementById("file-list");
const progress = document.getElementById("upload-progress");
const button = document.getElementById("upload-button");
/** The server's limits, which the page states on the form. */
function limits() {
  return {
    photoBytes: Number(form.dataset.maxBytes || 0),
    files: Number(form.dataset.archiveMaxFiles || 0),
    bytes: Number(form.dataset.archiveMaxBytes || 0),
  };
}
const PHOTO_EXTENSIONS = ["jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff", "heic", "heif"];
const PLACEHOLDER = "00000000-0000-0000-0000-000000000000";

let items = []; // {file, kind: "photo" | "zip" | "skipped", problem}
let folderName = "";

function human(bytes) {
  return bytes >= 1048576 ? (bytes / 1048576).toFixed(1) + " MB" : Math.ceil(bytes / 1024) + " KB";
}

function extension(name) {
  const dot = name.lastIndexOf(".");
  return dot < 0 ? "" : name.slice(dot + 1).toLowerCase();
}

/** A photo or a ZIP by MIME type or extension (browsers leave HEIC's type empty); else skipped. */
export function kindOf(file) {
  const ext = extension(file.name);
  if (ext === "zip" || file.type === "application/zip" || file.type === "application/x-zip-compressed") return "zip";
  if (file.type.startsWith("image/") || PHOTO_EXTENSIONS.includes(ext)) return "photo";
  return "skipped";
}

/** Every entry of a directory: readEntries answers in batches (100 in Chromium) until empty. */
function readAll(reader) {
  return new Promise((resolve, reject) => {
    const entries = [];
    const next = () =>
      reader.readEntries((batch) => {
        if (!batch.length) return resolve(entries);
        entries.push(...batch);
        next();
      }, reject);
    next();
  });
}

/** The files under dropped entries (FileSystemEntry), folders walked to the bottom. */
export async function filesOf(entries) {
  const files = [];
  for (const entry of entries) {
    if (entry.isFile) files.push(await new Promise((resolve, reject) => entry.file(resolve, reject)));
    else if (entry.isDirectory) files.push(...(await filesOf(await readAll(entry.createReader()))));
  }
  return files;
}

function describe(item) {
  if (item.kind === "skipped") return ["skipped (not a photo)", "muted"];
  if (item.problem) return [item.problem, "error"];
  return [item.kind === "zip" ? "ZIP · ready" : "ready", "muted"];
}

function show() {
  list.replaceChildren();
  items.forEach((item, i) => {
    const row = document.createElement("li");
    row.className = "file-item";
    row.id = "file-" + i;
    const name = document.createElement("span");
    name.className = "file-name";
    name.textContent = item.file.name + " · " + human(item.file.size);
    const state = document.createElement("span");
    const [text, tone] = describe(item);
    state.className = "file-state " + tone;
    state.textContent = text;
    row.append(name, state);
    list.append(row);
  });
  say("");
}

function choose(files, folder = "") {
  folderName = folder;
  const { photoBytes, bytes } = limits();
  items = Array.from(files).map((file) => {
    const kind = kindOf(file);
    const limit = kind === "zip" ? bytes : kind === "photo" ? photoBytes : 0;
    const problem = limit && file.size > limit ? "too large (limit " + human(limit) + "), not sent" : "";
    return { file, kind, problem };
  });
  show();
}

function say(text, tone = "muted") {
  progress.className = "upload-progress " + tone;
  progress.textContent = text;
}

function setState(i, text, tone, url) {
  const state = document.querySelector("#file-" + i + " .file-state");
  state.className = "file-state " + tone;
  state.textContent = url ? "" : text;
  if (url) {
    const link = document.createElement("a");
    link.href = url;
    link.textContent = text;
    state.append(link);
  }
}

/** POST a form to the API; resolves {status, body, retryAfter} (status 0: no answer). */
function post(url, data, onProgress) {
  return new Promise((resolve) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", url);
    xhr.setRequestHeader("Accept", "application/json");
    xhr.setRequestHeader("X-CSRFToken", csrfToken());
    xhr.upload.addEventListener("progress", (event) => {
      if (event.lengthComputable) onProgress(Math.floor((100 * event.loaded) / event.total));
    });
    xhr.addEventListener("load", () => {
      let body = {};
      try { body = JSON.parse(xhr.responseText); } catch { /* not JSON: the status says it */ }
      resolve({ status: xhr.status, body, retryAfter: xhr.getResponseHeader("Retry-After") });
    });
    xhr.addEventListener("error", () => resolve({ status: 0, body: {}, retryAfter: null }));
    xhr.send(data);
  });
}

function failure(answer) {
  if (answer.status === 0) return "Network error: the upload did not reach the server.";
  let text = answer.body.detail || "Upload failed (" + answer.status + ").";
  if (answer.status === 429 && answer.retryAfter) text += " Retry after " + answer.retryAfter + " s.";
  return text;
}

function options() {
  const data = new FormData();
  data.append("score_threshold", form.elements.score_threshold.value);
  data.append("model", form.elements.model.value);
  return data;
}

/** One upload: its form, what it is called while it travels, and where its page will be. */
async function send(url, data, label, page) {
  const answer = await post(url, data, (percent) =>
    say(percent < 100 ? "Uploading " + label + "… " + percent + "%" : "Processing " + label + "…"));
  if (answer.status === 201 && answer.body.id) return { url: page.replace(PLACEHOLDER, answer.body.id) };
  return { error: failure(answer) };
}

function sendJob(i) {
  const data = options();
  data.append("image", items[i].file, items[i].file.name);
  if (form.elements.precision) data.append("precision", form.elements.precision.value);
  return send(form.dataset.apiUrl, data, items[i].file.name, form.dataset.jobUrl);
}

function sendPhotos(indexes) {
  const data = options();
  indexes.forEach((i) => data.append("images", items[i].file, items[i].file.name));
  if (folderName) data.append("name", folderName);
  const label = folderName || indexes.length + " photos";
  return send(form.dataset.collectionApiUrl, data, label, form.dataset.collectionUrl);
}

function sendArchive(i) {
  const data = options();
  data.append("archive", items[i].file, items[i].file.name);
  data.append("name", items[i].file.name.replace(/\.zip$/i, ""));
  return send(form.dataset.collectionApiUrl, data, items[i].file.name, form.dataset.collectionUrl);
}

/** Why the photos cannot go in one request, before sending megabytes the server would refuse. */
function overLimits(indexes) {
  const limit = limits();
  const bytes = indexes.reduce((sum, i) => sum + items[i].file.size, 0);
  if (indexes.length <= limit.files && bytes <= limit.bytes) return "";
  return indexes.length + " photos (" + human(bytes) + ") are more than one upload takes (at most " +
    limit.files + " photos and " + human(limit.bytes) + "): nothing was sent. Send them in " +
    "several parts, for example as several ZIPs.";
}

async function submit() {
  const wanted = (kind) => items.flatMap((item, i) => (item.kind === kind && !item.problem ? [i] : []));
  const photos = wanted("photo");
  const zips = wanted("zip");
  if (!photos.length && !zips.length) return say("Nothing to send: choose photos, a folder or a ZIP.", "error");
  const tooMany = overLimits(photos);
  if (tooMany) return say(tooMany, "error");

  const pages = [];
  const report = (result, i) => {
    if (result.url) pages.push(result.url);
    if (i !== undefined) setState(i, result.error || "queued — view", result.error ? "error" : "", result.url);
    return result.error;
  };
  let errors = [];
  if (photos.length === 1 && !zips.length && !folderName) {
    errors.push(report(await sendJob(photos[0]), photos[0]));
  } else if (photos.length) {
    const result = await sendPhotos(photos);
    errors.push(report(result));
    photos.forEach((i) => setState(i, result.error ? "not sent" : "sent", result.error ? "error" : "muted"));
  }
  for (const i of zips) errors.push(report(await sendArchive(i), i));
  errors = errors.filter(Boolean);
  if (errors.length) return say(errors.join(" "), "error");
  window.location.href = pages.length === 1 ? pages[0] : form.dataset.collectionsUrl;
}

/** A folder chosen with the folder input: its name is the first part of each relative path. */
function chooseFolder() {
  const first = folderInput.files[0];
  choose(folderInput.files, first ? first.webkitRelativePath.split("/")[0] : "");
}

/** Dropped files and folders. Entries must be taken during the drop event: the browser
 * empties the DataTransfer once the handler returns. */
async function dropped(transfer) {
  const entries = Array.from(transfer.items || [])
    .map((item) => item.webkitGetAsEntry && item.webkitGetAsEntry())
    .filter(Boolean);
  if (!entries.some((entry) => entry.isDirectory)) return choose(transfer.files);
  say("Reading the folder…");
  const folders = entries.filter((entry) => entry.isDirectory);
  try {
    choose(await filesOf(entries), folders.length === 1 ? folders[0].name : "");
  } catch {
    say("This folder could not be read.", "error");
  }
}

if (form && input) {
  folderInput.closest("[hidden]")?.removeAttribute("hidden"); // only useful with JavaScript
  input.addEventListener("change", () => choose(input.files));
  folderInput.addEventListener("change", chooseFolder);
  ["dragenter", "dragover"].forEach((type) =>
    zone.addEventListener(type, (event) => { event.preventDefault(); zone.classList.add("dragging"); }));
  ["dragleave", "drop"].forEach((type) =>
    zone.addEventListener(type, (event) => { event.preventDefault(); zone.classList.remove("dragging"); }));
  zone.addEventListener("drop", (event) => dropped(event.dataTransfer));

  form.addEventListener("submit", async (event) => {
    if (!items.length) return; // let the server say "choose at least one photo"
    event.preventDefault();
    button.disabled = true;
    try {
      await submit();
    } finally {
      button.disabled = false;
    }
  });
}
