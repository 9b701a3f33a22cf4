"""Export of the models to OpenVINO, checked against torch before it is installed.

    python -m segmentation.inference.export                  # every usable model (make export)
    python -m segmentation.inference.export --model yolov7_seg --force
    python -m segmentation.inference.export --precision int8 # the opt-in INT8 export

For each model: convert its network to OpenVINO IR (its family says how), for INT8 quantize it
with NNCF (post-training, calibrated on the photos segweb ships), run both runtimes on the
shipped photos (``photos/``) and install the export only if it agrees with torch: FP32 gives
the same detections at several thresholds (``agreement.verify``); INT8 must reproduce at least
``INT8_MIN_SHARE`` of torch's instances (``agreement.Reproduction``). Files are written under
temporary names and renamed into place after the check, the manifest last (``os.replace``): a
worker never sees a half-written or unchecked export. An export that is already current is left
alone unless ``--force``.

Workers run this by themselves, in the background, when the export they want is missing
(``background``); ``make export`` does it ahead of time. Both need only the runtime
requirements.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import logging
import os
import secrets
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

from PIL import Image

from . import background
from .agreement import ExportRefusedError, Reproduction, verify
from .catalog import (
    EXPORT_FORMAT,
    FP32,
    INT8,
    MODEL_NAMES,
    PRECISIONS,
    default_weights_dir,
    export_stem,
    fingerprint,
    manifest_path,
    model_spec,
    source_weights,
)
from .errors import InferenceError
from .openvino_runtime import ExportUnusableError, Manifest, current_manifest
from .ov import ov
from .photos import shipped_photos
from .registry import build_torch, family, list_models, resolve_model_name
from .runtime import requested_precision

logger = logging.getLogger("segmentation.inference")

#: The share of torch's instances (score >= the default threshold) an INT8 export must find on
#: the shipped photos (same label, box IoU >= 0.9, mask IoU >= 0.85) to be installed.
INT8_MIN_SHARE = 0.8


class ExportBusyError(InferenceError):
    """Another process is exporting into the same weights directory (``wait=False``)."""


@contextlib.contextmanager
def export_lock(weights_dir: Path, *, wait: bool = True) -> Iterator[None]:
    """One export at a time per weights directory, across processes (and machines on NFS).

    Raises:
        ExportBusyError: ``wait=False`` and another export holds it.
    """
    with (weights_dir / ".openvino-export.lock").open("a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            raise ExportBusyError(f"another export is running in {weights_dir}") from None
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def export_model(
    name: str,
    *,
    weights_dir: Path | None = None,
    precision: str = FP32,
    photos: Mapping[str, Image.Image] | None = None,
    thresholds: Sequence[float] | None = None,
    force: bool = False,
    wait: bool = True,
    echo: Callable[[str], None] = logger.info,
) -> Manifest:
    """Export ``name`` to OpenVINO in ``weights_dir``, check it, install it; return its manifest.

    Args:
        precision: ``fp32`` (torch's answers) or ``int8`` (quantized; answers differ a little).
        photos: what to check it on (default: the shipped photos); INT8 is always calibrated on
            the shipped photos.
        thresholds: score thresholds to check it at (default: the family's).
        force: export again even if the installed export is current.
        wait: wait for another export into the same directory to finish (else
            ``ExportBusyError``).
        echo: where progress lines go.

    Raises:
        ModelUnavailableError: the model cannot run here (weights missing...).
        ExportRefusedError: the export disagrees with torch; nothing was installed.
    """
    weights_dir = weights_dir or default_weights_dir()
    resolve_model_name(name, weights_dir=weights_dir)  # raises when it cannot run here
    if precision not in PRECISIONS:
        raise InferenceError(f"Unknown precision {precision!r}; one of {', '.join(PRECISIONS)}.")
    weights_dir.mkdir(parents=True, exist_ok=True)
    with export_lock(weights_dir, wait=wait):
        if not force:
            with contextlib.suppress(ExportUnusableError):
                manifest = current_manifest(model_spec(name), weights_dir, precision)
                echo(f"{name}: the {precision.upper()} OpenVINO export is up to date")
                return manifest
        photos = photos if photos is not None else shipped_photos()
        thresholds = thresholds or family(name).verify_thresholds
        return _export(name, weights_dir, precision, photos, thresholds, echo)


def _export(
    name: str,
    weights_dir: Path,
    precision: str,
    photos: Mapping[str, Image.Image],
    thresholds: Sequence[float],
    echo: Callable[[str], None],
) -> Manifest:
    spec, fam = model_spec(name), family(name)
    source = source_weights(spec, weights_dir)
    started = time.perf_counter()
    reference = build_torch(name, weights_dir=weights_dir)
    stamp = fingerprint(spec, source, precision)
    graph, config = fam.convert(reference, next(iter(photos.values())))
    echo(f"{name}: converted in {time.perf_counter() - started:.0f} s")
    if precision == INT8:
        started = time.perf_counter()
        graph = quantize(graph, name, reference)
        echo(f"{name}: quantized to INT8 in {time.perf_counter() - started:.0f} s")

    stem = export_stem(name, precision)
    token = secrets.token_hex(4)
    final = {ext: weights_dir / f"{stem}.{token}.{ext}" for ext in ("xml", "bin")}
    # save_model names the weights after the graph: ".x.partial.xml" gets ".x.partial.bin".
    partial = {ext: weights_dir / f".{stem}.{token}.partial.{ext}" for ext in final}
    manifest = Manifest(
        path=manifest_path(name, weights_dir, precision),
        xml=partial["xml"],
        bin=partial["bin"],
        fingerprint=stamp,
        config=config,
        verification={},
    )
    try:
        # FP32 weights: save_model's default halves them to FP16, which changes answers.
        ov.save_model(graph, str(partial["xml"]), compress_to_fp16=False)
        del graph
        started = time.perf_counter()
        candidate = fam.load_openvino(spec, source, manifest)
        if precision == FP32:
            agreement = verify(reference, candidate, photos, thresholds)
            checked = agreement.as_dict()
            echo(
                f"{name}: same detections as torch on {len(photos)} photos at thresholds "
                f"{', '.join(map(str, thresholds))} ({agreement.detections} detections, "
                f"|Δscore| <= {agreement.max_score_delta:.1e}, box IoU >= "
                f"{agreement.min_box_iou:.4f}, mask IoU >= {agreement.min_mask_iou:.4f}; "
                f"{time.perf_counter() - started:.0f} s)"
            )
        else:
            reproduction = check_int8(reference, candidate, photos, max(thresholds))
            checked = reproduction.as_dict()
            echo(
                f"{name}: INT8 finds {reproduction.reproduced} of torch's {reproduction.reference}"
                f" instances on {len(photos)} photos at {max(thresholds)} "
                f"({reproduction.extra} extra; {time.perf_counter() - started:.0f} s)"
            )
        del candidate
        for ext in ("xml", "bin"):
            partial[ext].replace(final[ext])
    except BaseException:
        for path in (*partial.values(), *final.values()):
            path.unlink(missing_ok=True)
        raise
    installed = Manifest(
        path=manifest.path,
        xml=final["xml"],
        bin=final["bin"],
        fingerprint=stamp,
        config=config,
        verification={
            "photos": list(photos),
            "thresholds": list(thresholds),
            **checked,
            "export_format": EXPORT_FORMAT,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        },
    )
    pending = installed.path.with_name(f".{installed.path.name}.partial")
    pending.write_text(installed.to_json())
    os.replace(pending, installed.path)  # the moment workers (on their next job) switch
    for old in weights_dir.glob(f"{stem}.*.*"):
        if old.suffix in (".xml", ".bin") and old not in final.values():
            old.unlink(missing_ok=True)
    background.forget_failure(name, weights_dir, precision)
    echo(f"{name}: installed {installed.path}")
    return installed


def check_int8(reference, candidate, photos: Mapping[str, Image.Image], threshold: float):
    """How many of torch's instances the INT8 export finds; refuse it under ``INT8_MIN_SHARE``.

    Raises:
        ExportRefusedError: saying what it missed.
    """
    reproduction = Reproduction()
    problems = []
    for label, image in photos.items():
        expected = reference.predict(image, score_threshold=threshold)
        found = candidate.predict(image, score_threshold=threshold)
        problems += [f"{label}: {p}" for p in reproduction.add(expected, found)]
    if reproduction.share < INT8_MIN_SHARE:
        raise ExportRefusedError(
            f"the INT8 network finds {reproduction.reproduced} of torch's "
            f"{reproduction.reference} instances (at least {INT8_MIN_SHARE:.0%} needed): "
            + "; ".join(problems[:5])
        )
    return reproduction


def calibration_photos() -> list[Image.Image]:
    """What INT8 is calibrated on: the shipped photos, and each mirrored (10 inputs)."""
    photos = list(shipped_photos().values())
    return photos + [p.transpose(Image.Transpose.FLIP_LEFT_RIGHT) for p in photos]


def import_nncf():
    """``nncf``, imported without its usage telemetry (see ``ov``: the same opt-out reporting)."""
    if "nncf" in sys.modules:
        return sys.modules["nncf"]
    saved = sys.modules.get("openvino_telemetry")
    sys.modules["openvino_telemetry"] = None  # type: ignore[assignment]  # makes its import fail
    try:
        import nncf
    finally:
        if saved is None:
            del sys.modules["openvino_telemetry"]
        else:
            sys.modules["openvino_telemetry"] = saved
    nncf.set_log_level(logging.WARNING)  # not a line per layer it leaves in float
    return nncf


def quantize(graph: ov.Model, name: str, reference) -> ov.Model:
    """Post-training INT8 quantization of an exported FP32 graph with NNCF."""
    nncf = import_nncf()
    fam = family(name)
    inputs = [fam.network_inputs(reference, photo) for photo in calibration_photos()]
    return nncf.quantize(
        graph, nncf.Dataset(inputs), subset_size=len(inputs), **fam.quantization_options(nncf)
    )


def _background_mode() -> None:
    """A worker's background export: the lowest CPU priority, and die with the worker."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        os.nice(19)
    with contextlib.suppress(OSError, AttributeError):
        import ctypes
        import signal

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    if os.getppid() == 1:  # the worker died before prctl: nobody to export for
        sys.exit(1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m segmentation.inference.export",
        description="Export the models to OpenVINO, checked against torch on shipped photos.",
    )
    parser.add_argument(
        "--model",
        action="append",
        choices=MODEL_NAMES,
        help="a model to export (repeatable; default: every model that can run here)",
    )
    parser.add_argument(
        "--precision",
        action="append",
        choices=PRECISIONS,
        help="fp32 and/or int8 (repeatable; default: fp32, and $SEGWEB_PRECISION's)",
    )
    parser.add_argument(
        "--weights-dir", type=Path, help="default: $SEGWEB_WEIGHTS_DIR, else weights/"
    )
    parser.add_argument("--force", action="store_true", help="export again even if up to date")
    parser.add_argument(
        "--background", action="store_true", help=argparse.SUPPRESS
    )  # a worker's: lowest priority, leave if another export runs
    args = parser.parse_args(argv)
    if args.background:
        _background_mode()
        logging.basicConfig(level=logging.INFO, format="%(message)s")

    weights_dir = args.weights_dir or default_weights_dir()
    names = args.model or [m.name for m in list_models(weights_dir=weights_dir) if m.usable]
    precisions = args.precision or sorted({FP32, requested_precision()})
    failures = 0
    for name in names:
        for precision in precisions:
            try:
                export_model(
                    name,
                    weights_dir=weights_dir,
                    precision=precision,
                    force=args.force,
                    wait=not args.background,
                    echo=print,
                )
            except ExportBusyError as exc:
                print(f"{name}: {exc}; leaving it to that one", file=sys.stderr)
                return background.BUSY
            except InferenceError as exc:
                print(f"error: {name} ({precision}): {exc}", file=sys.stderr)
                if isinstance(exc, ExportRefusedError):
                    background.record_failure(name, weights_dir, precision, str(exc))
                failures += 1
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
