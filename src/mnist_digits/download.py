"""Fetching files over HTTP: several mirrors, retries, a progress bar, a checksum, atomic rename."""

from __future__ import annotations

import hashlib
import http.client
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from .errors import DataError
from .files import atomic_writer

CHUNK = 1 << 16  # bytes read per step


class ChecksumMismatch(Exception):
    """The bytes arrived but are not the expected file."""


class TransferError(Exception):
    """The connection failed or closed before the whole file arrived; another try may succeed."""


def download(
    urls: Sequence[str],
    dest: Path,
    sha256: str,
    *,
    attempts: int = 3,  # tries per mirror
    backoff: float = 1.0,  # seconds before the second try, doubled after each failure
    timeout: float = 30.0,  # seconds without data before giving up on a connection
    progress: bool = True,
) -> Path:
    """Download the first mirror copy whose sha256 matches, into `dest` (written atomically)."""
    failures = []
    for url in urls:
        for attempt in range(attempts):
            try:
                _fetch_one(url, dest, sha256, timeout, progress)
                return dest
            except ChecksumMismatch as e:
                failures.append(f"{url}: {e}")
                break  # the mirror answered with other bytes; retrying will not help
            except (urllib.error.URLError, OSError, http.client.HTTPException, TransferError) as e:
                if isinstance(e, urllib.error.HTTPError):
                    reason: object = f"HTTP {e.code} {e.reason}"
                else:
                    reason = getattr(e, "reason", None) or e
                failures.append(f"{url} (try {attempt + 1}/{attempts}): {reason}")
                if isinstance(e, urllib.error.HTTPError) and e.code < 500:
                    break  # 404 and the like: this mirror does not have the file
                if attempt + 1 < attempts:
                    time.sleep(backoff * 2**attempt)
    raise DataError(
        f"could not download {dest.name} from any mirror:\n  "
        + "\n  ".join(failures)
        + "\nCheck the network,",
        advice="or put the MNIST files in a folder and name it as {data_dir}.",
    )


def _fetch_one(url: str, dest: Path, sha256: str, timeout: float, progress: bool) -> None:
    request = urllib.request.Request(url, headers={"User-Agent": "mnist-digits"})
    digest = hashlib.sha256()
    with urllib.request.urlopen(request, timeout=timeout) as response:
        total = int(response.headers.get("Content-Length") or 0) or None
        bar = tqdm(total=total, unit="B", unit_scale=True, desc=dest.name, disable=not progress)
        with bar, atomic_writer(dest) as f:
            received = 0
            while chunk := _read_chunk(response):
                digest.update(chunk)
                f.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
            if total is not None and received != total:
                raise TransferError(f"connection closed after {received:,} of {total:,} bytes")
            if digest.hexdigest() != sha256:
                # Raising inside the writer discards the temporary file.
                raise ChecksumMismatch(f"sha256 {digest.hexdigest()[:16]}..., expected {sha256[:16]}...")


def _read_chunk(response: http.client.HTTPResponse) -> bytes:
    """The next chunk of the body; a network failure is raised as TransferError, since atomic_writer
    would report an OSError as failing to write the file."""
    try:
        return response.read(CHUNK)
    except (OSError, http.client.HTTPException) as e:  # reset, timeout, incomplete chunked body
        raise TransferError(f"connection failed mid-transfer ({e!r})") from e
