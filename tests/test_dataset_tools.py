"""segweb's exports, read by the tools people import them into: datumaro (CVAT's dataset
library, from its own venv: its pins conflict with the runtime's), pycocotools, and a YOLO
polygon rasteriser. Polygons against the masks they come from, on real photos and the real
model."""

from __future__ import annotations

import io
import json
import os
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as coco_mask

from segmentation import datasets, polygons, services
from segmentation.inference.coco import COCO_LABELS
from tests.factories import create_job

pytestmark = [
    pytest.mark.django_db,
    pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning"),  # pycocotools
]

ROOT = Path(__file__).resolve().parents[1]
DATUMARO = ROOT / ".venv-datumaro" / "bin" / "python"

#: Run by datumaro's venv: import a dataset and describe every annotation.
READ_WITH_DATUMARO = """
import json, sys
import numpy as np
from pycocotools import mask as coco_mask
from datumaro.components.annotation import AnnotationType
from datumaro.components.dataset import Dataset

dataset = Dataset.import_from(sys.argv[1], sys.argv[2])
labels = dataset.categories()[AnnotationType.label]
out = {}
for item in dataset:
    described = []
    for ann in sorted(item.annotations, key=lambda a: a.id):
        if ann.type not in (AnnotationType.mask, AnnotationType.polygon):
            continue  # datumaro adds each annotation's box too
        entry = {"id": ann.id, "type": ann.type.name, "label": labels[ann.label].name}
        if ann.type == AnnotationType.mask:
            entry["rle"] = coco_mask.encode(np.asfortranarray(ann.image.astype(np.uint8)))
            entry["rle"]["counts"] = entry["rle"]["counts"].decode()
        elif ann.type == AnnotationType.polygon:
            entry["points"] = list(map(float, ann.points))
        described.append(entry)
    out[item.id] = {"size": list(item.media.size or []), "annotations": described}
print(json.dumps(out))
"""


def datumaro_reads(path: Path, fmt: str) -> dict:
    if not DATUMARO.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{DATUMARO} is missing on CI (`make install-dev` builds it)")
        pytest.skip("datumaro's venv is missing (`make install-dev` builds .venv-datumaro)")
    result = subprocess.run(
        [str(DATUMARO), "-c", READ_WITH_DATUMARO, str(path), fmt],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture
def exported(owner, tmp_path, monkeypatch):
    """A bulk export of two jobs (one instance with a hole and two parts), by format."""
    from tests.factories import succeed

    monkeypatch.setattr(services, "_publish_export", lambda export_id: None)
    jobs = [succeed(create_job(owner), labels=("dog", "person", "person")) for _ in range(2)]
    holed = _ring_detection(jobs[0])
    jobs[0].detections.filter(rank=0).update(rle=holed.rle(), area=holed.area)

    def export(fmt: str) -> Path:
        made = services.export_create(owner=owner, format=fmt, job_ids=[j.pk for j in jobs])
        services.export_run(export_id=made.pk)
        made.refresh_from_db()
        assert made.status == "succeeded", made.error
        folder = tmp_path / fmt
        with made.file.open("rb") as f:
            zipfile.ZipFile(f).extractall(folder)
        return folder

    return jobs, export


def _ring_detection(job):
    from segmentation.inference import Detection

    size = 60
    yy, xx = np.mgrid[0:size, 0:size]
    r = np.hypot(yy - size / 2 + 0.5, xx - size / 2 + 0.5)
    mask = (r < size * 0.45) & (r > size * 0.2)
    mask[:4, :4] = True  # a second part
    return Detection.from_region(
        label="dog", score=0.9, box=(100, 100, 160, 160), mask=mask, origin=(100, 100),
        image_size=(job.width, job.height),
    )  # fmt: skip


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.count_nonzero(a & b) / np.count_nonzero(a | b))


def test_datumaro_imports_a_coco_export_with_every_mask_exact(exported):
    jobs, export = exported
    read = datumaro_reads(export("coco"), "coco_instances")
    assert len(read) == 2
    by_stem = {datasets.safe_stem(j) + "-" + j.pk.hex[:8]: j for j in jobs}
    for item_id, item in read.items():
        job = by_stem[item_id]
        assert [a["label"] for a in item["annotations"]] == ["dog", "person", "person"]
        assert {a["type"] for a in item["annotations"]} == {"mask"}
        for ann, det in zip(item["annotations"], job.detections.order_by("rank"), strict=True):
            assert ann["rle"]["counts"] == det.rle["counts"]


def test_datumaro_imports_a_polygon_export_holes_included(exported):
    jobs, export = exported
    read = datumaro_reads(export("coco_polygons"), "coco_instances")
    ring = next(j for j in jobs if j.detections.get(rank=0).area < 3000)
    item = read[datasets.safe_stem(ring) + "-" + ring.pk.hex[:8]]
    polygons_of_ring = [a for a in item["annotations"] if a["label"] == "dog"]
    assert len(polygons_of_ring) == 2  # the ring (its hole joined in) and the dot, one id
    assert polygons_of_ring[0]["id"] == polygons_of_ring[1]["id"]
    rles = coco_mask.frPyObjects([a["points"] for a in polygons_of_ring], ring.height, ring.width)
    drawn = coco_mask.decode(coco_mask.merge(rles)).astype(bool)
    expected = coco_mask.decode(ring.detections.get(rank=0).rle).astype(bool)
    assert not drawn[130, 130]  # the hole stays empty
    assert iou(drawn, expected) >= 0.95


def test_a_yolo_export_rasterises_back_to_its_masks(exported):
    jobs, export = exported
    folder = export("yolo")
    names = (folder / "data.yaml").read_text()
    assert "train: images/train" in names and "  0: person" in names
    for job in jobs:
        stem = datasets.safe_stem(job) + "-" + job.pk.hex[:8]
        assert (folder / "images/train" / f"{stem}.png").is_file()
        lines = (folder / "labels/train" / f"{stem}.txt").read_text().splitlines()
        for line, det in zip(lines, job.detections.order_by("rank"), strict=True):
            cls, *coords = line.split()
            assert COCO_LABELS[int(cls)] == det.label
            points = np.array(coords, dtype=float).reshape(-1, 2) * [job.width, job.height]
            rle = coco_mask.frPyObjects([points.ravel().tolist()], job.height, job.width)
            drawn = coco_mask.decode(coco_mask.merge(rle)).astype(bool)
            assert iou(drawn, coco_mask.decode(det.rle).astype(bool)) >= 0.95


def test_a_masks_export_holds_each_instances_exact_mask(exported):
    jobs, export = exported
    folder = export("masks")
    rows = (folder / "instances.csv").read_text().splitlines()
    assert rows[0].startswith("image,mask,index,label,score")
    assert len(rows) == 1 + 6
    for row in rows[1:]:
        image, mask_name, index, label, *_ = row.split(",")
        job = next(j for j in jobs if j.pk.hex[:8] in image)
        det = job.detections.order_by("rank")[int(index)]
        mask = np.asarray(Image.open(folder / mask_name)) == 255
        assert label == det.label
        assert np.array_equal(mask, coco_mask.decode(det.rle).astype(bool))


def test_polygons_keep_holes_and_parts_exactly_before_simplification():
    mask = np.zeros((40, 50), dtype=bool)
    mask[5:35, 5:45] = True
    mask[15:25, 15:25] = False  # a hole
    mask[0, 49] = True  # a one-pixel part
    parts = polygons.coco_polygons(mask)
    assert len(parts) == 2
    drawn = coco_mask.decode(coco_mask.merge(coco_mask.frPyObjects(parts, 40, 50))).astype(bool)
    assert np.array_equal(drawn, mask)  # straight edges: nothing to simplify


@pytest.mark.slow
def test_polygons_of_the_real_models_masks_on_real_photos_keep_iou_above_095(yolo):
    from segmentation.inference import load_image
    from tests.photos import ASTRONAUT, CHELSEA, COFFEE, MOTORCYCLE

    ious = []
    for photo in (ASTRONAUT, CHELSEA, COFFEE, MOTORCYCLE):
        image = load_image(photo)
        for det in yolo.predict(image, score_threshold=0.25):
            parts = polygons.coco_polygons(det.mask, det.mask_box[:2])
            rles = coco_mask.frPyObjects(parts, image.height, image.width)
            drawn = coco_mask.decode(coco_mask.merge(rles)).astype(bool)
            ious.append(iou(drawn, det.full_mask()))
    print(f"polygon vs RLE IoU over {len(ious)} instances: min {min(ious):.4f}, "
          f"mean {np.mean(ious):.4f}")  # fmt: skip
    assert len(ious) >= 4
    assert min(ious) >= 0.95


def test_a_cutout_zip_of_a_job_is_what_the_job_page_links(owner, client):
    from tests.factories import succeed

    job = succeed(create_job(owner), labels=("dog", "person"))
    client.force_login(owner)
    page = client.get(f"/jobs/{job.pk}/").content.decode()
    link = f"/api/jobs/{job.pk}/export/?format=cutouts"
    assert link in page
    archive = zipfile.ZipFile(io.BytesIO(b"".join(client.get(link).streaming_content)))
    assert sorted(n for n in archive.namelist() if n.endswith(".png")) == [
        f"cutouts/coffee-{job.pk.hex[:8]}/0_dog.png",
        f"cutouts/coffee-{job.pk.hex[:8]}/1_person.png",
    ]
