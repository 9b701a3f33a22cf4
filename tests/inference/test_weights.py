"""The weights download step: checks the digest and never leaves a bad file behind."""

import hashlib
import http.server
import threading
from functools import partial

import pytest

from segmentation.inference.weights import ChecksumError, download, main


@pytest.fixture
def served(tmp_path):
    """A loopback HTTP server over a folder holding one fake weights file."""
    root = tmp_path / "srv"
    root.mkdir()
    payload = b"fake weights " * 1000
    (root / "w.pth").write_bytes(payload)
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    # shutdown() waits for the serve loop's next poll: 0.5 s by default.
    threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    ).start()
    yield f"http://127.0.0.1:{server.server_port}/w.pth", hashlib.sha256(payload).hexdigest()
    server.shutdown()


def test_download_keeps_a_file_whose_digest_matches(served, tmp_path):
    url, sha = served
    target = tmp_path / "out" / "model.pth"
    assert download(url, sha[:8], target) == sha
    assert hashlib.sha256(target.read_bytes()).hexdigest() == sha


def test_download_refuses_a_wrong_digest_and_leaves_nothing(served, tmp_path):
    url, _ = served
    target = tmp_path / "out" / "model.pth"
    with pytest.raises(ChecksumError, match="does not start with deadbeef"):
        download(url, "deadbeef", target)
    assert list((tmp_path / "out").iterdir()) == []


def test_verify_tells_a_foreign_file(tmp_path, capsys):
    path = tmp_path / "x.pth"
    path.write_bytes(b"x")
    assert main(["verify", str(path)]) == 1
    assert "not a file torchvision published" in capsys.readouterr().out
