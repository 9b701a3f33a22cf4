"""segweb's command-line client: ``python -m segweb_client``. Depends only on requests.

    python -m segweb_client login --url https://segweb.example.com --username alice
    python -m segweb_client upload shoot/ --zip --wait --threshold 0.6
    python -m segweb_client jobs --has person:2
    python -m segweb_client export --format coco --out coco/ --collection <id>

The token is kept in ``$XDG_CONFIG_HOME/segweb/client.json`` (mode 600); ``SEGWEB_URL`` and
``SEGWEB_TOKEN`` in the environment take precedence. Exports are built by the server
(``POST /api/exports/``) and unpacked into ``--out`` in the layout CVAT and datumaro read.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
import tempfile
import time
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path

import requests
from requests.adapters import HTTPAdapter, Retry

PHOTO_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".heic",
                  ".heif"}  # fmt: skip
TIMEOUT = 60  # seconds for ordinary requests
POLL_SECONDS = 1  # between looks at a job or an export in progress
#: Dataset formats of ``POST /api/exports/`` (the README's "Exports" says what each holds).
FORMATS = ["coco", "coco_polygons", "yolo", "masks", "cutouts"]
UPLOAD_TIMEOUT = 600  # a large ZIP: every photo is checked before the server answers


class ClientError(Exception):
    """Something to tell the user, then exit with status 1."""


# --- Configuration --------------------------------------------------------------------------


def config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "segweb" / "client.json"


def load_config() -> dict:
    path = config_path()
    config = json.loads(path.read_text()) if path.is_file() else {}
    if os.environ.get("SEGWEB_URL"):
        config["url"] = os.environ["SEGWEB_URL"]
    if os.environ.get("SEGWEB_TOKEN"):
        config["token"] = os.environ["SEGWEB_TOKEN"]
    return config


def save_config(config: dict) -> Path:
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # a token: owner only
    with os.fdopen(fd, "w") as f:
        json.dump(config, f, indent=1)
    return path


# --- The API --------------------------------------------------------------------------------


class Api:
    def __init__(self, url: str, token: str | None = None) -> None:
        self.base = url.rstrip("/")
        self.session = requests.Session()
        # A server may close an idle keep-alive connection just as it is reused (gunicorn after
        # 2 s): reads are retried; uploads (POST) never are.
        retry = Retry(total=3, connect=0, read=3, backoff_factor=0.2, allowed_methods={"GET"})
        for scheme in ("http://", "https://"):
            self.session.mount(scheme, HTTPAdapter(max_retries=retry))
        if token:
            self.session.headers["Authorization"] = f"Token {token}"

    def request(self, method: str, path: str, *, expect=(200,), **kwargs) -> requests.Response:
        url = path if path.startswith("http") else self.base + path
        kwargs.setdefault("timeout", TIMEOUT)
        try:
            response = self.session.request(method, url, **kwargs)
        except requests.RequestException as exc:
            raise ClientError(f"Cannot reach {self.base}: {exc}") from exc
        if response.status_code not in expect:
            raise ClientError(_error_text(response))
        return response

    def get(self, path: str, **kwargs) -> dict:
        return self.request("GET", path, **kwargs).json()

    def pages(self, path: str, params: dict) -> Iterator[dict]:
        """Every item of a paginated list."""
        page = self.get(path, params={**params, "page_size": 100})
        while True:
            yield from page["results"]
            if not page.get("next"):
                return
            page = self.get(page["next"])


def _error_text(response: requests.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return f"HTTP {response.status_code}: {response.text[:300]}"
    detail = body.get("detail") if isinstance(body, dict) else None
    text = f"HTTP {response.status_code}: {detail or body}"
    for item in (body.get("rejected") or [])[:20] if isinstance(body, dict) else []:
        text += f"\n  {item['name']}: {item['reason']}"
    return text


# --- Progress -------------------------------------------------------------------------------


class Progress:
    """A one-line bar on stderr (redrawn in place on a terminal, a line per 10% elsewhere)."""

    def __init__(self, label: str, total: float, unit: str = "") -> None:
        self.label, self.total, self.unit = label, max(total, 1), unit
        self.tty = sys.stderr.isatty()
        self._last_decile = -1

    def update(self, done: float, note: str = "") -> None:
        fraction = min(done / self.total, 1.0)
        if not self.tty:
            decile = int(fraction * 10)
            if decile == self._last_decile and fraction < 1:
                return
            self._last_decile = decile
        filled = int(fraction * 30)
        bar = "#" * filled + "." * (30 - filled)
        text = f"{self.label} [{bar}] {fraction:4.0%} {_amount(done, self.unit)}"
        text += f"/{_amount(self.total, self.unit)} {note}".rstrip()
        sys.stderr.write(("\r" + text) if self.tty else text + "\n")
        sys.stderr.flush()

    def close(self) -> None:
        if self.tty:
            sys.stderr.write("\n")


def _amount(value: float, unit: str) -> str:
    return f"{value / 1048576:.1f} MB" if unit == "bytes" else f"{int(value)}"


class MultipartBody:
    """A multipart/form-data body read from disk as it is sent, reporting progress.

    requests would build the whole body in memory; this has a length (so no chunked encoding,
    which Django cannot read) and streams files of any size.
    """

    def __init__(self, fields: dict[str, str], files: list[tuple[str, str, Path]],
                 progress: Progress | None = None) -> None:  # fmt: skip
        self.boundary = uuid.uuid4().hex
        self.progress = progress
        self.sent = 0
        self._parts: list[bytes | Path] = []
        for name, value in fields.items():
            self._parts.append(
                f'--{self.boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'
                f"{value}\r\n".encode()
            )
        for field, filename, path in files:
            quoted = filename.replace('"', "%22").replace("\r", "").replace("\n", "")
            self._parts.append(
                f'--{self.boundary}\r\nContent-Disposition: form-data; name="{field}"; '
                f'filename="{quoted}"\r\nContent-Type: application/octet-stream\r\n\r\n'.encode()
            )
            self._parts.append(path)
            self._parts.append(b"\r\n")
        self._parts.append(f"--{self.boundary}--\r\n".encode())
        self.length = sum(p.stat().st_size if isinstance(p, Path) else len(p) for p in self._parts)
        self._chunks = self._iterate()
        self._buffer = b""

    @property
    def content_type(self) -> str:
        return f"multipart/form-data; boundary={self.boundary}"

    def __len__(self) -> int:
        return self.length

    def _iterate(self) -> Iterator[bytes]:
        for part in self._parts:
            if isinstance(part, Path):
                with part.open("rb") as f:
                    while chunk := f.read(256 * 1024):
                        yield chunk
            else:
                yield part

    def read(self, size: int = -1) -> bytes:
        while size < 0 or len(self._buffer) < size:
            chunk = next(self._chunks, None)
            if chunk is None:
                break
            self._buffer += chunk
        if size < 0:
            out, self._buffer = self._buffer, b""
        else:
            out, self._buffer = self._buffer[:size], self._buffer[size:]
        self.sent += len(out)
        if self.progress is not None:
            self.progress.update(self.sent)
        return out


# --- Commands -------------------------------------------------------------------------------


def cmd_login(args, config: dict) -> int:
    url = args.url or config.get("url") or "http://127.0.0.1:8000"
    username = args.username or input("Username: ")
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = os.environ.get("SEGWEB_PASSWORD") or getpass.getpass("Password: ")
    api = Api(url)
    token = api.request(
        "POST", "/api/auth/token/", data={"username": username, "password": password}
    ).json()["token"]
    if config.get("token") and config.get("url") == url:
        try:  # one token per client: the one it replaces is revoked
            _revoke(Api(url, config["token"]))
        except ClientError as exc:
            print(f"warning: the previous token could not be revoked ({exc})", file=sys.stderr)
    path = save_config({"url": url, "token": token})
    print(f"Signed in to {url} as {username}; token saved in {path}.")
    return 0


def cmd_logout(args, config: dict) -> int:
    _revoke(_api(args, config))
    save_config({key: value for key, value in config.items() if key != "token"})
    print("Signed out: this client's token is revoked (your other clients' still work).")
    return 0


def _revoke(api: Api) -> None:
    # 401: already revoked or expired, which is what was wanted.
    api.request("DELETE", "/api/auth/token/", expect=(204, 401))


def photos_in(paths: list[str]) -> tuple[list[Path], list[Path]]:
    """(photos, zip archives) from files and folders; folders are searched for photos."""
    photos, archives = [], []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            photos.extend(
                p for p in sorted(path.rglob("*"))
                if p.is_file() and p.suffix.lower() in PHOTO_SUFFIXES
                and not p.name.startswith(".")
            )  # fmt: skip
        elif path.is_file():
            (archives if path.suffix.lower() == ".zip" else photos).append(path)
        else:
            raise ClientError(f"{raw}: no such file or folder.")
    return photos, archives


def pack(photos: list[Path], destination: Path) -> Path:
    """Photos into one ZIP (stored: photos do not compress), with unique member names."""
    used: set[str] = set()
    with zipfile.ZipFile(destination, "w", zipfile.ZIP_STORED) as archive:
        for photo in photos:
            name, n = photo.name, 1
            while name in used:
                name = f"{photo.stem}-{n}{photo.suffix}"
                n += 1
            used.add(name)
            archive.write(photo, name)
    return destination


def cmd_upload(args, config: dict) -> int:
    api = _api(args, config)
    photos, archives = photos_in(args.paths)
    if not photos and not archives:
        raise ClientError("No photos found in the given paths.")
    options = {}
    if args.threshold is not None:
        options["score_threshold"] = str(args.threshold)
    if args.model:
        options["model"] = args.model
    results = []
    with tempfile.TemporaryDirectory(prefix="segweb-client-") as scratch:
        if args.zip and photos:
            archives.append(pack(photos, Path(scratch) / "photos.zip"))
            photos = []
        for archive in archives:
            fields = {**options, **({"name": args.name} if args.name else {})}
            results.append(_send(api, "/api/collections/", fields, [("archive", archive)]))
        if len(photos) == 1:
            results.append(_send(api, "/api/jobs/", options, [("image", photos[0])]))
        elif photos:
            fields = {**options, **({"name": args.name} if args.name else {})}
            results.append(_send(api, "/api/collections/", fields, [("images", p) for p in photos]))
    failed = 0
    for kind, body in results:
        if kind == "collection":
            print(f"collection {body['id']}: {body['progress']['total']} photo(s) queued "
                  f"({body['name']})")  # fmt: skip
            for item in body.get("rejected", []):
                print(f"  rejected {item['name']}: {item['reason']}")
        else:
            print(f"job {body['id']}: {body['status']} ({body['original_filename']})")
        if args.wait:
            failed += _wait(api, kind, body)
    return 1 if failed else 0


def _send(api: Api, path: str, fields: dict, files: list[tuple[str, Path]]) -> tuple[str, dict]:
    named = [(field, p.name, p) for field, p in files]
    total = sum(p.stat().st_size for _, p in files)
    progress = Progress(f"upload {len(files)} file(s)", total, "bytes")
    body = MultipartBody(fields, named, progress)
    response = api.request(
        "POST", path, expect=(201, 202), data=body,
        headers={"Content-Type": body.content_type, "Content-Length": str(len(body))},
        timeout=UPLOAD_TIMEOUT,
    )  # fmt: skip
    progress.close()
    return ("collection" if "collections" in path else "job"), response.json()


def _wait(api: Api, kind: str, body: dict) -> int:
    """Poll until finished, with a bar; the number of failed jobs."""
    if kind == "job":
        progress = Progress("segment", 1)
        while body["status"] not in ("succeeded", "failed"):
            time.sleep(POLL_SECONDS)
            body = api.get(body["url"])
        progress.update(1, body["status"])
        progress.close()
        if body["status"] == "failed":
            print(f"  failed: {body.get('error')}")
        return int(body["status"] == "failed")
    progress = Progress("segment", body["progress"]["total"])
    while True:
        counts = body["progress"]
        progress.update(counts["done"] + counts["failed"], f"({counts['failed']} failed)")
        if body["finished"]:
            break
        time.sleep(POLL_SECONDS)
        body = api.get(body["url"])
    progress.close()
    print(f"collection {body['id']}: {counts['done']} succeeded, {counts['failed']} failed")
    return counts["failed"]


def parse_has(value: str) -> tuple[str, int]:
    label, _, count = value.partition(":")
    if not label or (count and not count.isdigit()):
        raise argparse.ArgumentTypeError("use LABEL or LABEL:N, e.g. person:2")
    return label, int(count or 1)


def select_jobs(api: Api, args) -> Iterator[dict]:
    """Jobs matching --has / --status / --collection, newest first."""
    yield from api.pages("/api/jobs/", job_filters(args))


def job_filters(args) -> dict:
    """The job list's query for --has (repeatable: all must hold), --status, --collection."""
    filters: dict = {}
    if getattr(args, "status", None):
        filters["status"] = args.status
    if getattr(args, "collection", None):
        filters["collection"] = args.collection
    if getattr(args, "has", None):
        filters["has"] = [f"{label}:{count}" for label, count in args.has]
    return filters


def cmd_jobs(args, config: dict) -> int:
    api = _api(args, config)
    shown = 0
    for job in select_jobs(api, args):
        labels = ",".join(job.get("labels", [])) or "-"
        print(f"{job['id']}  {job['status']:<9}  {job['original_filename']}  {labels}")
        shown += 1
        if args.limit and shown >= args.limit:
            break
    if not shown:
        print("No jobs match.", file=sys.stderr)
    return 0


def cmd_export(args, config: dict) -> int:
    """A bulk export (``POST /api/exports/``) built by the server, then unpacked into --out."""
    api = _api(args, config)
    out = Path(args.out)
    body: dict = {"format": args.format}
    if args.job_ids:
        body["jobs"] = args.job_ids
    else:
        body["filters"] = {**job_filters(args), "status": "succeeded"}
    created = api.request("POST", "/api/exports/", json=body, expect=(202,)).json()
    export = api.get(created["url"])
    progress = Progress("export", export["progress"]["total"])
    while export["status"] not in ("succeeded", "failed"):
        progress.update(export["progress"]["done"], export["status"])
        time.sleep(POLL_SECONDS)
        export = api.get(created["url"])
    progress.update(export["progress"]["done"], export["status"])
    progress.close()
    if export["status"] == "failed":
        raise ClientError(f"The export failed: {export['error']}")
    with tempfile.TemporaryFile() as archive:
        response = api.request("GET", export["download_url"], stream=True)
        for chunk in response.iter_content(1 << 20):
            archive.write(chunk)
        count = unpack(archive, out)
    print(
        f"{export['progress']['total']} job(s) exported as {args.format}: {count} file(s) in {out}"
    )
    return 0


def unpack(archive, out: Path) -> int:
    """Extract a ZIP into ``out``, refusing any member that would land outside it."""
    out.mkdir(parents=True, exist_ok=True)
    root = out.resolve()
    with zipfile.ZipFile(archive) as bundle:
        members = [m for m in bundle.infolist() if not m.is_dir()]
        for member in members:
            target = (root / member.filename).resolve()
            if root not in target.parents:
                raise ClientError(f"The export holds a file outside its folder: {member.filename}")
        bundle.extractall(root, members)
    return len(members)


def _api(args, config: dict) -> Api:
    url = args.url or config.get("url")
    token = args.token or config.get("token")
    if not url or not token:
        raise ClientError("Not signed in: run `python -m segweb_client login` first.")
    return Api(url, token)


# --- Entry point ----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m segweb_client", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--url", help="segweb's address (default: the one saved by login)")
    parser.add_argument("--token", help="API token (default: the one saved by login)")
    commands = parser.add_subparsers(dest="command", required=True)

    login = commands.add_parser("login", help="get an API token and save it")
    login.add_argument("--username")
    login.add_argument("--password-stdin", action="store_true",
                       help="read the password from standard input")  # fmt: skip
    login.set_defaults(run=cmd_login)
    logout = commands.add_parser("logout", help="revoke this client's token and forget it")
    logout.set_defaults(run=cmd_logout)

    upload = commands.add_parser("upload", help="upload photos, folders or ZIPs")
    upload.add_argument("paths", nargs="+", metavar="PATH")
    upload.add_argument(
        "--zip", action="store_true", help="pack the photos into one ZIP first (one request)"
    )
    upload.add_argument("--wait", action="store_true", help="wait until every job is finished")
    upload.add_argument("--threshold", type=float, help="minimum score, 0 to 1")
    upload.add_argument("--model", help="a name from GET /api/models/ (default: auto)")
    upload.add_argument("--name", help="the collection's name")
    upload.set_defaults(run=cmd_upload)

    jobs = commands.add_parser("jobs", help="list your jobs")
    jobs.add_argument("--has", type=parse_has, action="append", metavar="LABEL[:N]",
                      help="jobs with at least N instances of LABEL, e.g. person:2 "
                      "(repeatable: all must hold)")  # fmt: skip
    jobs.add_argument("--status", choices=["queued", "running", "succeeded", "failed"])
    jobs.add_argument("--collection", help="a collection's id")
    jobs.add_argument("--limit", type=int, default=0)
    jobs.set_defaults(run=cmd_jobs)

    export = commands.add_parser(
        "export", help="export jobs as a dataset (COCO, YOLO, masks, cut-outs) into a folder"
    )
    export.add_argument("job_ids", nargs="*", metavar="JOB_ID")
    export.add_argument("--format", choices=FORMATS, default="coco")
    export.add_argument("--out", required=True, metavar="DIR")
    export.add_argument("--has", type=parse_has, action="append", metavar="LABEL[:N]",
                        help="jobs with at least N instances of LABEL (repeatable)")  # fmt: skip
    export.add_argument("--collection", help="a collection's id")
    export.set_defaults(run=cmd_export)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args, load_config())
    except ClientError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


__all__ = ["Api", "MultipartBody", "main"]
