"""Jobs as datasets: per-instance masks and cut-outs, and ZIPs in the layouts tools import.

One writer serves the per-job download (``GET /api/jobs/{id}/export/``) and the bulk export
(``services.export_run``). It writes into a ``zipfile.ZipFile`` as it goes, photo by photo,
so memory stays bounded whatever the number of jobs: the COCO JSON is assembled from two
temporary files (its images and its annotations), never held whole.

Layouts (what CVAT exports and datumaro's importers read):

- ``coco``, ``coco_polygons``: ``annotations/instances_default.json`` + ``images/default/``
  (datumaro's ``coco_instances`` finds nothing under a bare ``instances.json``);
- ``yolo``: Ultralytics' ``data.yaml``, ``images/train/``, ``labels/train/*.txt`` with one
  ``class x1 y1 x2 y2 ...`` line per instance (coordinates 0..1, classes as in ``data.yaml``);
- ``masks``: ``images/``, ``masks/<photo>/<i>_<class>.png`` (the photo's size, 255 on the
  mask), and ``instances.csv``;
- ``cutouts``: ``cutouts/<photo>/<i>_<class>.png`` (RGBA, the box's size) and
  ``instances.csv``.

``<i>`` is the instance's index in the job's ``detections`` at its current threshold, as in
``/api/jobs/{id}/instances/{i}/``. Photos are the uploaded files byte for byte when they are
JPEG or PNG and upright; others (HEIC, WebP..., or turned by their EXIF orientation, which some
tools ignore) are written upright as PNG, or JPEG when the upload was lossy.
"""

from __future__ import annotations

import csv
import io
import json
import re
import tempfile
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from django.conf import settings
from django.core.files.storage import default_storage
from PIL import Image

from .inference.coco import COCO_CATEGORY_IDS, COCO_LABELS
from .masks import rle_region
from .models import Detection, Export, Job

Format = Export.Format
_ORIENTATION = 0x0112
_LOSSLESS = {"PNG", "GIF", "BMP", "TIFF"}
_CHUNK = 1024 * 1024


class PhotoUnavailable(Exception):
    """The stored photo could not be read (storage outage, missing file)."""


def shown_detections(job: Job) -> list[Detection]:
    """The job's instances at its current threshold, best first: ``detections`` of the API."""
    if job.status != Job.Status.SUCCEEDED:
        return []
    return list(job.detections.filter(score__gte=job.score_threshold).order_by("rank"))


@dataclass
class Region:
    """A mask over its own bounding region; ``origin`` is its top-left pixel in the photo."""

    mask: np.ndarray
    origin: tuple[int, int]


def region(detection: Detection) -> Region:
    mask, origin = rle_region(detection.rle)
    return Region(mask, origin)


def full_mask(detection: Detection) -> np.ndarray:
    """The mask at the photo's size: exactly the pixels of its RLE."""
    height, width = detection.rle["size"]
    out = np.zeros((height, width), dtype=bool)
    r = region(detection)
    x0, y0 = r.origin
    out[y0 : y0 + r.mask.shape[0], x0 : x0 + r.mask.shape[1]] = r.mask
    return out


def mask_png(detection: Detection) -> bytes:
    """A grey PNG of the photo's size: 255 on the mask, 0 elsewhere."""
    image = Image.fromarray(full_mask(detection).astype(np.uint8) * 255, mode="L")
    return _png(image)


def cutout_box(detection: Detection, width: int, height: int) -> tuple[int, int, int, int]:
    """The instance's box in whole pixels, clipped to the photo (at least one pixel)."""
    x0 = min(max(int(np.floor(detection.x1)), 0), width - 1)
    y0 = min(max(int(np.floor(detection.y1)), 0), height - 1)
    x1 = max(min(int(np.ceil(detection.x2)), width), x0 + 1)
    y1 = max(min(int(np.ceil(detection.y2)), height), y0 + 1)
    return x0, y0, x1, y1


def cutout_png(photo: Image.Image, detection: Detection) -> bytes:
    """The instance cut out of the upright RGB ``photo``: RGBA of its box, opaque on the mask,
    transparent (and black) elsewhere."""
    x0, y0, x1, y1 = cutout_box(detection, photo.width, photo.height)
    alpha = np.zeros((y1 - y0, x1 - x0), dtype=np.uint8)
    r = region(detection)
    rx0, ry0 = r.origin
    # The part of the mask's region inside the box.
    ax0, ay0 = max(rx0, x0), max(ry0, y0)
    ax1, ay1 = min(rx0 + r.mask.shape[1], x1), min(ry0 + r.mask.shape[0], y1)
    if ax1 > ax0 and ay1 > ay0:
        alpha[ay0 - y0 : ay1 - y0, ax0 - x0 : ax1 - x0] = (
            r.mask[ay0 - ry0 : ay1 - ry0, ax0 - rx0 : ax1 - rx0] * 255
        )
    rgba = np.zeros((y1 - y0, x1 - x0, 4), dtype=np.uint8)
    rgba[..., :3] = np.asarray(photo.crop((x0, y0, x1, y1)).convert("RGB"))
    rgba[..., :3][alpha == 0] = 0
    rgba[..., 3] = alpha
    return _png(Image.fromarray(rgba, mode="RGBA"))


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG", compress_level=1)  # 4x faster than the default, ~20% larger
    return buffer.getvalue()


def load_photo(job: Job) -> Image.Image:
    """The job's photo, decoded upright as the model saw it."""
    from .inference import load_image

    return load_image(_read_photo(job), max_pixels=settings.SEGWEB["MAX_PIXELS"])


def _read_photo(job: Job) -> bytes:
    try:
        with default_storage.open(job.image.name, "rb") as f:
            return f.read()
    except Exception as exc:
        raise PhotoUnavailable("The uploaded photo could not be read from storage.") from exc


def safe_stem(job: Job) -> str:
    """A file name stem from the upload's name: letters, digits, ``-_.`` only."""
    stem = job.original_filename.rsplit(".", 1)[0]
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._")[:60]
    return stem or "photo"


class DatasetWriter:
    """Writes jobs into ``archive`` in one format; ``close()`` writes what comes last."""

    def __init__(self, archive: zipfile.ZipFile, fmt: str) -> None:
        self.archive = archive
        self.format = Format(fmt)
        self.names: set[str] = set()
        self._images = self._annotations = None
        self._csv = self._csv_file = None
        self._next_annotation = 1
        self._image_id = 0
        if self.format in (Format.COCO, Format.COCO_POLYGONS):
            # Closed in close(): the COCO JSON is assembled from them at the end.
            self._images = tempfile.TemporaryFile("w+", encoding="utf-8")  # noqa: SIM115
            self._annotations = tempfile.TemporaryFile("w+", encoding="utf-8")  # noqa: SIM115
        if self.format in (Format.MASKS, Format.CUTOUTS):
            self._csv_file = tempfile.TemporaryFile("w+", encoding="utf-8", newline="")  # noqa: SIM115
            self._csv = csv.writer(self._csv_file)
            file_column = "mask" if self.format == Format.MASKS else "cutout"
            self._csv.writerow(["image", file_column, "index", "label", "score",
                                "x1", "y1", "x2", "y2", "area"])  # fmt: skip

    # --- One job ----------------------------------------------------------------------------

    def add(self, job: Job) -> None:
        """Write one job (a succeeded one; others are skipped)."""
        if job.status != Job.Status.SUCCEEDED:
            return
        detections = shown_detections(job)
        stem = self._unique(safe_stem(job), job)
        if self.format == Format.CUTOUTS:
            self._add_cutouts(job, stem, detections)
            return
        folder = {Format.YOLO: "images/train/", Format.MASKS: "images/"}.get(
            self.format, "images/default/"
        )
        image_name = stem + self._write_photo(job, folder + stem)
        if self.format in (Format.COCO, Format.COCO_POLYGONS):
            self._add_coco(job, image_name, detections)
        elif self.format == Format.YOLO:
            self._add_yolo(job, stem, detections)
        else:
            self._add_masks(job, stem, image_name, detections)

    def _unique(self, stem: str, job: Job) -> str:
        name = f"{stem}-{job.pk.hex[:8]}"
        if name in self.names:
            name = f"{stem}-{job.pk.hex}"
        self.names.add(name)
        return name

    def _write_photo(self, job: Job, path_stem: str) -> str:
        """Write the photo as ``path_stem`` + its extension; return the extension."""
        data = _read_photo(job)
        with Image.open(io.BytesIO(data)) as image:
            kind = image.format
            upright = _orientation(image) == 1
        if kind in ("JPEG", "MPO", "PNG") and upright:
            extension = ".png" if kind == "PNG" else ".jpg"
            with self.archive.open(path_stem + extension, "w", force_zip64=True) as out:
                for start in range(0, len(data), _CHUNK):
                    out.write(data[start : start + _CHUNK])
            return extension
        from .inference import load_image

        photo = load_image(data, max_pixels=settings.SEGWEB["MAX_PIXELS"])
        del data
        buffer = io.BytesIO()
        if kind in _LOSSLESS:
            photo.save(buffer, "PNG", compress_level=1)
            extension = ".png"
        else:
            photo.save(buffer, "JPEG", quality=95)
            extension = ".jpg"
        self.archive.writestr(path_stem + extension, buffer.getvalue())
        return extension

    def _add_coco(self, job: Job, image_name: str, detections: list[Detection]) -> None:
        self._image_id += 1
        image = {
            "id": self._image_id,
            "file_name": image_name,
            "width": job.width,
            "height": job.height,
            "segweb_job": str(job.pk),
            "original_filename": job.original_filename,
            "score_threshold": job.score_threshold,
        }
        self._append(self._images, image)
        for det in detections:
            if self.format == Format.COCO_POLYGONS:
                from . import polygons  # OpenCV: only where polygons are asked for

                r = region(det)
                segmentation = polygons.coco_polygons(r.mask, r.origin)
            else:
                segmentation = det.rle
            annotation = {
                "id": self._next_annotation,
                "image_id": self._image_id,
                "category_id": COCO_CATEGORY_IDS[det.label],
                "segmentation": segmentation,
                "area": det.area,
                "bbox": [det.x1, det.y1, det.x2 - det.x1, det.y2 - det.y1],
                "iscrowd": 0,
                "score": det.score,
                "attributes": {"score": det.score},
            }
            self._next_annotation += 1
            self._append(self._annotations, annotation)

    @staticmethod
    def _append(handle, item: dict) -> None:
        if handle.tell():
            handle.write(",\n")
        handle.write(json.dumps(item, separators=(",", ":")))

    def _add_yolo(self, job: Job, stem: str, detections: list[Detection]) -> None:
        from . import polygons  # OpenCV: only where polygons are asked for

        lines = []
        for det in detections:
            r = region(det)
            points = polygons.yolo_polygon(r.mask, (job.width, job.height), r.origin)
            if len(points) >= 6:
                coords = " ".join(f"{v:.6f}" for v in points)
                lines.append(f"{COCO_LABELS.index(det.label)} {coords}\n")
        self.archive.writestr(f"labels/train/{stem}.txt", "".join(lines))

    def _add_masks(self, job: Job, stem: str, image: str, detections: list[Detection]) -> None:
        for i, det in enumerate(detections):
            name = f"masks/{stem}/{i}_{_file_label(det.label)}.png"
            self.archive.writestr(name, mask_png(det))
            self._row(image, name, i, det)

    def _add_cutouts(self, job: Job, stem: str, detections: list[Detection]) -> None:
        if not detections:
            return
        photo = load_photo(job)
        for i, det in enumerate(detections):
            name = f"cutouts/{stem}/{i}_{_file_label(det.label)}.png"
            self.archive.writestr(name, cutout_png(photo, det))
            self._row(job.original_filename, name, i, det)

    def _row(self, image: str, name: str, i: int, det: Detection) -> None:
        self._csv.writerow([image, name, i, det.label, f"{det.score:.6f}",
                            *(f"{v:.2f}" for v in det.box), det.area])  # fmt: skip

    # --- The end ----------------------------------------------------------------------------

    def close(self, *, description: str) -> None:
        """Write the files that sum up every job (COCO JSON, data.yaml, instances.csv)."""
        if self._images is not None:
            with self.archive.open(
                "annotations/instances_default.json", "w", force_zip64=True
            ) as out:
                head = {
                    "info": {"description": description, "contributor": "segweb"},
                    "licenses": [],
                    "categories": [
                        {"id": cid, "name": name, "supercategory": ""}
                        for name, cid in COCO_CATEGORY_IDS.items()
                    ],
                }
                text = json.dumps(head, separators=(",", ":"))[:-1]
                out.write(text.encode() + b',"images":[')
                _copy_text(self._images, out)
                out.write(b'],"annotations":[')
                _copy_text(self._annotations, out)
                out.write(b"]}")
            self._images.close()
            self._annotations.close()
        if self.format == Format.YOLO:
            names = "".join(f"  {i}: {name}\n" for i, name in enumerate(COCO_LABELS))
            self.archive.writestr(
                "data.yaml",
                f"# {description}\npath: .\ntrain: images/train\nval: images/train\n"
                f"names:\n{names}",
            )
        if self._csv_file is not None:
            with self.archive.open("instances.csv", "w", force_zip64=True) as out:
                _copy_text(self._csv_file, out)
            self._csv_file.close()


def _copy_text(handle, out) -> None:
    handle.seek(0)
    while chunk := handle.read(_CHUNK):
        out.write(chunk.encode("utf-8"))


def _file_label(label: str) -> str:
    return label.replace(" ", "_")


def _orientation(image: Image.Image) -> int:
    try:
        return int(image.getexif().get(_ORIENTATION, 1))
    except Exception:  # noqa: BLE001 - unreadable EXIF: the upload was decoded without it too
        return 1


def write_dataset(fileobj, fmt: str, jobs: Iterable[Job], *, description: str, progress=None):
    """Write ``jobs`` as a ZIP dataset to ``fileobj`` (which need not be seekable).

    ``progress(done)`` is called after each job.
    """
    with zipfile.ZipFile(_Unseekable(fileobj), "w", zipfile.ZIP_DEFLATED) as archive:
        writer = DatasetWriter(archive, fmt)
        for done, job in enumerate(jobs, start=1):
            writer.add(job)
            if progress is not None:
                progress(done)
        writer.close(description=description)


class _Unseekable:
    """Only ``write``: zipfile then streams (data descriptors), whatever ``fileobj`` claims
    about seeking (an S3 multipart upload reports positions within its current part)."""

    def __init__(self, fileobj) -> None:
        self._fileobj = fileobj

    def write(self, data) -> int:
        self._fileobj.write(data)
        return len(data)

    def flush(self) -> None:
        if hasattr(self._fileobj, "flush"):
            self._fileobj.flush()
