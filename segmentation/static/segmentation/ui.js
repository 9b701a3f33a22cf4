// Small helpers shared by the pages.

/** Give elements with data-colour (and data-ink) their colours, through CSS variables. */
export function paintColours(root = document) {
  for (const el of root.querySelectorAll("[data-colour]")) {
    el.style.setProperty("--c", el.dataset.colour);
    if (el.dataset.ink) el.style.setProperty("--ink", el.dataset.ink);
  }
}

/** A polite announcement in a live region (replaces the previous one). */
export function announce(region, text) {
  if (!region) return;
  region.textContent = "";
  // A new text node after a tick is announced even when the text repeats.
  window.setTimeout(() => { region.textContent = text; }, 30);
}

/** Forms with data-confirm ask first (no inline handlers: the CSP forbids them). */
export function confirmForms(root = document) {
  for (const form of root.querySelectorAll("form[data-confirm]")) {
    form.addEventListener("submit", (event) => {
      if (!window.confirm(form.dataset.confirm)) event.preventDefault();
    });
  }
}

export function csrfToken() {
  const input = document.querySelector("input[name=csrfmiddlewaretoken]");
  if (input) return input.value;
  const match = document.cookie.match(/(?:^|;\s*)csrftoken=([^;]+)/);
  return match ? decodeURIComponent(match[1]) : "";
}

export function hexToRgb(hex) {
  const n = parseInt(hex.slice(1), 16);
  return [(n >> 16) & 255, (n >> 8) & 255, n & 255];
}

/** Black or white text on ``hex``, whichever contrasts more (WCAG; the overlay's own rule). */
export function inkFor(hex) {
  const [r, g, b] = hexToRgb(hex).map((c) => {
    const v = c / 255;
    return v <= 0.04045 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4;
  });
  const l = 0.2126 * r + 0.7152 * g + 0.0722 * b;
  return (l + 0.05) / 0.05 >= 1.05 / (l + 0.05) ? "#000000" : "#ffffff";
}
