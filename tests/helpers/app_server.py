"""A `repsr app` server in a thread of the test process, on a free port, and small requests to it."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from repsr.apps.app.server import App, AppServer


@contextmanager
def running_app(root: Path, **options: Any) -> Iterator[tuple[str, App]]:
    """(base URL, app) of a server allowed to use `root` only, writing to `root / "out"` by default.
    Uploads go under `root / "work"`, so a test sees every file the server writes."""
    work = root / "work"
    work.mkdir(exist_ok=True)
    options.setdefault("output", root / "out")
    options.setdefault("precision", "fp32")
    server_options = {key: options.pop(key) for key in ("request_timeout",) if key in options}
    app = App(allow=[root], work_dir=work, **options)
    server = AppServer(("127.0.0.1", 0), app, **server_options)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server.url.rstrip("/"), app
    finally:
        server.shutdown()
        server.server_close()
        app.close()
        thread.join(5)


def request(
    url: str, body: Any = None, *, data: bytes | None = None, headers: dict | None = None, guard: bool = True
) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of a GET (no body) or POST (`body` as JSON, or raw `data`)."""
    all_headers = {"X-Repsr": "1"} if guard else {}
    all_headers.update(headers or {})
    if body is not None:
        data = json.dumps(body).encode()
        all_headers["Content-Type"] = "application/json"
    req = urllib.request.Request(
        url, data=data, headers=all_headers, method="POST" if data is not None else "GET"
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def request_json(url: str, body: Any = None, **kwargs: Any) -> tuple[int, Any]:
    status, _, raw = request(url, body, **kwargs)
    return status, json.loads(raw)


def upload(base: str, path: Path, name: str | None = None) -> tuple[int, Any]:
    """Upload a file as the page does: the raw body, the name in X-File-Name."""
    from urllib.parse import quote

    return request_json(
        f"{base}/api/upload", data=path.read_bytes(), headers={"X-File-Name": quote(name or path.name)}
    )


def wait_job(base: str, job_id: str, timeout: float = 120.0) -> dict:
    """Poll the job until it leaves the queue; returns its JSON."""
    import time

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        _, jobs = request_json(f"{base}/api/jobs")
        job = next(j for j in jobs if j["id"] == job_id)
        if job["status"] not in ("queued", "running"):
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish in {timeout} s")


def raw_exchange(base: str, data: bytes, timeout: float = 10.0) -> bytes:
    """Send `data` as is on a new connection and read until the server closes it (or `timeout`)."""
    import socket
    from urllib.parse import urlparse

    address = urlparse(base)
    with socket.create_connection((address.hostname, address.port), timeout=timeout) as connection:
        connection.sendall(data)
        received = b""
        try:
            while chunk := connection.recv(1 << 16):
                received += chunk
        except TimeoutError:
            pass
    return received
