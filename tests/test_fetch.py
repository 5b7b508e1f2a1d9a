"""The downloader against a local HTTP server on 127.0.0.1 (port 0): caching, checksums, mirrors,
interrupted bodies. No test touches any other host."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import importlib
import io
import threading
from pathlib import Path

import numpy as np
import pytest

from neurons.data import DatasetConfig, DatasetError, fetch, load_dataset, sources

# `neurons.data.fetch` the attribute is the function; the module is reached through importlib.
fetch_module = importlib.import_module("neurons.data.fetch")

PAYLOAD = bytes(range(256)) * 64  # 16 KiB


class _Handler(http.server.BaseHTTPRequestHandler):
    routes: dict[str, tuple[str, bytes]] = {}
    hits: list[str] = []

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    def do_GET(self) -> None:  # noqa: N802 (http.server API)
        self.hits.append(self.path)
        mode, body = self.routes.get(self.path, ("missing", b""))
        if mode == "missing":
            self.send_error(404)
            return
        self.send_response(200)
        if mode == "short":  # promise more bytes than are sent, then hang up
            self.send_header("Content-Length", str(len(body) * 2))
        elif mode == "ok":
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()
        self.close_connection = True


@pytest.fixture
def server():
    _Handler.routes = {}
    _Handler.hits = []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        yield base, _Handler
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def md5(data: bytes) -> str:
    return "md5:" + hashlib.md5(data).hexdigest()


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_good_download_is_cached_and_reused(server, tmp_path):
    base, handler = server
    handler.routes["/f.bin"] = ("ok", PAYLOAD)
    dest = tmp_path / "cache" / "f.bin"
    assert fetch([base + "/f.bin"], md5(PAYLOAD), dest, timeout=5) == dest
    assert dest.read_bytes() == PAYLOAD
    assert handler.hits == ["/f.bin"]
    fetch([base + "/f.bin"], md5(PAYLOAD), dest, timeout=5)
    assert handler.hits == ["/f.bin"], "second call must not make a request"
    assert leftovers(dest.parent) == ["f.bin"]


def test_sha256_checksums_are_accepted(server, tmp_path):
    base, handler = server
    handler.routes["/f.bin"] = ("ok", PAYLOAD)
    digest = hashlib.sha256(PAYLOAD).hexdigest()
    for spec in (f"sha256:{digest}", digest):  # prefixed or bare (length decides)
        dest = tmp_path / spec[:6] / "f.bin"
        assert fetch(base + "/f.bin", spec, dest, timeout=5).read_bytes() == PAYLOAD


def test_checksum_mismatch_is_rejected_and_leaves_nothing(server, tmp_path):
    base, handler = server
    handler.routes["/f.bin"] = ("ok", PAYLOAD)
    dest = tmp_path / "cache" / "f.bin"
    with pytest.raises(DatasetError, match="checksum mismatch") as e:
        fetch([base + "/f.bin"], md5(b"something else"), dest, timeout=5)
    assert "f.bin" in str(e.value) and "\n" not in str(e.value)
    assert leftovers(dest.parent) == []


@pytest.mark.parametrize("mode", ["short", "nolength"])
def test_interrupted_body_leaves_nothing(server, tmp_path, mode):
    base, handler = server
    handler.routes["/f.bin"] = (mode, PAYLOAD[:1000])
    dest = tmp_path / "cache" / "f.bin"
    expected = "incomplete download" if mode == "short" else "checksum mismatch"
    with pytest.raises(DatasetError, match=expected):
        fetch([base + "/f.bin"], md5(PAYLOAD), dest, timeout=5)
    assert leftovers(dest.parent) == []


def test_mirror_fallback(server, tmp_path):
    base, handler = server
    handler.routes["/good/f.bin"] = ("ok", PAYLOAD)
    handler.routes["/bad/f.bin"] = ("ok", b"tampered")
    urls = [
        "ftp://127.0.0.1/f.bin",  # not http(s): skipped
        base + "/missing/f.bin",  # 404
        base + "/bad/f.bin",  # wrong checksum
        base + "/good/f.bin",
    ]
    dest = tmp_path / "cache" / "f.bin"
    assert fetch(urls, md5(PAYLOAD), dest, timeout=5).read_bytes() == PAYLOAD
    assert handler.hits == ["/missing/f.bin", "/bad/f.bin", "/good/f.bin"]
    assert leftovers(dest.parent) == ["f.bin"]


def test_all_mirrors_failing_names_each(server, tmp_path):
    base, handler = server
    urls = [base + "/a/f.bin", base + "/b/f.bin"]
    with pytest.raises(DatasetError) as e:
        fetch(urls, md5(PAYLOAD), tmp_path / "c" / "f.bin", timeout=5)
    msg = str(e.value)
    assert "f.bin" in msg and "/a/f.bin" in msg and "/b/f.bin" in msg and "\n" not in msg
    assert leftovers(tmp_path / "c") == []


def test_stale_cached_file_is_replaced(server, tmp_path):
    base, handler = server
    handler.routes["/f.bin"] = ("ok", PAYLOAD)
    dest = tmp_path / "f.bin"
    dest.write_bytes(b"stale")
    fetch([base + "/f.bin"], md5(PAYLOAD), dest, timeout=5)
    assert dest.read_bytes() == PAYLOAD and handler.hits == ["/f.bin"]


def test_keyboard_interrupt_removes_temp_file(tmp_path, monkeypatch):
    class Body(io.BytesIO):
        headers = {"Content-Length": str(len(PAYLOAD))}
        calls = 0

        def read(self, n=-1):
            Body.calls += 1
            if Body.calls > 1:
                raise KeyboardInterrupt
            return super().read(100)

    monkeypatch.setattr(fetch_module.urllib.request, "urlopen", lambda *a, **k: Body(PAYLOAD))
    dest = tmp_path / "cache" / "f.bin"
    with pytest.raises(KeyboardInterrupt):
        fetch(["http://127.0.0.1:9/f.bin"], md5(PAYLOAD), dest, timeout=1)
    assert leftovers(dest.parent) == []


def test_bad_checksum_spec(tmp_path):
    with pytest.raises(DatasetError, match="bad checksum spec"):
        fetch(["http://127.0.0.1:9/x"], "crc32:1234", tmp_path / "x")


def _idx(arr: np.ndarray) -> bytes:
    header = bytes([0, 0, 8, arr.ndim]) + b"".join(d.to_bytes(4, "big") for d in arr.shape)
    return gzip.compress(header + arr.astype(np.uint8).tobytes())


def test_mnist_download_end_to_end(server, tmp_path, monkeypatch):
    """load_dataset(mnist) fetches the four files from the (local) mirrors and caches them."""
    base, handler = server
    rng = np.random.default_rng(0)
    files = {
        "train_images": _idx(rng.integers(0, 256, (12, 28, 28))),
        "train_labels": _idx(np.arange(12) % 10),
        "test_images": _idx(rng.integers(0, 256, (6, 28, 28))),
        "test_labels": _idx(np.arange(6) % 10),
    }
    remotes = {}
    for key, data in files.items():
        name = sources.IDX_FILES[key] + ".gz"
        handler.routes[f"/mirror2/{name}"] = ("ok", data)
        remotes[key] = sources.Remote(name, md5(data), (base + "/mirror1/", base + "/mirror2/"))
    monkeypatch.setitem(sources.REMOTES, "mnist", remotes)
    monkeypatch.setitem(sources.SYSTEM_DIRS, "mnist", ())
    monkeypatch.setenv("NEURONS_DATA", str(tmp_path / "data"))
    ds = load_dataset(DatasetConfig(name="mnist"))
    assert (ds.n_train, ds.n_test) == (12, 6)
    assert "downloaded from" in ds.source and str(tmp_path / "data" / "mnist") in ds.source
    assert len(handler.hits) == 8  # each file: mirror1 (404) then mirror2
    ds2 = load_dataset(DatasetConfig(name="mnist"))
    assert len(handler.hits) == 8, "cached files must be reused without requests"
    assert "downloaded" not in ds2.source
    np.testing.assert_array_equal(ds.x_train, ds2.x_train)
