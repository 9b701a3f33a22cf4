// COCO RLE masks, decoded straight to a small bitmap over the mask's own region, at a scale.
// Work is proportional to the mask's area times the scale, never to the image's size: 100 masks
// on a 12 MP photo decode in tens of milliseconds.

/** Run lengths from COCO's compact string (pycocotools' rleFrString). */
export function runLengths(text) {
  const counts = [];
  let p = 0;
  while (p < text.length) {
    let x = 0;
    let k = 0;
    let more = true;
    let c = 0;
    while (more) {
      c = text.charCodeAt(p) - 48;
      x |= (c & 0x1f) << (5 * k);
      more = (c & 0x20) !== 0;
      p += 1;
      k += 1;
      if (!more && (c & 0x10)) x |= -1 << (5 * k);
    }
    if (counts.length > 2) x += counts[counts.length - 2];
    counts.push(x);
  }
  return counts;
}

/**
 * The mask of ``text`` (an RLE over a ``height`` x ``width`` image, column by column) as a
 * bitmap at ``scale`` (mask pixels per image pixel, at most 1): {x, y, w, h, bits}, where
 * (x, y) is the bitmap's top-left in scaled pixels and bits a Uint8Array of w * h (row-major).
 * Null for an empty mask.
 */
export function decodeMask(text, height, width, scale) {
  const counts = runLengths(text);
  const cols = [];
  const tops = [];
  const bottoms = [];
  let pos = 0;
  let minCol = Infinity, maxCol = -1, minRow = Infinity, maxRow = -1;
  for (let i = 0; i < counts.length; i++) {
    const start = pos;
    pos += counts[i];
    if (i % 2 === 0 || counts[i] <= 0) continue; // runs of 0s, then 1s, alternately
    let p = start;
    while (p < pos) {
      const col = Math.floor(p / height);
      const top = p - col * height;
      const bottom = Math.min(height, top + (pos - p)); // exclusive
      cols.push(col);
      tops.push(top);
      bottoms.push(bottom);
      if (col < minCol) minCol = col;
      if (col > maxCol) maxCol = col;
      if (top < minRow) minRow = top;
      if (bottom - 1 > maxRow) maxRow = bottom - 1;
      p += bottom - top;
    }
  }
  if (maxCol < 0 || minCol >= width) return null;
  const x0 = Math.floor(minCol * scale);
  const y0 = Math.floor(minRow * scale);
  const w = Math.floor(maxCol * scale) - x0 + 1;
  const h = Math.floor(maxRow * scale) - y0 + 1;
  const bits = new Uint8Array(w * h);
  for (let s = 0; s < cols.length; s++) {
    const x = Math.floor(cols[s] * scale) - x0;
    const yEnd = Math.floor((bottoms[s] - 1) * scale) - y0;
    for (let y = Math.floor(tops[s] * scale) - y0; y <= yEnd; y++) bits[y * w + x] = 1;
  }
  return { x: x0, y: y0, w, h, bits };
}
