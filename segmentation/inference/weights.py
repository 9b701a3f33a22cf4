"""Fetch and check torchvision's published Mask R-CNN weights (run on a machine with internet).

    python -m segmentation.inference.weights download            # Mask R-CNN v1 into weights/
    python -m segmentation.inference.weights download maskrcnn_resnet50_fpn_v2
    python -m segmentation.inference.weights verify weights/maskrcnn_resnet50_fpn_coco.pth

torchvision names each file after the first 8 hex digits of its SHA-256 (the same check
``torch.hub`` makes); a download is kept only if its digest starts with them. The loader itself
checks nothing of the kind, so that a user's fine-tuned state dict loads too.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from .catalog import MASKRCNN, MASKRCNN_V2, WEIGHTS_FILES, default_weights_dir, sha256_of


@dataclass(frozen=True)
class Published:
    url: str
    sha256_prefix: str
    size_mb: float


PUBLISHED: dict[str, Published] = {
    MASKRCNN: Published(
        "https://download.pytorch.org/models/maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth",
        "bf2d0c1e", 169.84,
    ),
    MASKRCNN_V2: Published(
        "https://download.pytorch.org/models/maskrcnn_resnet50_fpn_v2_coco-73cbd019.pth",
        "73cbd019", 177.22,
    ),
}  # fmt: skip


class ChecksumError(Exception):
    pass


def download(url: str, sha256_prefix: str, destination: Path, *, timeout: float = 60) -> str:
    """Download ``url`` to ``destination`` atomically; refuse it unless its SHA-256 matches.

    Returns the full SHA-256. Nothing is left at ``destination`` when the check fails.
    """
    destination.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    with tempfile.NamedTemporaryFile(dir=destination.parent, suffix=".part", delete=False) as tmp:
        part = Path(tmp.name)
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - https URL
                for chunk in iter(lambda: response.read(1 << 20), b""):
                    digest.update(chunk)
                    tmp.write(chunk)
        except BaseException:
            part.unlink(missing_ok=True)
            raise
    sha256 = digest.hexdigest()
    if not sha256.startswith(sha256_prefix):
        part.unlink()
        raise ChecksumError(f"{url}: SHA-256 {sha256} does not start with {sha256_prefix}")
    part.replace(destination)
    return sha256


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m segmentation.inference.weights")
    sub = parser.add_subparsers(dest="command", required=True)
    get = sub.add_parser("download", help="fetch torchvision's published weights and check them")
    get.add_argument("model", nargs="?", default=MASKRCNN, choices=sorted(PUBLISHED))
    get.add_argument("--dir", type=Path, help="default: $SEGWEB_WEIGHTS_DIR, else weights/")
    check = sub.add_parser("verify", help="print a weights file's SHA-256 and check its prefix")
    check.add_argument("path", type=Path)
    args = parser.parse_args(argv)

    if args.command == "download":
        published = PUBLISHED[args.model]
        target = (args.dir or default_weights_dir()) / WEIGHTS_FILES[args.model]
        print(f"Downloading {published.url} ({published.size_mb:.0f} MB) to {target}")
        try:
            sha256 = download(published.url, published.sha256_prefix, target)
        except (OSError, ChecksumError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(f"OK  sha256 {sha256}  {target}")
        return 0

    if not args.path.is_file():
        print(f"error: no such file: {args.path}", file=sys.stderr)
        return 1
    sha256 = sha256_of(args.path)
    matches = [name for name, p in PUBLISHED.items() if sha256.startswith(p.sha256_prefix)]
    print(f"sha256 {sha256}  {args.path}")
    print(f"matches torchvision's {matches[0]}" if matches else "not a file torchvision published")
    return 0 if matches else 1


if __name__ == "__main__":
    sys.exit(main())
