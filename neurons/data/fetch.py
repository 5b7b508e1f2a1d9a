"""Download one file from a list of mirrors into the cache, verified by its published checksum.

urllib only; the file is streamed to a temp file next to the destination and renamed into place
only when the checksum matches. It does not parse or unpack what it downloads.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from .errors import DatasetError

log = logging.getLogger("neurons.data")

CHUNK = 1 << 20
USER_AGENT = "neurons-data/0.1 (+python urllib)"


def data_dir() -> Path:
    """The data directory: `$NEURONS_DATA`, else `$XDG_CACHE_HOME/neurons` (~/.cache/neurons)."""
    env = os.environ.get("NEURONS_DATA")
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME")
    base = Path(cache).expanduser() if cache else Path.home() / ".cache"
    return base / "neurons"


def parse_checksum(checksum: str) -> tuple[str, str]:
    """'md5:<hex>' / 'sha256:<hex>' or a bare hex digest (32 chars = md5, 64 = sha256)."""
    algo, _, digest = checksum.rpartition(":")
    digest = digest.strip().lower()
    if not algo:
        algo = {32: "md5", 64: "sha256"}.get(len(digest), "")
    algo = algo.lower()
    if algo not in ("md5", "sha256") or len(digest) != {"md5": 32, "sha256": 64}[algo]:
        raise DatasetError(
            f"bad checksum spec {checksum!r}: expected 'md5:<32 hex>' or 'sha256:<64 hex>'"
        )
    return algo, digest


def file_digest(path: str | Path, algorithm: str) -> str:
    """Hex digest of a file, read in 1 MiB blocks."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def _download_once(url: str, algo: str, digest: str, dest: Path, timeout: float) -> None:
    """Stream `url` to a temp file beside `dest`, verify, rename; the temp file never survives."""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        h = hashlib.new(algo)
        got = 0
        request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(request, timeout=timeout) as resp:
            length = resp.headers.get("Content-Length")
            expected = int(length) if length and length.isdigit() else None
            while block := resp.read(CHUNK):
                out.write(block)
                h.update(block)
                got += len(block)
        if expected is not None and got != expected:
            raise DatasetError(f"incomplete download: got {got} of {expected} bytes")
        if h.hexdigest() != digest:
            raise DatasetError(f"{algo} checksum mismatch: expected {digest}, got {h.hexdigest()}")
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def fetch(
    urls: Sequence[str] | str,
    checksum: str,
    dest: str | Path,
    timeout: float = 30.0,
) -> Path:
    """Return `dest`, downloading it from the first working mirror in `urls` if needed.

    An existing `dest` whose checksum matches is reused without any request. Each mirror is tried
    in order; a failed or mismatching download leaves nothing behind. Only http(s) URLs are used.
    Raises `DatasetError` naming every mirror and why it failed.
    """
    algo, digest = parse_checksum(checksum)
    dest = Path(dest)
    url_list = [urls] if isinstance(urls, str) else list(urls)
    if dest.exists():
        if file_digest(dest, algo) == digest:
            return dest
        log.warning(
            "%s: %s checksum does not match the published one; downloading again", dest, algo
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    errors: list[str] = []
    for url in url_list:
        if not url.lower().startswith(("http://", "https://")):
            errors.append(f"{url}: not an http(s) URL")
            continue
        log.info("downloading %s -> %s", url, dest)
        try:
            _download_once(url, algo, digest, dest, timeout)
        except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as e:
            reason = getattr(e, "reason", None) or e
            errors.append(f"{url}: {reason}")
            log.warning("download failed: %s: %s", url, reason)
            continue
        return dest
    tried = "; ".join(errors) if errors else "no mirrors given"
    raise DatasetError(f"could not download {dest.name} into {dest.parent}: {tried}")
