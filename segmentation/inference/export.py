"""One-time export of the models to OpenVINO, checked against torch before it is installed.

    python -m segmentation.inference.export                  # every usable model (make export)
    python -m segmentation.inference.export --model yolov7_seg --force

For each model: convert its network to OpenVINO IR (FP32), run both runtimes on real photos
(scikit-image's sample photos) at several thresholds, and install the export only if every
detection agrees (``compare_detections``). Files are written under temporary names and renamed
into place after the check, the manifest last (``os.replace``): a worker never sees a half-written
or unchecked export. An export that is already current is left alone unless ``--force``.

Exports are not made lazily by workers: converting Mask R-CNN takes about a minute on two cores,
holds both runtimes' copies of the model in memory, and checking it takes as long again; every
worker would pay that on its first job, several at once on a multi-worker machine. Until the
export exists workers run torch, with a warning naming this command.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import fcntl
import importlib.util
import logging
import os
import secrets
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torchvision.models.detection.image_list import ImageList

from .base import Segmenter, rgb_tensor
from .detection import Detection, box_iou, mask_iou
from .errors import InferenceError
from .image import load_image
from .maskrcnn import MaskRCNNSegmenter
from .openvino_runtime import (
    EXPORT_FORMAT,
    ExportUnusableError,
    Manifest,
    build_segmenter,
    compile_files,
    current_manifest,
    fingerprint,
    manifest_path,
    source_weights,
)
from .ov import ov
from .registry import (
    MODEL_NAMES,
    YOLOV7,
    _build,
    default_weights_dir,
    list_models,
    resolve_model_name,
)
from .yolo import YoloSegmenter

logger = logging.getLogger("segmentation.inference")

#: Agreement required between the runtimes, per detection.
SCORE_TOLERANCE = 1e-4
MIN_BOX_IOU = 0.99
MIN_MASK_IOU = 0.98
#: ...or, for boxes a fraction of a pixel wide, where a thousandth of a pixel moves the IoU by a
#: percent, every coordinate within this many pixels.
MAX_BOX_SHIFT = 0.01

#: Thresholds the export is checked at: a permissive one (more, weaker detections) and the default.
VERIFY_THRESHOLDS: tuple[float, ...] = (0.3, 0.5)

#: scikit-image's sample photos the export is checked on (found in its package, not downloaded).
VERIFY_PHOTOS: tuple[str, ...] = (
    "astronaut.png",
    "chelsea.png",
    "coffee.png",
    "rocket.jpg",
    "motorcycle_left.png",
)


class ExportRefusedError(InferenceError):
    """The exported network does not give the torch runtime's detections: nothing was installed."""


def verification_photos(names: Sequence[str] = VERIFY_PHOTOS) -> dict[str, Image.Image]:
    """scikit-image's sample photos by file name, plus the last one turned to portrait.

    Raises:
        InferenceError: scikit-image is not installed (``pip install scikit-image``).
    """
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise InferenceError(
            "The export is checked on scikit-image's sample photos: install scikit-image "
            "(it is in requirements-dev.txt)."
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "data"
    photos = {name: load_image(folder / name) for name in names}
    if names:  # a portrait photo: the other orientation gives other input shapes
        photos[f"{names[-1]} (portrait)"] = photos[names[-1]].transpose(Image.Transpose.ROTATE_90)
    return photos


# ----------------------------------------------------------------------------------------------
# Comparing detections


def boxes_agree(a: Sequence[float], b: Sequence[float]) -> bool:
    """IoU >= ``MIN_BOX_IOU``, or (degenerate boxes) every coordinate within ``MAX_BOX_SHIFT``."""
    shift = max(abs(u - v) for u, v in zip(a, b, strict=True))
    return box_iou(a, b) >= MIN_BOX_IOU or shift <= MAX_BOX_SHIFT


@dataclass
class Agreement:
    """How closely two runtimes' detections agree, over everything compared so far."""

    detections: int = 0
    max_score_delta: float = 0.0
    min_box_iou: float = 1.0
    min_mask_iou: float = 1.0  # over detections that are not slivers
    slivers: int = 0  # detections under a pixel wide or tall (their mask IoU is not compared)

    def as_dict(self) -> dict[str, float | int]:
        return {
            "detections": self.detections,
            "max_score_delta": self.max_score_delta,
            "min_box_iou": round(self.min_box_iou, 6),
            "min_mask_iou": round(self.min_mask_iou, 6),
            "slivers": self.slivers,
        }


def compare_detections(
    reference: Sequence[Detection],
    candidate: Sequence[Detection],
    *,
    threshold: float,
    agreement: Agreement | None = None,
) -> list[str]:
    """What differs between two runtimes' answers for one photo; empty when they agree.

    Every detection must have a counterpart with the same label, a score within
    ``SCORE_TOLERANCE``, the same box (``boxes_agree``) and mask IoU >= ``MIN_MASK_IOU`` (not
    required of slivers under a pixel wide or tall, whose masks are all edge). Both lists
    are best first, so the order can only differ between detections whose scores are within the
    tolerance of each other. A detection whose score is within the tolerance of ``threshold`` may
    be missing from the other list: rounding decides on which side of the threshold it falls.
    ``agreement``, when given, accumulates the matched detections' worst deltas.
    """
    problems = []
    unmatched = list(candidate)
    for ref in reference:
        best, best_iou = None, -1.0
        for cand in unmatched:
            if cand.label != ref.label or abs(cand.score - ref.score) > SCORE_TOLERANCE:
                continue
            if not boxes_agree(ref.box, cand.box):
                continue
            iou = box_iou(ref.box, cand.box)
            if iou > best_iou:
                best, best_iou = cand, iou
        if best is None:
            if ref.score - threshold > SCORE_TOLERANCE:
                problems.append(f"missing {_describe(ref)}")
            continue
        unmatched.remove(best)
        masks = mask_iou(ref, best)
        if masks < MIN_MASK_IOU and not _sliver(ref.box):
            problems.append(f"mask IoU {masks:.3f} for {_describe(ref)}")
        if agreement is not None:
            agreement.detections += 1
            agreement.max_score_delta = max(agreement.max_score_delta, abs(best.score - ref.score))
            agreement.min_box_iou = min(agreement.min_box_iou, best_iou)
            if _sliver(ref.box):
                agreement.slivers += 1
            else:
                agreement.min_mask_iou = min(agreement.min_mask_iou, masks)
    problems += [
        f"extra {_describe(c)}" for c in unmatched if c.score - threshold > SCORE_TOLERANCE
    ]
    return problems


def _sliver(box: Sequence[float]) -> bool:
    # A box under a pixel wide or tall pastes its 28x28 mask into a single row or column of
    # pixels, every one of them on the mask's edge: a 1e-5 change of a probability near 0.5 flips
    # one, and one pixel of ten moves the IoU by 10%. Its box is still compared to 0.01 px.
    return box[2] - box[0] < 1 or box[3] - box[1] < 1


def _describe(det: Detection) -> str:
    box = ", ".join(f"{v:.0f}" for v in det.box)
    return f"{det.label} {det.score:.4f} at ({box})"


def verify(
    reference: Segmenter,
    candidate: Segmenter,
    photos: dict[str, Image.Image],
    thresholds: Sequence[float] = VERIFY_THRESHOLDS,
) -> Agreement:
    """Run both segmenters on every photo at every threshold; raise unless they all agree.

    The reference runs once per photo, at the lowest threshold, and is filtered for the others:
    the torch runtime's answers at a higher threshold are exactly those (``test_maskrcnn`` checks
    it). The candidate runs at each threshold, since its threshold is an input of its graph.

    Raises:
        ExportRefusedError: listing the first differences.
    """
    agreement = Agreement()
    problems = []
    lowest = min(thresholds)
    for label, image in photos.items():
        expected_all = reference.predict(image, score_threshold=lowest)
        for threshold in thresholds:
            expected = [d for d in expected_all if d.score >= threshold]
            found = candidate.predict(image, score_threshold=threshold)
            differences = compare_detections(
                expected, found, threshold=threshold, agreement=agreement
            )
            problems += [f"{label} at {threshold}: {p}" for p in differences]
    if problems:
        shown = "; ".join(problems[:5])
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise ExportRefusedError(
            f"the OpenVINO network disagrees with torch on {len(problems)} detection(s): "
            f"{shown}{more}"
        )
    return agreement


# ----------------------------------------------------------------------------------------------
# Converting


class _MaskRCNNCore(torch.nn.Module):
    """What the Mask R-CNN export holds: the network between torchvision's transform and the
    mask paste, for one image, with the score threshold as an input (so that, as in the torch
    runtime, the mask head only runs on the boxes the caller will keep)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, images: torch.Tensor, image_size: torch.Tensor, score_threshold: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        model = self.model
        sizes = [(image_size[0], image_size[1])]
        features = model.backbone(images)
        proposals, _ = model.rpn(ImageList(images, sizes), features)
        model.roi_heads.score_thresh = score_threshold  # traced as the input, not a constant
        detections, _ = model.roi_heads(features, proposals, sizes)
        result = detections[0]
        return result["boxes"], result["labels"], result["scores"], result["masks"]


class _YoloNetwork(torch.nn.Module):
    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pred, (_, proto) = self.model(x)
        return pred, proto


def _convert(module: torch.nn.Module, inputs: tuple, shapes: list) -> ov.Model:
    from openvino.frontend.pytorch.ts_decoder import TorchScriptPythonDecoder

    with warnings.catch_warnings(), torch.no_grad():
        # The tracer warns about every Python value it records as a constant; the ones that
        # matter are caught by running the export on photos of other sizes, which also makes
        # the tracer's own check (one more forward pass of the model) redundant.
        warnings.simplefilter("ignore")
        decoder = TorchScriptPythonDecoder(
            module.eval(), example_input=inputs, trace_kwargs={"check_trace": False}
        )
        return ov.convert_model(decoder, input=shapes)


def convert_maskrcnn(segmenter: MaskRCNNSegmenter, example: Image.Image) -> tuple[ov.Model, dict]:
    """Mask R-CNN's network as an OpenVINO model, and the config its runtime needs."""
    model = segmenter.model
    # One eager run first: MultiScaleRoIAlign caches its level scales on its first call, and a
    # first call inside the tracer would record that set-up into the graph.
    segmenter.predict(example, score_threshold=segmenter.default_score_threshold)
    with torch.inference_mode():
        images, _ = segmenter.transform([rgb_tensor(example, "cpu")])
    inputs = (
        images.tensors.clone(),
        torch.tensor(images.image_sizes[0], dtype=torch.int64),
        torch.tensor(segmenter.default_score_threshold, dtype=torch.float32),
    )
    shapes = [ov.PartialShape([1, 3, -1, -1]), ov.PartialShape([2]), ov.PartialShape([])]
    try:
        graph = _convert(_MaskRCNNCore(model), inputs, shapes)
    finally:
        model.roi_heads.score_thresh = segmenter.default_score_threshold
    transform = segmenter.transform
    config = {
        "transform": {
            "min_size": list(transform.min_size),
            "max_size": transform.max_size,
            "image_mean": list(transform.image_mean),
            "image_std": list(transform.image_std),
            "size_divisible": transform.size_divisible,
            "fixed_size": transform.fixed_size,
        },
        "score_threshold": segmenter.default_score_threshold,
    }
    return graph, config


def convert_yolo(segmenter: YoloSegmenter, example: Image.Image) -> tuple[ov.Model, dict]:
    """YOLOv7-seg's network as an OpenVINO model, and the config its runtime needs."""
    model = copy.deepcopy(segmenter.model)
    # The head caches its anchor grids for the last input shape; a traced cache would be a
    # constant. ``dynamic`` makes it rebuild them from the input's shape, inside the graph.
    model.model[-1].dynamic = True
    x, _, _ = segmenter._input(example)
    graph = _convert(_YoloNetwork(model), (x,), [ov.PartialShape([1, 3, -1, -1])])
    return graph, {"stride": segmenter.stride, "labels": list(segmenter.labels)}


# ----------------------------------------------------------------------------------------------
# Exporting


@contextlib.contextmanager
def _export_lock(name: str, weights_dir: Path) -> Iterator[None]:
    # Two exports of one model at once would delete each other's files.
    with (weights_dir / f".{name}.openvino.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def export_model(
    name: str,
    *,
    weights_dir: Path | None = None,
    photos: dict[str, Image.Image] | None = None,
    thresholds: Sequence[float] = VERIFY_THRESHOLDS,
    force: bool = False,
    echo: Callable[[str], None] = logger.info,
) -> Manifest:
    """Export ``name`` to OpenVINO in ``weights_dir``, check it, install it; return its manifest.

    Args:
        photos: what to check it on (default ``verification_photos()``).
        thresholds: score thresholds to check it at.
        force: export again even if the installed export is current.
        echo: where progress lines go.

    Raises:
        ModelUnavailableError: the model cannot run here (weights missing...).
        ExportRefusedError: the export disagrees with torch; nothing was installed.
    """
    weights_dir = weights_dir or default_weights_dir()
    resolve_model_name(name, weights_dir=weights_dir)  # raises when it cannot run here
    weights_dir.mkdir(parents=True, exist_ok=True)
    with _export_lock(name, weights_dir):
        if not force:
            with contextlib.suppress(ExportUnusableError):
                manifest = current_manifest(name, weights_dir)
                echo(f"{name}: the OpenVINO export is up to date ({manifest.path})")
                return manifest
        return _export(name, weights_dir, photos, thresholds, echo)


def _export(
    name: str,
    weights_dir: Path,
    photos: dict[str, Image.Image] | None,
    thresholds: Sequence[float],
    echo: Callable[[str], None],
) -> Manifest:
    photos = photos if photos is not None else verification_photos()
    source = source_weights(name, weights_dir)
    started = time.perf_counter()
    reference = _build(name, "cpu", weights_dir)
    stamp = fingerprint(name, source)
    example = next(iter(photos.values()))
    if name == YOLOV7:
        graph, config = convert_yolo(reference, example)
    else:
        graph, config = convert_maskrcnn(reference, example)
    echo(f"{name}: converted in {time.perf_counter() - started:.0f} s")

    token = secrets.token_hex(4)
    final = {ext: weights_dir / f"{name}.openvino.{token}.{ext}" for ext in ("xml", "bin")}
    # save_model names the weights after the graph: ".x.partial.xml" gets ".x.partial.bin".
    partial = {ext: weights_dir / f".{name}.openvino.{token}.partial.{ext}" for ext in final}
    try:
        # FP32 weights: save_model's default halves them to FP16, which changes answers.
        ov.save_model(graph, str(partial["xml"]), compress_to_fp16=False)
        del graph
        started = time.perf_counter()
        candidate = build_segmenter(
            name, source, compile_files(partial["xml"], partial["bin"]), config
        )
        agreement = verify(reference, candidate, photos, thresholds)
        del candidate
        echo(
            f"{name}: same detections as torch on {len(photos)} photos at thresholds "
            f"{', '.join(map(str, thresholds))} ({agreement.detections} detections, "
            f"|Δscore| <= {agreement.max_score_delta:.1e}, box IoU >= "
            f"{agreement.min_box_iou:.4f}, mask IoU >= {agreement.min_mask_iou:.4f}; "
            f"{time.perf_counter() - started:.0f} s)"
        )
        for ext in ("xml", "bin"):
            partial[ext].replace(final[ext])
    except BaseException:
        for path in (*partial.values(), *final.values()):
            path.unlink(missing_ok=True)
        raise
    manifest = Manifest(
        path=manifest_path(name, weights_dir),
        xml=final["xml"],
        bin=final["bin"],
        fingerprint=stamp,
        config=config,
        verification={
            "photos": list(photos),
            "thresholds": list(thresholds),
            **agreement.as_dict(),
            "export_format": EXPORT_FORMAT,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        },
    )
    pending = manifest.path.with_name(f".{manifest.path.name}.partial")
    pending.write_text(manifest.to_json())
    os.replace(pending, manifest.path)  # the moment workers (on their next load) switch
    for old in weights_dir.glob(f"{name}.openvino.*.*"):
        if old.suffix in (".xml", ".bin") and old not in final.values():
            old.unlink(missing_ok=True)
    echo(f"{name}: installed {manifest.path}")
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m segmentation.inference.export",
        description="Export the models to OpenVINO, checked against torch on real photos.",
    )
    parser.add_argument(
        "--model",
        action="append",
        choices=MODEL_NAMES,
        help="a model to export (repeatable; default: every model that can run here)",
    )
    parser.add_argument(
        "--weights-dir", type=Path, help="default: $SEGWEB_WEIGHTS_DIR, else weights/"
    )
    parser.add_argument("--force", action="store_true", help="export again even if up to date")
    args = parser.parse_args(argv)

    weights_dir = args.weights_dir or default_weights_dir()
    names = args.model or [m.name for m in list_models(weights_dir=weights_dir) if m.usable]
    failures = 0
    for name in names:
        try:
            export_model(name, weights_dir=weights_dir, force=args.force, echo=print)
        except InferenceError as exc:
            print(f"error: {name}: {exc}", file=sys.stderr)
            failures += 1
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
