"""The HTTP server of `repsr app`: Python's `http.server` (nothing to install), one page and a JSON API.

Uploads are raw request bodies with the file name in the `X-File-Name` header (no multipart parsing);
the page polls `/api/jobs` for progress. Every request that changes something must carry the header
`X-Repsr: 1` (a page of another site cannot add it without a CORS preflight, which this server never
grants), and on a loopback address the `Host` header must name this server (no DNS rebinding). A
problem a user can fix (`RepsrError`) is a 400 with `{"error": "..."}`; anything else is a 500 with the
same shape; the server stays up either way.

Routes:
    GET  /                          the page; /static/NAME its scripts and styles
    GET  /api/state                 models, picks, limits, defaults
    POST /api/upload                raw body, X-File-Name: the file name (URL-encoded)
    POST /api/folder                {"path"}: list a folder's images and videos
    POST /api/model-file            {"path"}: check a model file loads
    POST /api/remove                {"id"}: drop an upload or folder from the page
    GET  /api/thumb/ID              a small PNG of a picture (a video's first frame)
    GET  /api/preview?...           a PNG of the preview crop (source, model, denoise, cx, cy, size, scale)
    POST /api/jobs                  {sources, folders, output, model, denoise, format, overwrite}
    GET  /api/jobs                  every job, newest last
    POST /api/jobs/ID/cancel
    GET  /api/jobs/ID/files/N       one written file; /api/jobs/ID/zip: all of them as a zip
"""

from __future__ import annotations

import ipaddress
import json
import mimetypes
import os
import select
import shutil
import socket
import sys
import threading
import traceback
import zipfile
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

from repsr.apps.app.choices import KINDS, PICKS, SCALES, has_denoise, model_choices
from repsr.apps.app.jobs import JobQueue, JobRequest
from repsr.apps.app.library import UPLOAD_SUFFIXES, Folders, Library, PathError, UploadError, thumbnail_png
from repsr.apps.app.preview import BICUBIC, DEFAULT_CROP, PreviewAbandoned, Previewer
from repsr.inference.denoise import wants_auto
from repsr.inference.files import OUTPUT_FORMATS
from repsr.models.blend import check_strength
from repsr.models.pretrained import DEFAULT_MODEL, PRETRAINED
from repsr.util.errors import ConfigError, RepsrError, first_line

STATIC = Path(__file__).resolve().parent / "static"
LOOPBACK = ("127.0.0.1", "localhost", "::1")
CSP = (
    "default-src 'self'; img-src 'self' blob: data:; object-src 'none'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
DRAIN_LIMIT = 64 << 20  # an over-cap upload's body is read and dropped up to this much, so the page
# gets the message instead of a reset connection; beyond it the connection is closed


class App:
    """Everything a request may touch: the library of pictures, the previewer and the job queue."""

    def __init__(
        self,
        *,
        allow: list[str | Path],
        output: str | Path,
        max_upload_mb: float = 512,
        precision: str = "auto",
        backend: str = "auto",
        device: str = "cpu",
        work_dir: str | Path | None = None,
    ) -> None:
        self.folders = Folders(allow)
        self.library = Library(self.folders, int(max_upload_mb * 2**20), work_dir)
        self.default_output = Path(output).expanduser().resolve()
        self.previewer = Previewer(precision=precision, backend=backend, device=device)
        self.queue = JobQueue({"device": device, "precision": precision, "tile": "auto", "backend": backend})
        # the default model made ready in the background: the first preview does not wait for the
        # loading and, with precision auto, the timing of the candidates (a second or more)
        self._warming = threading.Thread(target=self._warm_up, name="repsr-app-warm-up", daemon=True)
        self._warming.start()

    def _warm_up(self) -> None:
        try:
            self.previewer.upscaler(DEFAULT_MODEL, None)
        except Exception:  # the first real preview reports any problem
            pass

    def close(self) -> None:
        """Cancel the jobs, wait for the warm-up (torch's threads must not die mid-call at exit), and
        remove the uploads."""
        self.queue.close()
        self._warming.join(60)
        self.library.close()

    # ------------------------------------------------------------------------------------ actions

    def state(self) -> dict[str, Any]:
        return {
            "models": [vars(choice) for choice in model_choices()],
            "kinds": list(KINDS),
            "scales": list(SCALES),
            "picks": {kind: {str(s): PICKS[kind][s] for s in SCALES} for kind in KINDS},
            "default_model": DEFAULT_MODEL,
            "formats": list(OUTPUT_FORMATS),
            "max_upload_bytes": self.library.max_upload_bytes,
            "suffixes": UPLOAD_SUFFIXES,
            "allowed": [str(root) for root in self.folders.roots],
            "output": str(self.default_output),
            "crop": DEFAULT_CROP,
        }

    def model_reference(self, text: str) -> str:
        """A shipped model's name as it is, or a model file path checked against the allowed folders."""
        text = str(text or "").strip()
        if not text:
            raise ConfigError("model: choose a model")
        if text.lower() in PRETRAINED:
            return text.lower()
        if "/" not in text and not text.startswith("~"):  # a name, not a path: say it is not a model
            raise ConfigError(
                f"{text}: no such model; choose one of the page's models, or give a model file's full path"
            )
        return str(self.folders.model_file(text))

    def model_file(self, body: dict) -> dict[str, Any]:
        from repsr.models.loader import load_model

        path = self.model_reference(body.get("path", ""))
        model = load_model(path)  # ModelFileError names the file and the problem
        scale = int(getattr(getattr(model, "spec", None), "scale", 0) or 0)
        return {"name": path, "scale": scale, "denoise": has_denoise(path)}

    def denoise(self, model: str, value: Any) -> float | None:
        """None for `auto` (the model's own default), else the strength, checked (only where it applies)."""
        if value in (None, "", "auto"):
            return None
        if isinstance(value, bool):  # float(True) is 1.0: a slip of the page, not a strength
            raise ConfigError(f"--denoise: the strength must be a number between 0 and 1, got {value!r}")
        if not has_denoise(model):
            raise ConfigError(f"--denoise: {model} has no detail partner; use auto")
        try:
            return check_strength(float(value))
        except (TypeError, ValueError):
            raise ConfigError(
                f"--denoise: the strength must be a number between 0 and 1, got {value!r}"
            ) from None

    def preview(
        self, query: dict[str, str], wanted: Callable[[], bool] | None = None
    ) -> tuple[bytes, dict[str, str]]:
        source = query.get("source", "")
        model = query.get("model", "")
        model = BICUBIC if model == BICUBIC else self.model_reference(model)
        denoise = None if model == BICUBIC else self.denoise(model, query.get("denoise"))
        try:
            cx, cy = float(query.get("cx", 0.5)), float(query.get("cy", 0.5))
            size = int(query.get("size", DEFAULT_CROP))
            scale = int(query["scale"]) if query.get("scale") else None
        except ValueError:
            raise ConfigError("preview: cx, cy, size and scale must be numbers") from None
        pixels = self.library.pixels(source)
        choice = None
        if model != BICUBIC and wants_auto(model, denoise):  # the strength a batch run would pick
            choice = self.library.denoise_choice(source)
            denoise = choice.strength
        result = self.previewer.preview(
            pixels, model, denoise, cx=cx, cy=cy, size=size, scale=scale, wanted=wanted
        )
        headers = {
            "X-Repsr-Box": ",".join(map(str, result.box)),
            "X-Repsr-Size": f"{pixels.array.shape[1]},{pixels.array.shape[0]}",
            "X-Repsr-Scale": str(result.scale),
            "X-Repsr-Millis": f"{result.seconds * 1000:.0f}",
            "X-Repsr-Precision": result.precision,
        }
        if choice is not None:
            headers["X-Repsr-Denoise"] = choice.describe()
        return result.png, headers

    def submit(self, body: dict) -> dict[str, Any]:
        sources = [self.library.source(sid) for sid in dict.fromkeys(_ids(body, "sources"))]
        inputs = [source.path for source in sources]
        listed: list[str] = []  # what each folder's files are named in the output
        for fid in _ids(body, "folders"):
            entry = self.library.folder_entries.get(fid)
            if entry is None:
                raise PathError(f"{fid}: no such folder on this page")
            inputs.append(entry.path)
            listed += [self.library.sources[sid].name for sid in entry.sources if sid in self.library.sources]
        uploads = [source.name for source in sources if source.folder is None]
        named = uploads + listed
        twice = next((name for name in uploads if named.count(name) > 1), None)
        if twice is not None:  # said here by name: the run's refusal names the private uploads folder
            raise ConfigError(
                f"{twice}: {named.count(twice)} of the files have this name and would be written to the same "
                "file; remove the upload, or run them one at a time into different output folders"
            )
        if not inputs:
            raise ConfigError("add at least one image or video first")
        output = self.folders.output_folder(body.get("output") or str(self.default_output))
        model = self.model_reference(body.get("model") or DEFAULT_MODEL)
        fmt = body.get("format")
        if fmt in (None, ""):
            fmt = None
        elif not isinstance(fmt, str) or fmt not in OUTPUT_FORMATS:
            raise ConfigError(f"format must be one of {', '.join(OUTPUT_FORMATS)}, got {fmt!r}")
        overwrite = body.get("overwrite", False)
        if not isinstance(overwrite, bool):  # "false" must not mean yes: it replaces files
            raise ConfigError(f"overwrite must be true or false, got {overwrite!r}")
        request = JobRequest(
            inputs=inputs,
            output=output,
            model=model,
            denoise=self.denoise(model, body.get("denoise")),
            fmt=fmt,
            overwrite=overwrite,
        )
        return self.queue.submit(request).to_json()


def _ip(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        return None


def host_allowed(host: str, bound: str, names: frozenset[str] = frozenset()) -> bool:
    """Whether a request's `Host` header may reach a server listening on `bound` (no DNS rebinding).

    A page whose own name an attacker re-points at this machine is same-origin with the server, so it
    can add `X-Repsr` too: only the Host header tells it apart. On a loopback address (any of 127/8,
    ::1) the Host must be localhost or a loopback address; elsewhere (--host 0.0.0.0, a LAN address) an
    address, localhost, or one of this machine's own `names`, never another name."""
    host = host.strip().lower()
    if host.startswith("["):
        name = host[1 : host.index("]")] if "]" in host else host
    else:
        name = host.rsplit(":", 1)[0] if ":" in host else host
    address = _ip(name)
    if name in LOOPBACK or (address is not None and address.is_loopback):
        return True
    bound_address = _ip(bound)
    if bound in LOOPBACK or (bound_address is not None and bound_address.is_loopback):
        return False
    return address is not None or name in names


def _own_names() -> frozenset[str]:
    """This machine's names, as a browser on the network may reach it (host, host.local, FQDN)."""
    host = socket.gethostname().lower()
    return frozenset(name for name in (host, f"{host}.local", socket.getfqdn().lower()) if name)


def _ids(body: dict, key: str) -> list[str]:
    """`body[key]` as a list of ids (strings); `ConfigError` naming the field otherwise."""
    ids = body.get(key) or []
    if not isinstance(ids, list) or not all(isinstance(item, str) for item in ids):
        raise ConfigError(f"{key} must be a list of ids, got {json.dumps(ids)[:80]}")
    return ids


class Handler(BaseHTTPRequestHandler):
    """Routes one request to the `App`; every error is an answer, never a crash."""

    server: AppServer
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        # a client that stops sending (a Content-Length larger than what it sends, a connection left
        # open mid-request) is dropped after this many idle seconds, not waited on by its thread forever
        self.timeout = self.server.request_timeout
        super().setup()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class's name)
        if self.server.verbose:
            super().log_message(format, *args)

    # --------------------------------------------------------------------------------- answering

    def _send(
        self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        # no other site may frame the page (a click on "Run" under a decoy), and the page loads nothing
        # from anywhere else (every script and style is served here; pictures are blob: and data: URLs)
        self.send_header("X-Frame-Options", "DENY")
        self.send_header("Content-Security-Policy", CSP)
        if self.close_connection:  # said, so that the client opens a new connection for its next request
            self.send_header("Connection", "close")
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own refusals (a malformed request line, a method it lacks, headers too long) as
        the same one-line JSON as every other error, not an HTML page; the connection is closed."""
        self.close_connection = True
        text = message or self.responses.get(code, ("error",))[0]
        self.log_error("code %d, message %s", code, text)
        body = json.dumps({"error": text}).encode()
        self.send_response(code, message)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        if getattr(self, "command", None) != "HEAD" and code >= 200 and code not in (204, 304):
            self.wfile.write(body)

    def _json(self, data: Any, status: int = 200) -> None:
        self._send(status, json.dumps(data).encode(), "application/json")

    def _error(self, status: int, message: str) -> None:
        self._json({"error": message}, status)

    def _content_length(self) -> int | None:
        """The body's length from `Content-Length` (None when there is none); a body this server cannot
        delimit (chunked, or a length that is not a number) is refused and the connection closed, so that
        its bytes never become the next request."""
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            raise ConfigError("chunked request bodies are not supported: send a Content-Length")
        text = self.headers.get("Content-Length")
        if text is None:
            return None
        text = text.strip()
        if not (text.isascii() and text.isdigit()):
            self.close_connection = True
            raise ConfigError(f"Content-Length {text!r} is not a length in bytes")
        return int(text)

    def _body_json(self) -> dict:
        length = self._content_length() or 0
        if length > 1 << 20:
            self.close_connection = True
            raise ConfigError("request too large")
        raw = self.rfile.read(length) if length else b"{}"
        try:
            data = json.loads(raw or b"{}")
        except ValueError:  # JSONDecodeError, or bytes that are not UTF-8
            raise ConfigError("the request is not JSON") from None
        if not isinstance(data, dict):
            raise ConfigError("the request must be a JSON object")
        return data

    def _host_ok(self) -> bool:
        return host_allowed(self.headers.get("Host") or "", self.server.server_address[0], self.server.names)

    def _guarded(self, route: Any) -> None:
        try:
            if not self._host_ok():
                self._error(HTTPStatus.FORBIDDEN, "this server answers only to localhost or its own address")
                return
            route()
        except RepsrError as error:  # UploadError, PathError, a model or image problem: one line
            if self.command == "POST":
                self.close_connection = True  # the body may be partly unread
            try:
                self._error(HTTPStatus.BAD_REQUEST, str(error))
            except OSError:  # the client is gone (an upload cut short): nothing to tell, no traceback
                self.close_connection = True
        except (BrokenPipeError, ConnectionResetError, TimeoutError):  # the client left, or stalled
            self.close_connection = True
        except Exception as error:  # a bug: said on the page and on stderr, the server goes on
            traceback.print_exc(file=sys.stderr)
            try:
                self._error(HTTPStatus.INTERNAL_SERVER_ERROR, f"internal error: {first_line(error)}")
            except OSError:
                self.close_connection = True

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self._guarded(self._get)

    def do_HEAD(self) -> None:  # noqa: N802
        self._guarded(self._get)

    def do_POST(self) -> None:  # noqa: N802
        self._guarded(self._post)

    # ----------------------------------------------------------------------------------- routes

    def _get(self) -> None:
        url = urlparse(self.path)
        parts = [unquote(p) for p in url.path.strip("/").split("/") if p]
        app = self.server.app
        if not parts or parts == ["index.html"]:
            self._static("index.html")
        elif parts[0] == "static" and len(parts) == 2:
            self._static(parts[1])
        elif parts == ["api", "state"]:
            self._json(app.state())
        elif parts == ["api", "jobs"]:
            # a copy: a job submitted meanwhile must not change the dict while it is listed
            self._json([job.to_json() for job in list(app.queue.jobs.values())])
        elif len(parts) == 3 and parts[:2] == ["api", "thumb"]:
            self._send(200, thumbnail_png(app.library.pixels(parts[2])), "image/png")
        elif parts == ["api", "preview"]:
            query = {key: values[-1] for key, values in parse_qs(url.query).items()}
            try:
                png, headers = app.preview(query, wanted=lambda: not self._client_gone())
            except PreviewAbandoned:  # the page aborted it while it waited: no one to answer
                self.close_connection = True
                return
            self._send(200, png, "image/png", headers)
        elif len(parts) == 5 and parts[:2] == ["api", "jobs"] and parts[3] == "files":
            self._download(parts[2], parts[4])
        elif len(parts) == 4 and parts[:2] == ["api", "jobs"] and parts[3] == "zip":
            self._zip(parts[2])
        else:
            self._error(HTTPStatus.NOT_FOUND, f"{url.path}: not found")

    def _post(self) -> None:
        if self.headers.get("X-Repsr") != "1":
            self._drain()
            self._error(HTTPStatus.FORBIDDEN, "missing X-Repsr header (requests come from the app's page)")
            return
        parts = [p for p in urlparse(self.path).path.strip("/").split("/") if p]
        app = self.server.app
        if parts == ["api", "upload"]:
            self._upload()
            return
        body = self._body_json()  # read in full before answering: the connection is kept alive
        if parts == ["api", "folder"]:
            entry, sources = app.library.add_folder(body.get("path", ""))
            folder = {"id": entry.id, "path": str(entry.path)}
            self._json({"folder": folder, "sources": [s.to_json() for s in sources]})
        elif parts == ["api", "model-file"]:
            self._json(app.model_file(body))
        elif parts == ["api", "remove"]:
            app.library.remove(str(body.get("id", "")))
            self._json({"ok": True})
        elif parts == ["api", "jobs"]:
            self._json(app.submit(body))
        elif len(parts) == 4 and parts[:2] == ["api", "jobs"] and parts[3] == "cancel":
            self._json(app.queue.cancel(parts[2]).to_json())
        else:
            self._error(HTTPStatus.NOT_FOUND, f"{self.path}: not found")

    def _client_gone(self) -> bool:
        """Whether the client has closed this connection (a fetch the page aborted): a peek that finds
        the end of the stream. A waiting next request, or nothing yet, means it is still there."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:  # reset by the client
            return True

    def _drain(self) -> None:
        """Read and drop a request body we will not use (so the client sees our answer)."""
        try:
            length = self._content_length() or 0
        except ConfigError:  # not delimited: the connection is closed instead
            return
        if length > DRAIN_LIMIT:
            self.close_connection = True
            return
        while length > 0:
            chunk = self.rfile.read(min(length, 1 << 20))
            if not chunk:
                break
            length -= len(chunk)

    def _upload(self) -> None:
        library = self.server.app.library
        name = unquote(self.headers.get("X-File-Name") or "")
        length = self._content_length()
        try:
            library.check_upload(name, length)
        except UploadError as error:
            self._drain()
            self._error(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE if "upload limit" in str(error) else 400, str(error)
            )
            return
        source = library.add_upload(name, self.rfile, length)
        self._json(source.to_json())

    def _static(self, name: str) -> None:
        path = (STATIC / name).resolve() if "\0" not in name else None  # NUL: ValueError in resolve
        if path is None or path.parent != STATIC or not path.is_file():
            self._error(HTTPStatus.NOT_FOUND, f"{name}: not found")
            return
        kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        if kind.startswith("text/") or kind == "application/javascript":
            kind += "; charset=utf-8"
        self._send(200, path.read_bytes(), kind)

    def _download(self, job_id: str, index: str) -> None:
        job = self.server.app.queue.get(job_id)
        number = int(index) if index.isascii() and index.isdigit() else -1  # "²".isdigit() is True
        if not 0 <= number < len(job.files) or job.files[number].status != "written":
            raise ConfigError(f"{job_id}/{index}: no such written file")
        target = job.files[number].target
        try:
            handle = open(target, "rb")  # noqa: SIM115 (closed below; streamed: a video may be large)
        except OSError as error:
            raise ConfigError(f"{target.name}: cannot be read any more ({error.strerror})") from None
        with handle:
            size = os.fstat(handle.fileno()).st_size
            self.send_response(200)
            self.send_header(
                "Content-Type", mimetypes.guess_type(target.name)[0] or "application/octet-stream"
            )
            self.send_header("Content-Length", str(size))
            self.send_header("Content-Disposition", _attachment(target.name))
            self.end_headers()
            if self.command != "HEAD":
                shutil.copyfileobj(handle, self.wfile, 1 << 20)

    def _zip(self, job_id: str) -> None:
        """Every written file of a job in one zip, streamed (stored: images and videos are compressed)."""
        job = self.server.app.queue.get(job_id)
        written = job.written()
        if not written:
            raise ConfigError(f"{job_id}: this job wrote no files")
        gone = [state.target.name for state in written if not state.target.is_file()]
        if gone:  # said before the answer starts: a missing file midway would cut the zip short
            raise ConfigError(
                f"{', '.join(gone)}: removed since the job wrote it; download the others one by one"
            )
        self.send_response(200)
        self.send_header("Content-Type", "application/zip")
        self.send_header("Content-Disposition", _attachment(f"repsr-{job_id}.zip"))
        self.send_header(
            "Connection", "close"
        )  # no length known in advance: the end of the body is the close
        self.end_headers()
        self.close_connection = True
        if self.command == "HEAD":  # the headers only (the zip was written out for HEAD too)
            return
        with zipfile.ZipFile(_Unseekable(self.wfile), "w", zipfile.ZIP_STORED) as archive:
            for state in written:
                try:
                    name = str(state.target.relative_to(job.request.output))
                except ValueError:
                    name = state.target.name
                archive.write(state.target, name)


class _Unseekable:
    """A write-only stream for `zipfile` (which then writes data descriptors instead of seeking)."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream

    def write(self, data: bytes) -> int:
        self.stream.write(data)
        return len(data)

    def flush(self) -> None:
        self.stream.flush()


def _attachment(name: str) -> str:
    from urllib.parse import quote

    return f"attachment; filename*=UTF-8''{quote(name)}"


class AppServer(ThreadingHTTPServer):
    """A threading HTTP server holding the `App`; request threads are daemons (Ctrl-C never waits)."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self, address: tuple[str, int], app: App, *, verbose: bool = False, request_timeout: float = 60.0
    ) -> None:
        self.request_timeout = request_timeout
        host = address[0]
        if ":" in host:
            self.address_family = socket.AF_INET6
        super().__init__(address, Handler)
        self.app = app
        self.verbose = verbose
        self.loopback = host in LOOPBACK  # else serve() warns: reachable by others
        self.names = _own_names() if not self.loopback else frozenset()

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        shown = f"[{host}]" if ":" in str(host) else host
        return f"http://{shown}:{port}/"


def serve(app: App, host: str, port: int, *, open_browser: bool = True, verbose: bool = False) -> int:
    """Serve `app` until Ctrl-C (or SIGTERM): prints the URL, opens the browser, stops cleanly."""
    import signal
    import webbrowser

    try:
        server = AppServer((host, port), app, verbose=verbose)
    except OSError as error:  # a port in use, an address not on this machine
        app.close()
        raise ConfigError(
            f"--host {host} --port {port}: cannot listen there ({error.strerror or error})"
        ) from None
    print(f"repsr app: {server.url}  (Ctrl-C stops it)", flush=True)
    if not server.loopback:
        print(
            f"repsr app: warning: listening on {host}: anyone who can reach this machine can use the page, "
            f"read pictures under {', '.join(map(str, app.folders.roots))} and write results there",
            file=sys.stderr,
            flush=True,
        )
    try:
        app.folders.output_folder(str(app.default_output))
    except PathError as problem:  # every run to the folder the page proposes would be refused
        print(f"repsr app: warning: the proposed output folder: {problem}", file=sys.stderr, flush=True)
    if open_browser:
        if sys.platform.startswith("linux") and not (
            os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
        ):
            # without a display, webbrowser would start a text browser (lynx, w3m) in this terminal
            print("repsr app: no display here: open the URL in a browser yourself", flush=True)
        else:
            threading.Thread(target=webbrowser.open, args=(server.url,), daemon=True).start()

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = (
        signal.signal(signal.SIGTERM, stop) if threading.current_thread() is threading.main_thread() else None
    )
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        print("repsr app: stopping (the running file is cancelled, nothing half-written is kept)", flush=True)
    finally:
        server.server_close()
        app.close()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    print("repsr app: stopped", flush=True)
    return 0
