// The job page's viewer: the photo with every kept instance's mask drawn in the browser.
//
// Masks arrive as COCO RLE in the page (no extra request) and are decoded once into small
// per-instance canvases at the preview's scale; a repaint (slider step, hover, class toggle,
// pan) only clears one screen-sized canvas and draws the visible instances' canvases on it.
// The photo itself is an <img> under the canvas, moved by a CSS transform: it is never redrawn.

import { decodeMask } from "./rle.js";
import { announce, csrfToken, hexToRgb, inkFor, paintColours } from "./ui.js";

const MASK_SIDE = 1600; // masks are decoded at most this many pixels on the photo's long side
const SAVE_DELAY_MS = 700; // the threshold is saved once the slider has rested this long
const MAX_ZOOM = 8; // screen pixels per photo pixel, at most

export function initViewer(root) {
  const dataNode = document.getElementById("viewer-data");
  if (!root || !dataNode) return null;
  const started = performance.now();
  const data = JSON.parse(dataNode.textContent);
  const viewer = new Viewer(root, data, started);
  window.segwebViewer = viewer; // for the browser tests and bench/viewer.py
  return viewer;
}

class Viewer {
  constructor(root, data, started) {
    this.root = root;
    this.data = data;
    this.W = data.width;
    this.H = data.height;
    this.s = Math.min(1, MASK_SIDE / Math.max(this.W, this.H));
    this.threshold = data.threshold;
    this.savedThreshold = data.threshold;
    this.opacity = Number(root.querySelector("#opacity").value);
    this.view = "overlay";
    this.hover = null;
    this.pinned = null;
    this.activeRow = null;
    this.classOn = new Map(data.classes.map(([label]) => [label, true]));
    this.stats = { firstDrawMs: null, decodeMs: null, lastDrawMs: null, lastWorkMs: null, draws: 0 };

    this.stage = root.querySelector("#stage");
    this.photo = root.querySelector("#stage-photo");
    this.canvas = root.querySelector("#stage-masks");
    this.ctx = this.canvas.getContext("2d");
    this.box = root.querySelector("#stage-box");
    this.tag = root.querySelector("#stage-tag");
    this.status = root.querySelector("#viewer-status");
    this.slider = root.querySelector("#threshold");
    this.sliderValue = root.querySelector("#threshold-value");
    this.opacityInput = root.querySelector("#opacity");
    this.page = root.parentElement;

    this.stage.hidden = false;
    paintColours(this.page);
    const t0 = performance.now();
    this.instances = data.instances.map((row) => this.makeInstance(row));
    this.stats.decodeMs = performance.now() - t0;
    this.byRank = new Map(this.instances.map((inst) => [inst.rank, inst]));
    this.drawOrder = [...this.instances].reverse(); // lowest score first: the best ends on top
    this.pickOrder = [...this.instances].sort((a, b) => a.area - b.area); // smallest wins
    for (const row of this.page.querySelectorAll("#detections tbody tr")) {
      const inst = this.byRank.get(Number(row.dataset.rank));
      if (inst) inst.row = row;
    }
    this.zoom = { z: 1, tx: 0, ty: 0, fitted: true };
    this.layout();
    this.updateVisibility();
    this.draw();
    this.stats.firstDrawMs = performance.now() - started;
    this.bind();
  }

  makeInstance([rank, label, score, x1, y1, x2, y2, area, colour, counts]) {
    const inst = { rank, label, score, box: [x1, y1, x2, y2], area, colour, visible: true, row: null };
    inst.mask = decodeMask(counts, this.H, this.W, this.s);
    inst.canvas = inst.mask ? maskCanvas(inst.mask, colour) : null;
    return inst;
  }

  // --- State changes -------------------------------------------------------------------------

  updateVisibility() {
    const perClass = new Map();
    let shown = 0;
    for (const inst of this.instances) {
      const above = inst.score >= this.threshold - 1e-9;
      if (above) {
        shown += 1;
        perClass.set(inst.label, (perClass.get(inst.label) || 0) + 1);
      }
      const visible = above && this.classOn.get(inst.label);
      if (visible !== inst.visible) {
        inst.visible = visible;
        if (inst.row) inst.row.hidden = !visible;
      }
    }
    for (const el of this.page.querySelectorAll("[data-count-for]")) {
      const count = perClass.get(el.dataset.countFor) || 0;
      el.textContent = String(count);
      el.classList.toggle("zero", count === 0);
    }
    setText(this.page, "#shown-count", String(shown));
    setText(this.page, "#shown-noun", shown === 1 ? "instance" : "instances");
    setText(this.page, "#shown-threshold", this.threshold.toFixed(2));
    const nothing = this.page.querySelector("#nothing-shown");
    if (nothing) nothing.hidden = shown > 0;
    for (const which of ["hover", "pinned"]) {
      if (this[which] && !this[which].visible) this[which] = null;
    }
    this.shownCount = shown;
  }

  setThreshold(value) {
    const t0 = performance.now();
    this.threshold = value;
    this.sliderValue.textContent = value.toFixed(2);
    this.updateVisibility();
    this.draw();
    this.stats.lastWorkMs = performance.now() - t0;
    this.scheduleSave();
  }

  focusOn(inst, { pin = false, announceIt = false, reveal = false } = {}) {
    const t0 = performance.now();
    if (pin) this.pinned = inst;
    else this.hover = inst;
    if (reveal && inst) this.reveal(inst);
    this.draw();
    this.stats.lastWorkMs = performance.now() - t0;
    if (announceIt && inst) {
      announce(this.status, `${pin ? "Pinned" : ""} ${inst.label} #${inst.rank + 1}, score ${inst.score.toFixed(2)}.`.trim());
    }
  }

  get focus() {
    return this.pinned || this.hover;
  }

  step(direction) {
    const visible = this.instances.filter((inst) => inst.visible);
    if (!visible.length) return;
    const current = visible.indexOf(this.focus);
    const next = current < 0
      ? (direction > 0 ? 0 : visible.length - 1)
      : (current + direction + visible.length) % visible.length;
    this.hover = null;
    this.focusOn(visible[next], { pin: true, announceIt: true, reveal: true });
    if (visible[next].row) visible[next].row.scrollIntoView({ block: "nearest" });
  }

  setView(view) {
    this.view = view;
    this.stage.classList.toggle("masks-only", view === "masks");
    this.stage.classList.toggle("photo-only", view === "photo");
    for (const button of this.root.querySelectorAll("[data-view]")) {
      button.setAttribute("aria-pressed", String(button.dataset.view === view));
    }
    this.draw();
    const names = { photo: "Photo only", overlay: "Overlay shown", masks: "Masks only" };
    announce(this.status, names[view] + ".");
  }

  // --- Drawing -------------------------------------------------------------------------------

  layout() {
    const width = this.stage.clientWidth;
    const maxHeight = Math.max(260, window.innerHeight * 0.72);
    const height = Math.round(Math.min(width * this.H / this.W, maxHeight));
    this.stage.style.height = `${height}px`;
    this.cssW = this.stage.clientWidth;
    this.cssH = height;
    const dpr = window.devicePixelRatio || 1;
    this.dpr = dpr;
    this.canvas.width = Math.round(this.cssW * dpr);
    this.canvas.height = Math.round(this.cssH * dpr);
    this.photo.style.width = `${this.W}px`;
    this.photo.style.height = `${this.H}px`;
    if (this.zoom.fitted) this.fit(false);
    else this.clampPan();
    this.applyTransform();
  }

  fitScale() {
    return Math.min(this.cssW / this.W, this.cssH / this.H);
  }

  fit(redraw = true) {
    const z = this.fitScale();
    this.zoom = { z, tx: (this.cssW - this.W * z) / 2, ty: (this.cssH - this.H * z) / 2, fitted: true };
    if (redraw) {
      this.applyTransform();
      this.draw();
    }
  }

  zoomBy(factor, cx = this.cssW / 2, cy = this.cssH / 2) {
    const { z, tx, ty } = this.zoom;
    const next = Math.min(MAX_ZOOM, Math.max(this.fitScale(), z * factor));
    if (next === z) return;
    this.zoom = { z: next, tx: cx - (cx - tx) * next / z, ty: cy - (cy - ty) * next / z, fitted: false };
    if (next <= this.fitScale() + 1e-9) {
      this.fit();
      return;
    }
    this.clampPan();
    this.applyTransform();
    this.draw();
    this.loadFullPhotoIfNeeded();
  }

  panBy(dx, dy) {
    this.zoom.tx += dx;
    this.zoom.ty += dy;
    this.clampPan();
    this.applyTransform();
    this.draw();
  }

  clampPan() {
    const { z } = this.zoom;
    const w = this.W * z;
    const h = this.H * z;
    this.zoom.tx = w <= this.cssW ? (this.cssW - w) / 2 : Math.min(0, Math.max(this.cssW - w, this.zoom.tx));
    this.zoom.ty = h <= this.cssH ? (this.cssH - h) / 2 : Math.min(0, Math.max(this.cssH - h, this.zoom.ty));
  }

  reveal(inst) {
    // Keyboard stepping on a zoomed photo: bring the instance into view.
    if (this.zoom.fitted) return;
    const [x1, y1, x2, y2] = inst.box;
    const { z, tx, ty } = this.zoom;
    const inside = tx + x1 * z >= 0 && ty + y1 * z >= 0 && tx + x2 * z <= this.cssW && ty + y2 * z <= this.cssH;
    if (inside) return;
    this.zoom.tx = this.cssW / 2 - ((x1 + x2) / 2) * z;
    this.zoom.ty = this.cssH / 2 - ((y1 + y2) / 2) * z;
    this.clampPan();
    this.applyTransform();
  }

  applyTransform() {
    const { z, tx, ty } = this.zoom;
    this.photo.style.transform = `translate(${tx}px, ${ty}px) scale(${z})`;
    this.stage.classList.toggle("zoomed", !this.zoom.fitted);
  }

  loadFullPhotoIfNeeded() {
    if (this.fullRequested || !this.photo.naturalWidth) return;
    const previewScale = this.photo.naturalWidth / this.W;
    if (this.zoom.z * this.dpr <= previewScale * 1.25) return;
    this.fullRequested = true;
    const full = new Image();
    full.onload = () => { this.photo.src = full.src; };
    full.src = this.root.dataset.imageUrl;
  }

  draw() {
    const t0 = performance.now();
    const { ctx, canvas } = this;
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    const focus = this.focus;
    if (this.view !== "photo") {
      const { z, tx, ty } = this.zoom;
      const k = (this.dpr * z) / this.s;
      ctx.setTransform(k, 0, 0, k, this.dpr * tx, this.dpr * ty);
      ctx.imageSmoothingEnabled = k < 1;
      const base = this.view === "masks" ? 1 : this.opacity;
      const dimmed = focus ? base * 0.8 : base;
      ctx.globalAlpha = dimmed;
      for (const inst of this.drawOrder) {
        if (inst.visible && inst.canvas && inst !== focus) ctx.drawImage(inst.canvas, inst.mask.x, inst.mask.y);
      }
      if (focus && focus.canvas) {
        ctx.globalAlpha = Math.min(1, base + 0.3);
        ctx.drawImage(focus.canvas, focus.mask.x, focus.mask.y);
      }
      ctx.globalAlpha = 1;
    }
    this.drawFocus(focus);
    this.markRow(focus);
    this.stats.lastDrawMs = performance.now() - t0;
    this.stats.draws += 1;
  }

  drawFocus(inst) {
    if (!inst) {
      this.box.hidden = true;
      this.tag.hidden = true;
      return;
    }
    const { z, tx, ty } = this.zoom;
    const [x1, y1, x2, y2] = inst.box;
    const left = tx + x1 * z;
    const top = ty + y1 * z;
    const width = (x2 - x1) * z;
    const height = (y2 - y1) * z;
    Object.assign(this.box.style, { left: `${left}px`, top: `${top}px`, width: `${width}px`, height: `${height}px` });
    this.box.style.setProperty("--c", inst.colour);
    this.box.hidden = false;
    this.tag.textContent = `${inst.label} ${inst.score.toFixed(2)}${this.pinned === inst ? " · pinned" : ""}`;
    this.tag.style.setProperty("--c", inst.colour);
    this.tag.style.setProperty("--ink", inkFor(inst.colour));
    this.tag.hidden = false;
    // Above the box when there is room, else inside it; never past the stage's edges.
    const tagW = this.tag.offsetWidth;
    const tagH = this.tag.offsetHeight;
    const x = Math.min(Math.max(left, 2), this.cssW - tagW - 2);
    const y = top - tagH - 2 >= 0 ? top - tagH - 2 : Math.min(Math.max(top + 2, 2), this.cssH - tagH - 2);
    this.tag.style.left = `${x}px`;
    this.tag.style.top = `${y}px`;
  }

  markRow(inst) {
    const row = inst ? inst.row : null;
    if (this.activeRow && this.activeRow !== row) this.activeRow.classList.remove("active", "pinned");
    this.activeRow = row;
    if (!row) return;
    row.classList.add("active");
    row.classList.toggle("pinned", this.pinned === inst);
  }

  // --- Pointer, keyboard and controls --------------------------------------------------------

  pick(clientX, clientY) {
    const rect = this.stage.getBoundingClientRect();
    const { z, tx, ty } = this.zoom;
    const ix = (clientX - rect.left - tx) / z;
    const iy = (clientY - rect.top - ty) / z;
    const mx = Math.floor(ix * this.s);
    const my = Math.floor(iy * this.s);
    for (const inst of this.pickOrder) {
      if (!inst.visible || !inst.mask) continue;
      const m = inst.mask;
      const lx = mx - m.x;
      const ly = my - m.y;
      if (lx >= 0 && ly >= 0 && lx < m.w && ly < m.h && m.bits[ly * m.w + lx]) return inst;
    }
    return null;
  }

  bind() {
    const stage = this.stage;
    const pointers = new Map();
    let drag = null;
    stage.addEventListener("pointerdown", (event) => {
      pointers.set(event.pointerId, { x: event.clientX, y: event.clientY });
      drag = { x: event.clientX, y: event.clientY, moved: false, distance: pinchDistance(pointers) };
      stage.setPointerCapture(event.pointerId);
    });
    stage.addEventListener("pointermove", (event) => {
      const previous = pointers.get(event.pointerId);
      if (previous && drag) {
        pointers.set(event.pointerId, { x: event.clientX, y: event.clientY });
        if (pointers.size === 2) {
          const distance = pinchDistance(pointers);
          if (drag.distance) {
            const rect = stage.getBoundingClientRect();
            const [a, b] = [...pointers.values()];
            this.zoomBy(distance / drag.distance, (a.x + b.x) / 2 - rect.left, (a.y + b.y) / 2 - rect.top);
          }
          drag.distance = distance;
          drag.moved = true;
          return;
        }
        const dx = event.clientX - previous.x;
        const dy = event.clientY - previous.y;
        if (Math.abs(event.clientX - drag.x) + Math.abs(event.clientY - drag.y) > 4) drag.moved = true;
        if (drag.moved && !this.zoom.fitted) this.panBy(dx, dy);
        return;
      }
      if (event.pointerType === "mouse" && !this.pinned) {
        const t0 = performance.now();
        const inst = this.pick(event.clientX, event.clientY);
        if (inst !== this.hover) this.focusOn(inst);
        this.stats.lastWorkMs = performance.now() - t0;
      }
    });
    const release = (event) => {
      const wasDrag = drag && drag.moved;
      pointers.delete(event.pointerId);
      if (pointers.size === 0) {
        if (drag && !wasDrag && event.type === "pointerup") {
          const inst = this.pick(event.clientX, event.clientY);
          this.hover = null;
          this.focusOn(inst && inst !== this.pinned ? inst : null, { pin: true, announceIt: true });
          if (!inst) announce(this.status, "Nothing pinned.");
        }
        drag = null;
      }
    };
    stage.addEventListener("pointerup", release);
    stage.addEventListener("pointercancel", release);
    stage.addEventListener("pointerleave", (event) => {
      if (event.pointerType === "mouse" && this.hover && !this.pinned) this.focusOn(null);
    });
    stage.addEventListener("wheel", (event) => {
      if (!event.ctrlKey && !event.metaKey) return; // plain wheel scrolls the page
      event.preventDefault();
      const rect = stage.getBoundingClientRect();
      this.zoomBy(Math.exp(-event.deltaY * 0.002), event.clientX - rect.left, event.clientY - rect.top);
    }, { passive: false });
    stage.addEventListener("keydown", (event) => this.onKey(event));

    for (const button of this.root.querySelectorAll("[data-view]")) {
      button.addEventListener("click", () => this.setView(button.dataset.view));
    }
    for (const button of this.root.querySelectorAll("[data-zoom]")) {
      button.addEventListener("click", () => {
        const how = button.dataset.zoom;
        if (how === "fit") this.fit();
        else this.zoomBy(how === "in" ? 1.5 : 1 / 1.5);
      });
    }
    this.opacityInput.addEventListener("input", () => {
      this.opacity = Number(this.opacityInput.value);
      this.draw();
    });
    this.slider.addEventListener("input", () => this.setThreshold(Number(this.slider.value)));
    for (const box of this.root.querySelectorAll(".class-toggle input")) {
      box.addEventListener("change", () => {
        this.classOn.set(box.dataset.label, box.checked);
        this.updateVisibility();
        this.draw();
        announce(this.status, `${box.dataset.label} ${box.checked ? "shown" : "hidden"}.`);
      });
    }
    for (const inst of this.instances) {
      const row = inst.row;
      if (!row) continue;
      row.addEventListener("mouseenter", () => { if (!this.pinned) this.focusOn(inst); });
      row.addEventListener("mouseleave", () => { if (!this.pinned && this.hover === inst) this.focusOn(null); });
      row.addEventListener("focus", () => { if (!this.pinned) this.focusOn(inst, { announceIt: true }); });
      row.addEventListener("blur", () => { if (!this.pinned && this.hover === inst) this.focusOn(null); });
      row.addEventListener("click", () => this.togglePin(inst));
      row.addEventListener("keydown", (event) => this.onRowKey(event, inst));
    }
    new ResizeObserver(() => {
      if (Math.abs(this.stage.clientWidth - this.cssW) > 1) {
        this.layout();
        this.draw();
      }
    }).observe(this.stage);
    window.addEventListener("pagehide", () => this.flushSave());
  }

  togglePin(inst) {
    const pin = this.pinned === inst ? null : inst;
    this.hover = pin ? null : inst;
    this.focusOn(pin, { pin: true });
    announce(this.status, pin ? `Pinned ${inst.label} #${inst.rank + 1}, score ${inst.score.toFixed(2)}.` : "Unpinned.");
  }

  onKey(event) {
    const key = event.key;
    if (key === "ArrowRight" || key === "ArrowDown") this.step(1);
    else if (key === "ArrowLeft" || key === "ArrowUp") this.step(-1);
    else if (key === "Escape") {
      this.hover = null;
      this.focusOn(null, { pin: true });
      announce(this.status, "Nothing pinned.");
    } else if (key === "o" || key === "O") this.setView(this.view === "photo" ? "overlay" : "photo");
    else if (key === "+" || key === "=") this.zoomBy(1.5);
    else if (key === "-" || key === "_") this.zoomBy(1 / 1.5);
    else if (key === "0") this.fit();
    else return;
    event.preventDefault();
  }

  onRowKey(event, inst) {
    const key = event.key;
    if (key === "Enter" || key === " ") this.togglePin(inst);
    else if (key === "ArrowDown" || key === "ArrowUp") {
      const rows = this.instances.filter((i) => i.visible && i.row).map((i) => i.row);
      const next = rows[rows.indexOf(inst.row) + (key === "ArrowDown" ? 1 : -1)];
      if (next) next.focus();
    } else if (key === "o" || key === "O") this.setView(this.view === "photo" ? "overlay" : "photo");
    else return;
    event.preventDefault();
  }

  // --- Saving the threshold ------------------------------------------------------------------

  scheduleSave() {
    if (!this.data.canChange) return;
    window.clearTimeout(this.saveTimer);
    this.saveTimer = window.setTimeout(() => this.save(), SAVE_DELAY_MS);
  }

  flushSave() {
    if (!this.data.canChange || this.threshold === this.savedThreshold) return;
    window.clearTimeout(this.saveTimer);
    this.save({ keepalive: true });
  }

  async save({ keepalive = false } = {}) {
    const value = this.threshold;
    if (value === this.savedThreshold) return;
    let response;
    try {
      response = await fetch(this.root.dataset.apiUrl, {
        method: "PATCH",
        credentials: "same-origin",
        keepalive,
        headers: { "Content-Type": "application/json", Accept: "application/json", "X-CSRFToken": csrfToken() },
        body: JSON.stringify({ score_threshold: value }),
      });
    } catch (err) {
      announce(this.status, "Not saved: the server cannot be reached. Retrying…");
      this.saveTimer = window.setTimeout(() => this.save(), 5000);
      return;
    }
    if (response.ok) {
      this.savedThreshold = value;
      const link = this.page.querySelector("#download-overlay");
      if (link) link.href = link.href.replace(/([?&]v=)[^&]*/, `$1${value}`);
      if (value === this.threshold) announce(this.status, `Minimum score ${value.toFixed(2)} saved.`);
      this.root.dataset.saved = String(value);
      return;
    }
    if (response.status === 429) {
      const wait = Number(response.headers.get("Retry-After") || 10);
      announce(this.status, `Saving too often; saving again in ${wait} s.`);
      this.saveTimer = window.setTimeout(() => this.save(), wait * 1000);
      return;
    }
    const body = await response.json().catch(() => ({}));
    announce(this.status, `Not saved: ${body.detail || `the server answered ${response.status}`}`);
  }
}

function maskCanvas(mask, colour) {
  // Interior at 65 % alpha, the outline opaque: neighbours of one colour family stay apart.
  const { w, h, bits } = mask;
  const canvas = document.createElement("canvas");
  canvas.width = w;
  canvas.height = h;
  const ctx = canvas.getContext("2d");
  const image = ctx.createImageData(w, h);
  const px = new Uint32Array(image.data.buffer);
  const [r, g, b] = hexToRgb(colour);
  const little = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1;
  const pack = (a) => (little ? ((a << 24) | (b << 16) | (g << 8) | r) >>> 0 : ((r << 24) | (g << 16) | (b << 8) | a) >>> 0);
  const inside = pack(166);
  const edge = pack(255);
  for (let y = 0; y < h; y++) {
    const rowStart = y * w;
    for (let x = 0; x < w; x++) {
      const i = rowStart + x;
      if (!bits[i]) continue;
      const border = x === 0 || x === w - 1 || y === 0 || y === h - 1
        || !bits[i - 1] || !bits[i + 1] || !bits[i - w] || !bits[i + w];
      px[i] = border ? edge : inside;
    }
  }
  ctx.putImageData(image, 0, 0);
  return canvas;
}

function pinchDistance(pointers) {
  if (pointers.size !== 2) return 0;
  const [a, b] = [...pointers.values()];
  return Math.hypot(a.x - b.x, a.y - b.y);
}

function setText(root, selector, text) {
  const el = root.querySelector(selector);
  if (el) el.textContent = text;
}
