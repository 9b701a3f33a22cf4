"""A job's detections as a COCO file: images, categories and annotations with scores.

The same dict serves the page download and ``GET /api/jobs/{id}/coco/``. ``annotations`` is
also a valid COCO *results* list for ``COCO.loadRes`` (each has image_id, category_id,
segmentation, bbox and score).
"""

from __future__ import annotations

from .inference.coco import COCO_CATEGORY_IDS
from .models import Job

IMAGE_ID = 1


def coco_categories() -> list[dict]:
    return [
        {"id": cid, "name": name, "supercategory": ""} for name, cid in COCO_CATEGORY_IDS.items()
    ]


def job_to_coco(job: Job) -> dict:
    annotations = [
        {
            "id": det.rank + 1,
            "image_id": IMAGE_ID,
            "category_id": COCO_CATEGORY_IDS.get(det.label, 0),
            "segmentation": det.rle,
            "area": det.area,
            "bbox": [det.x1, det.y1, det.x2 - det.x1, det.y2 - det.y1],
            "iscrowd": 0,
            "score": det.score,
        }
        for det in job.detections.filter(score__gte=job.score_threshold).order_by("rank")
    ]
    return {
        "info": {
            "description": f"segweb job {job.pk}",
            "model": job.model,
            "score_threshold": job.score_threshold,  # annotations are those scoring this or more
            "date_created": job.created_at.isoformat(),
        },
        "images": [
            {
                "id": IMAGE_ID,
                "file_name": job.original_filename,
                "width": job.width,
                "height": job.height,
            }
        ],
        "categories": coco_categories(),
        "annotations": annotations,
    }
