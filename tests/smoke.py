"""`make smoke`: segweb as a new user meets it, from `make run` to segmented photos.

    make smoke                     # or: .venv/bin/python tests/smoke.py [--photos DIR]

Runs `make run` on a fresh data directory and a free port, waits for /healthz, creates a user the
README's way (`manage.py createsuperuser`), signs in through the HTML sign-in page, uploads two
real photos through the HTML upload form (with its CSRF token) and one through the API with a
token, waits for the three jobs, and checks each found what the photo shows, and that its overlay
and COCO downloads work. Then it stops `make run` as Ctrl-C would and checks that no process is
left and the port is free. Exits non-zero, saying what failed, otherwise.

Only the runtime is needed (``requests`` is a runtime requirement): CI runs this first, in a clean
clone, before the test tools are installed, so that what users install is what CI proves works.
"""

from __future__ import annotations

import argparse
import io
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = ROOT / "segmentation" / "inference" / "photos"
#: Photos the project ships, and a class each must be found with (YOLOv7-seg, at 0.5).
EXPECTED = {"chelsea.jpg": "cat", "coffee.jpg": "cup", "astronaut.jpg": "person"}
USERNAME, PASSWORD = "smoke", "smoke-test-passphrase-7431"
START_TIMEOUT = 900  # a first `make run` creates the virtual environment
JOB_TIMEOUT = 600


class SmokeFailure(Exception):
    pass


def check(condition: object, message: str) -> None:
    if not condition:
        raise SmokeFailure(message)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def processes_of(data_dir: Path) -> list[str]:
    """Command lines of the processes running with ``SEGWEB_DATA_DIR=data_dir``."""
    marker = f"SEGWEB_DATA_DIR={data_dir}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and marker in (entry / "environ").read_bytes().split(b"\0"):
                found.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode())
        except OSError:
            continue
    return found


def say(message: str) -> None:
    print(f"smoke: {message}", flush=True)


def wait_until_up(base: str, make: subprocess.Popen, log: Path) -> float:
    started = time.monotonic()
    while time.monotonic() - started < START_TIMEOUT:
        if make.poll() is not None:
            raise SmokeFailure(f"make run exited ({make.returncode}):\n{log.read_text()[-3000:]}")
        try:
            if requests.get(f"{base}/healthz", timeout=5).status_code == 200:
                return time.monotonic() - started
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise SmokeFailure(f"/healthz did not answer in {START_TIMEOUT} s:\n{log.read_text()[-3000:]}")


def create_user(env: dict) -> None:
    result = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "python"), "manage.py", "createsuperuser", "--no-input",
         "--username", USERNAME, "--email", "smoke@example.invalid"],
        cwd=ROOT, env={**env, "DJANGO_SUPERUSER_PASSWORD": PASSWORD},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    check(result.returncode == 0, f"createsuperuser failed: {result.stderr[-2000:]}")


def upload_through_the_form(base: str, photos: list[Path]) -> requests.Session:
    session = requests.Session()
    session.get(f"{base}/accounts/login/", timeout=30).raise_for_status()
    signed_in = session.post(
        f"{base}/accounts/login/",
        data={"username": USERNAME, "password": PASSWORD,
              "csrfmiddlewaretoken": session.cookies["csrftoken"]},
        headers={"Referer": f"{base}/accounts/login/"}, timeout=30,
    )  # fmt: skip
    check("sessionid" in session.cookies, f"HTML sign-in failed ({signed_in.status_code})")
    page = session.get(f"{base}/upload/", timeout=30)
    check(page.status_code == 200 and "yolov7_seg" in page.text, "upload page has no usable model")
    files = [("images", (p.name, p.read_bytes(), "image/jpeg")) for p in photos]
    response = session.post(
        f"{base}/upload/",
        data={"score_threshold": "0.5", "model": "auto",
              "csrfmiddlewaretoken": session.cookies["csrftoken"]},
        files=files, headers={"Referer": f"{base}/upload/"}, allow_redirects=False, timeout=120,
    )  # fmt: skip
    check(response.status_code == 302, f"upload form answered {response.status_code}")
    return session


def api_token(base: str) -> str:
    token = requests.post(
        f"{base}/api/auth/token/", data={"username": USERNAME, "password": PASSWORD}, timeout=30
    )
    check(token.status_code == 200, f"token request answered {token.status_code}: {token.text}")
    return token.json()["token"]


def wait_for_jobs(base: str, headers: dict, expected: dict[str, str]) -> dict[str, dict]:
    listing = requests.get(f"{base}/api/jobs/", headers=headers, timeout=30).json()["results"]
    jobs = {job["original_filename"]: job["url"] for job in listing}
    check(set(jobs) == set(expected), f"jobs {sorted(jobs)} instead of {sorted(expected)}")
    done: dict[str, dict] = {}
    deadline = time.monotonic() + JOB_TIMEOUT
    while len(done) < len(jobs):
        check(time.monotonic() < deadline, f"jobs not finished in {JOB_TIMEOUT} s")
        for name, url in jobs.items():
            if name not in done:
                job = requests.get(url, headers=headers, timeout=30).json()
                if job["status"] in ("succeeded", "failed"):
                    done[name] = job
        time.sleep(1)
    return done


def check_results(base: str, session, headers: dict, jobs: dict, expected: dict) -> None:
    for name, job in sorted(jobs.items()):
        check(job["status"] == "succeeded", f"{name}: {job['status']}: {job['error']}")
        check(expected[name] in job["labels"], f"{name}: {expected[name]} not in {job['labels']}")
        overlay = requests.get(job["overlay_url"], headers=headers, timeout=30)
        check(overlay.status_code == 200, f"{name}: overlay answered {overlay.status_code}")
        picture = Image.open(io.BytesIO(overlay.content))
        check(picture.format == "PNG", f"{name}: overlay is {picture.format}")
        check(picture.size == (job["width"], job["height"]), f"{name}: overlay size")
        coco = requests.get(f"{job['url']}coco/", headers=headers, timeout=30).json()
        names = {c["id"]: c["name"] for c in coco["categories"]}
        found = {names[a["category_id"]] for a in coco["annotations"]}
        check(expected[name] in found, f"{name}: COCO export lacks {expected[name]}")
        page = session.get(f"{base}/jobs/{job['id']}/coco.json", timeout=30)
        check(page.status_code == 200 and page.json()["annotations"], f"{name}: page COCO download")
        say(f"{name}: {', '.join(job['labels'])} (model {job['model']}, {job['runtime']}, "
            f"{job['inference_ms']} ms)")  # fmt: skip


def stop(make: subprocess.Popen, data_dir: Path, port: int) -> None:
    os.killpg(make.pid, signal.SIGINT)  # Ctrl-C in the terminal `make run` runs in
    try:
        make.wait(timeout=90)
    except subprocess.TimeoutExpired as exc:
        raise SmokeFailure("make run did not stop within 90 s of Ctrl-C") from exc
    deadline = time.monotonic() + 30
    while processes_of(data_dir) and time.monotonic() < deadline:
        time.sleep(0.5)
    check(processes_of(data_dir) == [], f"left running: {processes_of(data_dir)}")
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is no listener
        try:
            s.bind(("127.0.0.1", port))
        except OSError as exc:
            raise SmokeFailure(f"port {port} still taken after make run stopped") from exc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make smoke", description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=Path, default=PHOTOS, help="folder with the photos")
    args = parser.parse_args(argv)
    photos = [args.photos / name for name in EXPECTED]
    missing = [str(p) for p in photos if not p.is_file()]
    if missing:
        say(f"FAILED: missing photos: {', '.join(missing)}")
        return 1
    data_dir = Path(tempfile.mkdtemp(prefix="segweb-smoke-"))
    port = free_port()
    env = {**os.environ, "SEGWEB_DATA_DIR": str(data_dir), "PORT": str(port)}
    log = data_dir / "make-run.log"
    say(f"make run on port {port}, data in {data_dir} (log: {log})")
    started = time.monotonic()
    with log.open("w") as out:
        make = subprocess.Popen(
            [os.environ.get("MAKE", "make"), "run"], cwd=ROOT, env=env, stdout=out,
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
    try:
        run(f"http://127.0.0.1:{port}", env, make, log, photos)
        stop(make, data_dir, port)
    except Exception as exc:  # noqa: BLE001 - whatever broke, say it and stop make run
        say(f"FAILED: {type(exc).__name__}: {exc}")
        say(f"last lines of {log}:\n{log.read_text()[-4000:]}")
        return 1
    finally:
        if make.poll() is None:
            os.killpg(make.pid, signal.SIGINT)
            make.wait(timeout=90)
    say(f"passed in {time.monotonic() - started:.1f} s; nothing left running")
    return 0


def run(base: str, env: dict, make: subprocess.Popen, log: Path, photos: list[Path]) -> None:
    say(f"/healthz answered after {wait_until_up(base, make, log):.1f} s")
    create_user(env)
    session = upload_through_the_form(base, photos[:2])
    headers = {"Authorization": f"Token {api_token(base)}"}
    with photos[2].open("rb") as f:
        created = requests.post(
            f"{base}/api/jobs/", headers=headers, timeout=120,
            files={"image": (photos[2].name, f, "image/jpeg")}, data={"score_threshold": "0.5"},
        )  # fmt: skip
    check(created.status_code == 201, f"API upload answered {created.status_code}")
    uploaded = time.monotonic()
    jobs = wait_for_jobs(base, headers, EXPECTED)
    say(f"3 jobs finished {time.monotonic() - uploaded:.1f} s after upload")
    check_results(base, session, headers, jobs, EXPECTED)


if __name__ == "__main__":
    sys.exit(main())
