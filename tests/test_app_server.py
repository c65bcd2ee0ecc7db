"""`repsr app` without a browser: the JSON API, uploads, folder checks, previews, the job queue, the CLI."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from repsr.apps.app.choices import pick_model
from repsr.apps.app.jobs import Job
from repsr.apps.app.library import Folders, PathError
from repsr.apps.app.preview import bicubic_pixels, crop_box
from repsr.image.io import read_pixels
from repsr.inference.denoise import choose_for
from repsr.models.files import save_model
from repsr.models.pretrained import DEFAULT_MODEL, DEFAULT_VIDEO_MODEL, PRETRAINED, shipped
from repsr.util.errors import ConfigError
from tests.helpers import tiny_plain
from tests.helpers.app_server import raw_exchange, request, request_json, running_app, upload, wait_job

GENERAL_X2 = "repsr-general-m4c16-x2"  # the smallest shipped model with a denoise partner


def photo(path: Path, size: tuple[int, int] = (96, 80)) -> Path:
    """A crop of scikit-image's cat, as PNG or JPEG by the suffix."""
    from skimage import data

    width, height = size
    Image.fromarray(data.chelsea()[60 : 60 + height, 120 : 120 + width]).save(path, quality=85)
    return path


def tree(root: Path) -> dict[str, bytes]:
    """Every file under `root` (relative name -> bytes), the app's upload folder left out."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.relative_to(root).parts[0] != "work"
    }


def cli_upscale(inputs: list[Path], out: Path, *options: str, status: int = 0) -> None:
    """`repsr upscale INPUTS -o OUT --precision fp32 OPTIONS`, in this process."""
    from repsr.cli import main

    argv = ["upscale", *map(str, inputs), "-o", str(out), "--precision", "fp32", "--no-progress", *options]
    assert main(argv) == status


# ------------------------------------------------------------------------------------------- pieces


def test_kind_and_scale_pick_the_readme_models():
    assert pick_model("photo", 4) == "repsr-general-m4c16-x4" == DEFAULT_MODEL  # the CLI's default
    assert pick_model("photo", 2) == "repsr-general-m10c32-x2"
    assert pick_model("video", 4) == "repsr-general-m4c16-x4" == DEFAULT_VIDEO_MODEL  # fast enough for video
    assert pick_model("video", 2) == "repsr-general-m4c16-x2"
    assert pick_model("clean", 3) == "repsr-m4c16-x3"
    assert pick_model("clean", 4) == "repsr-m10c32-x4"
    assert all(pick_model(k, s) in PRETRAINED for k in ("photo", "clean", "video") for s in (2, 3, 4))
    with pytest.raises(ConfigError, match="kind"):
        pick_model("cartoon", 4)
    with pytest.raises(ConfigError, match="scale"):
        pick_model("photo", 8)


def test_folders_refuse_paths_outside_the_allowed_ones(tmp_path):
    inside = tmp_path / "allowed"
    (inside / "pics").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    (inside / "link").symlink_to(tmp_path / "elsewhere")
    (inside / "file.png").write_bytes(b"x")
    folders = Folders([inside])
    assert folders.input_folder(str(inside / "pics")) == (inside / "pics").resolve()
    for path, message in [
        (tmp_path / "elsewhere", "outside the folders"),
        (inside / "link", "outside the folders"),  # a link out of the allowed folder is followed
        (inside / "pics" / ".." / ".." / "elsewhere", "outside the folders"),
        (inside / "missing", "no such folder"),
        (inside / "file.png", "is a file"),
        ("pics", "absolute path"),
        ("", "give a folder path"),
    ]:
        with pytest.raises(PathError, match=message):
            folders.input_folder(str(path))
    assert folders.output_folder(str(inside / "new")) == (inside / "new").resolve()
    with pytest.raises(PathError, match="does not exist"):
        folders.output_folder(str(inside / "no" / "such" / "parent"))
    with pytest.raises(PathError, match="outside the folders"):
        folders.output_folder("/tmp")


def test_paths_and_upload_names_the_os_cannot_take_are_one_line_refusals(tmp_path):
    """A NUL or an over-long name in a typed path or an upload's name is a 400 naming the problem (it
    was a 500 from ValueError / OSError ENAMETOOLONG, with the uploads folder's path in the message)."""
    cat = photo(tmp_path / "cat.png")
    long = str(tmp_path / ("y" * 300))
    with running_app(tmp_path) as (base, app):
        for route, body, message in [
            ("folder", {"path": str(tmp_path / "a\0b")}, "cannot contain a NUL"),
            ("folder", {"path": long}, "not a usable path (File name too long)"),
            ("model-file", {"path": long + "/m.pth"}, "not a usable path (File name too long)"),
            ("jobs", {"sources": ["x"], "output": str(tmp_path / "a\0b")}, "no such file on this page"),
        ]:
            status, answer = request_json(f"{base}/api/{route}", body)
            assert status == 400 and message in answer["error"], (route, answer)
        sid = upload(base, cat)[1]["id"]
        for output, message in [(str(tmp_path / "a\0b"), "cannot contain a NUL"), (long, "too long")]:
            status, answer = request_json(f"{base}/api/jobs", {"sources": [sid], "output": output})
            assert status == 400 and message in answer["error"], answer
        for name, message in [
            ("a\0b.png", "cannot contain control characters"),
            ("two\nlines.png", "cannot contain control characters"),
            ("a" * 300 + ".png", "the file name is longer than 255 bytes"),
        ]:
            status, answer = upload(base, cat, name=name)
            assert status == 400 and message in answer["error"], answer
            assert str(app.library.work_dir) not in answer["error"]
        assert [p.name for p in app.library.work_dir.iterdir()] == [sid]  # nothing of the refused ones
        status, answer = upload(base, cat, name="../../ünï 😀.png")  # a path is cut to its name
        assert status == 200 and answer["name"] == "ünï 😀.png"
        assert (app.library.work_dir / answer["id"] / "ünï 😀.png").is_file()


def test_crop_box_stays_inside_the_picture():
    assert crop_box(100, 80, 0.5, 0.5, 64) == (18, 8, 82, 72)
    assert crop_box(100, 80, 0.0, 1.0, 64) == (0, 16, 64, 80)
    assert crop_box(40, 30, 0.5, 0.5, 64) == (0, 0, 40, 30)  # a small picture is previewed whole
    with pytest.raises(ConfigError, match="crop size"):
        crop_box(100, 80, 0.5, 0.5, 4000)
    assert crop_box(100, 80, float("inf"), float("-inf"), 64) == (36, 0, 100, 64)  # clamped to the edges
    for cx, cy in [(float("nan"), 0.5), (0.5, float("nan"))]:  # was ValueError in round(): a 500
        with pytest.raises(ConfigError, match="crop centre must be fractions"):
            crop_box(100, 80, cx, cy, 64)


# ----------------------------------------------------------------------------------------- the API


def test_state_lists_every_shipped_model_and_the_limits(tmp_path):
    with running_app(tmp_path, max_upload_mb=2) as (base, _):
        status, state = request_json(f"{base}/api/state")
    assert status == 200
    assert [m["name"] for m in state["models"]] == [entry.name for entry in shipped()]
    assert state["picks"]["photo"]["4"] == state["default_model"] == "repsr-general-m4c16-x4"
    assert state["max_upload_bytes"] == 2 * 2**20 and state["allowed"] == [str(tmp_path.resolve())]
    assert {".png", ".jpg", ".tiff", ".mp4", ".mkv"} <= set(state["suffixes"])  # the page checks names first
    general = next(m for m in state["models"] if m["name"] == GENERAL_X2)
    assert general["denoise"] and general["denoise_default"] == 1.0


def test_changes_need_the_page_header_and_a_local_host(tmp_path):
    with running_app(tmp_path) as (base, _):
        status, answer = request_json(f"{base}/api/folder", {"path": str(tmp_path)}, guard=False)
        assert status == 403 and "X-Repsr" in answer["error"]
        status, _, _ = request(f"{base}/api/state", headers={"Host": "evil.example:80"})
        assert status == 403  # DNS rebinding: a page of another name never reaches the API
        status, headers, page = request(f"{base}/")
        assert status == 200 and b'<script src="/static/app.js">' in page
        assert headers["X-Frame-Options"] == "DENY"  # no other site frames the page under a decoy
        assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
        assert "default-src 'self'" in headers["Content-Security-Policy"]
        assert b"http://" not in page and b"https://" not in page  # no CDN: everything is served here
        for name in ("app.js", "app.css"):
            status, _, body = request(f"{base}/static/{name}")
            assert status == 200 and b"https://" not in body and b"http://" not in body
        assert request(f"{base}/static/..%2Fserver.py")[0] == 404


def test_the_host_header_is_checked_on_every_address_the_server_may_listen_on():
    """DNS rebinding: a page whose name an attacker points at this machine is same-origin with the
    server (X-Repsr does not stop it); only Host tells it apart. Bound to 127.0.0.2 or 0.0.0.0, the
    server let every Host through; now a loopback bind takes loopback names only, and any other bind
    an address or this machine's own name."""
    from repsr.apps.app.server import host_allowed

    own = frozenset({"studio", "studio.local"})
    for bound in ("127.0.0.1", "127.0.0.2", "localhost", "::1"):
        for host in ("127.0.0.1:8000", "localhost:8000", "LOCALHOST", "[::1]:8000", "127.0.0.2:9"):
            assert host_allowed(host, bound, own), (host, bound)
        for host in ("evil.example:8000", "studio:8000", "192.168.1.5:8000", "", "127.0.0.1.nip.io"):
            assert not host_allowed(host, bound, own), (host, bound)
    for bound in ("0.0.0.0", "192.168.1.5", "::"):
        for host in ("192.168.1.5:8000", "[fe80::1]:8000", "localhost:8000", "studio:8000", "studio.local"):
            assert host_allowed(host, bound, own), (host, bound)
        for host in ("evil.example:8000", "studio.evil.example", "", "192.168.1.5.nip.io:80"):
            assert not host_allowed(host, bound, own), (host, bound)


def test_a_kept_alive_connection_survives_every_kind_of_post(tmp_path):
    """Each POST body is read in full before the answer, so the next request on the connection parses
    (the page's fetches reuse connections: an unread body became the next request line once)."""
    import http.client
    from urllib.parse import urlparse

    with running_app(tmp_path) as (base, _):
        connection = http.client.HTTPConnection(urlparse(base).netloc, timeout=30)
        for path in ("/api/remove", "/api/jobs/nope/cancel", "/api/folder"):
            connection.request("POST", path, body=b'{"id": "x", "path": ""}', headers={"X-Repsr": "1"})
            answer = connection.getresponse()
            answer.read()
            if answer.will_close:  # an error answer closes the connection: open the next one
                connection.close()
                connection = http.client.HTTPConnection(urlparse(base).netloc, timeout=30)
            connection.request("GET", "/api/jobs")
            follow = connection.getresponse()
            assert follow.status == 200 and follow.read() == b"[]", path
        connection.close()


def test_bodies_the_server_cannot_delimit_are_refused_and_never_become_the_next_request(tmp_path):
    """A chunked body, or a Content-Length that is not a number (or negative), is a 400 naming the
    problem and closes the connection: its bytes are never parsed as a request (a chunked body once
    answered 200 and then a second, HTML error page on the same connection)."""
    follow = b"GET /api/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    head = b"Host: 127.0.0.1\r\nX-Repsr: 1\r\nX-File-Name: a.png\r\n"
    with running_app(tmp_path) as (base, _):
        for path in (b"/api/upload", b"/api/remove"):
            for header, body, message in [
                (b"Transfer-Encoding: chunked", b'c\r\n{"id": "xx"}\r\n0\r\n\r\n', b"chunked request bodies"),
                (b"Content-Length: abc", b"{}", b"Content-Length 'abc' is not a length in bytes"),
                (b"Content-Length: -5", b"{}", b"Content-Length '-5' is not a length in bytes"),
            ]:
                answer = raw_exchange(
                    base, b"POST " + path + b" HTTP/1.1\r\n" + head + header + b"\r\n\r\n" + body + follow
                )
                assert answer.startswith(b"HTTP/1.1 400 "), (path, header, answer[:200])
                assert message in answer and b"Connection: close" in answer, (path, header, answer)
                assert answer.count(b"HTTP/1.1") == 1 and b"internal error" not in answer, (path, header)
        for line, code, message in [
            (b"PUT /api/jobs HTTP/1.1", 501, b"Unsupported method ('PUT')"),
            (b"GET / / HTTP/1.1", 400, b"Bad request syntax ('GET / / HTTP/1.1')"),
        ]:  # http.server's own refusals: the same JSON as every other error, not an HTML page
            answer = raw_exchange(base, line + b"\r\nHost: 127.0.0.1\r\n\r\n")
            assert answer.startswith(b"HTTP/1.1 %d " % code) or answer.startswith(b"HTTP/1.0 %d " % code), (
                answer
            )
            assert answer.endswith(b'{"error": "' + message + b'"}') and b"<html" not in answer, answer
        status, answer = request_json(f"{base}/api/jobs", data=b'{"sources": "\xff"}')
        assert status == 400 and answer["error"] == "the request is not JSON"  # not UTF-8: not a 500
        assert request(f"{base}/api/state")[0] == 200


def test_malformed_and_oversized_uploads_are_messages_and_the_server_stays_up(tmp_path):
    bad = tmp_path / "holiday.png"
    bad.write_bytes(b"this is not a PNG")
    big = tmp_path / "big.png"
    big.write_bytes(b"\0" * (3 * 2**20))
    with running_app(tmp_path, max_upload_mb=1) as (base, app):
        status, answer = upload(base, bad)
        assert (
            status == 400 and answer["error"] == "holiday.png: not an image, or a format Pillow cannot read"
        )
        status, answer = upload(base, big)
        assert status == 413 and "big.png: 3.0 MB is over the upload limit of 1.0 MB" in answer["error"]
        status, answer = upload(base, bad, name="notes.txt")
        assert status == 400 and "not an image or video file name" in answer["error"]
        assert not any(app.library.work_dir.iterdir())  # nothing of the refused uploads is kept
        status, answer = upload(base, photo(tmp_path / "cat.png"))  # the server goes on
        assert status == 200 and (answer["width"], answer["height"]) == (96, 80)


def png_header(path: Path, width: int, height: int) -> Path:
    """A PNG of a few dozen bytes whose header declares width x height pixels (a decompression bomb)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)
    return path


def test_an_image_bomb_is_refused_from_its_header_even_while_a_job_lifts_pillows_limit(tmp_path, monkeypatch):
    """A tiny PNG declaring 30000x30000 is refused before decoding. Pillow's own guard is the global
    Image.MAX_IMAGE_PIXELS, which `verify_image` sets to None while a job checks a result: an upload in
    that moment was decoded in full (2.7 GB). The app checks the header itself."""
    from PIL import Image as PILImage

    import repsr.apps.app.library as library

    bombs = tmp_path / "pics"
    bombs.mkdir()
    bomb = png_header(bombs / "bomb.png", 30000, 30000)
    decoded: list[Path] = []

    def read_pixels(path: Path):  # the decoder must never see the bomb
        decoded.append(Path(path))
        raise AssertionError(f"{path} was decoded")

    monkeypatch.setattr(library, "read_pixels", read_pixels)
    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", None)  # as while verify_image runs in the job thread
    with running_app(tmp_path) as (base, _):
        status, answer = upload(base, bomb)
        assert status == 400 and answer["error"].startswith(
            "bomb.png: 30000x30000 is 900 megapixels, more than"
        )
        sid = request_json(f"{base}/api/folder", {"path": str(bombs)})[1]["sources"][0]["id"]
        for url in (f"{base}/api/thumb/{sid}", f"{base}/api/preview?source={sid}&model=bicubic&scale=2"):
            status, answer = request_json(url)
            assert status == 400 and "900 megapixels" in answer["error"], url
        assert request(f"{base}/api/state")[0] == 200
    assert decoded == []


def test_a_client_that_stalls_mid_upload_is_dropped_and_its_partial_file_removed(tmp_path):
    """A Content-Length larger than what the client sends, the connection left open: the request's
    thread waited for the rest forever. Now it gives up after the request timeout."""
    cat = photo(tmp_path / "cat.png").read_bytes()
    with running_app(tmp_path, request_timeout=1.0) as (base, app):
        started = time.monotonic()
        head = "POST /api/upload HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Repsr: 1\r\nX-File-Name: cat.png\r\n"
        answer = raw_exchange(
            base, (head + "Content-Length: 100000\r\n\r\n").encode() + cat[:100], timeout=20
        )
        assert time.monotonic() - started < 10, "the server waited for the missing bytes"
        assert b"200 OK" not in answer
        assert not any(app.library.work_dir.iterdir())  # the partial upload is not kept
        assert upload(base, photo(tmp_path / "cat.png"))[0] == 200


def test_a_client_gone_before_its_error_answer_leaves_no_traceback(tmp_path, monkeypatch, capfd):
    """An upload cut short is an UploadError; when the client has gone, writing its answer raised
    BrokenPipeError out of the error handler (a traceback on stderr from socketserver)."""
    import socket
    from urllib.parse import urlparse

    from repsr.apps.app.server import Handler

    original = Handler._error

    def gone(self: Handler, status: int, message: str) -> None:
        if "ended early" in message:
            raise BrokenPipeError(32, "Broken pipe")
        original(self, status, message)

    monkeypatch.setattr(Handler, "_error", gone)
    cat = photo(tmp_path / "cat.png").read_bytes()
    with running_app(tmp_path) as (base, app):
        head = b"POST /api/upload HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Repsr: 1\r\nX-File-Name: cat.png\r\n"
        address = urlparse(base)
        with socket.create_connection((address.hostname, address.port), timeout=10) as connection:
            connection.sendall(head + b"Content-Length: 100000\r\n\r\n" + cat[:100])
            connection.shutdown(socket.SHUT_WR)  # hangs up: the server reads the end of the body
            assert connection.recv(100) == b""  # no answer, the connection closed
        assert not any(app.library.work_dir.iterdir())
        assert upload(base, tmp_path / "cat.png")[0] == 200
    assert "Traceback" not in capfd.readouterr().err


def test_preview_is_the_crop_through_the_model_and_moves_with_the_denoise_strength(tmp_path):
    source = photo(tmp_path / "cat.jpg")
    with running_app(tmp_path) as (base, _):
        sid = upload(base, source)[1]["id"]
        url = f"{base}/api/preview?source={sid}&model={GENERAL_X2}&size=64&cx=0.5&cy=0.5"
        images, said = {}, {}
        for denoise in ("0", "0.5", "1", "auto"):
            status, headers, png = request(f"{url}&denoise={denoise}")
            assert status == 200 and headers["X-Repsr-Box"] == "16,8,80,72"
            images[denoise] = np.asarray(Image.open(io.BytesIO(png)))
            assert images[denoise].shape == (128, 128, 3)
            said[denoise] = headers.get("X-Repsr-Denoise")
        assert not np.array_equal(images["0"], images["1"]) and not np.array_equal(images["0"], images["0.5"])
        assert said["0"] is None and said["1"] is None  # a strength given: nothing chosen
        # auto: the strength `--denoise auto` picks for the whole picture, as a batch run would
        expected = choose_for(read_pixels(source).array, read_pixels(source).jpeg_quality)
        assert said["auto"] == expected.describe()
        status, _, png = request(f"{url}&denoise={expected.strength:g}")
        assert np.array_equal(images["auto"], np.asarray(Image.open(io.BytesIO(png))))
        status, _, png = request(f"{base}/api/preview?source={sid}&model=bicubic&scale=2&size=64")
        crop = read_pixels(source)
        crop.array = crop.array[8:72, 16:80]
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(png))), bicubic_pixels(crop, 2))
        status, answer = request_json(f"{base}/api/preview?source={sid}&model=repsr-m4c16-x2&denoise=0.5")
        assert status == 400 and "no detail partner" in answer["error"]
        status, answer = request_json(f"{base}/api/preview?source=nope&model={GENERAL_X2}")
        assert status == 400 and "no such file" in answer["error"]
        for query, message in [
            ("cx=nan", "crop centre must be fractions"),
            ("size=99999999999999999999", "crop size must be between"),
            ("size=1e3", "must be numbers"),
            ("model=bicubic&scale=8", "scale must be 2, 3 or 4"),
        ]:
            status, answer = request_json(f"{url}&denoise=0.5&{query}")
            assert status == 400 and message in answer["error"], (query, answer)


def test_previews_the_page_aborted_while_they_waited_are_not_computed(tmp_path, monkeypatch):
    """Dragging the slider aborts each preview fetch for the next; the server still computed every one
    of them, one after another, before the one the page waits for (8 aborted: 4.4 s instead of 0.4 s
    on 2 cores). Now a preview whose client has gone by its turn is skipped."""
    import socket
    from urllib.parse import urlparse

    import repsr.apps.app.preview as preview

    computed: list[int] = []
    original = preview.upscale_pixels

    def counting(upscaler, crop):
        computed.append(crop.array.shape[0])
        return original(upscaler, crop)

    monkeypatch.setattr(preview, "upscale_pixels", counting)
    with running_app(tmp_path) as (base, app):
        sid = upload(base, photo(tmp_path / "cat.png"))[1]["id"]
        url = f"/api/preview?source={sid}&model={GENERAL_X2}&size=32"
        assert request(f"{base}{url}&denoise=1")[0] == 200 and computed == [32]  # the model is ready
        address = urlparse(base)
        with app.previewer._lock:  # a crop is running: the next ones wait their turn
            for strength in ("0.1", "0.2", "0.3", "0.4"):
                with socket.create_connection((address.hostname, address.port), timeout=10) as aborted:
                    aborted.sendall(
                        f"GET {url}&denoise={strength} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
                    )
            time.sleep(0.5)  # their threads wait for the lock
            answers: list[int] = []
            wanted = threading.Thread(target=lambda: answers.append(request(f"{base}{url}&denoise=0.5")[0]))
            wanted.start()
            time.sleep(0.3)
        wanted.join(60)
        assert answers == [200] and computed == [32, 32]  # the wanted one only
        assert request(f"{base}/api/state")[0] == 200


def test_a_run_writes_what_repsr_upscale_writes_and_downloads_it(tmp_path):
    sources = [photo(tmp_path / "cat.jpg"), photo(tmp_path / "kitten.png", (64, 48))]
    cli_upscale(sources, tmp_path / "cli", "-m", GENERAL_X2, "--denoise", "0.3")
    with running_app(tmp_path) as (base, _):
        ids = [upload(base, path)[1]["id"] for path in sources]
        status, job = request_json(
            f"{base}/api/jobs",
            {"sources": ids, "output": str(tmp_path / "out"), "model": GENERAL_X2, "denoise": "0.3"},
        )
        assert status == 200 and job["status"] in ("queued", "running")
        job = wait_job(base, job["id"])
        assert job["status"] == "done" and job["message"] == f"2 image(s) written to {tmp_path / 'out'}"
        assert [(f["target"], f["status"]) for f in job["files"]] == [
            ("cat.jpg", "written"),
            ("kitten.png", "written"),
        ]
        assert job["fraction"] == 1.0 and "precision fp32" in job["model_line"]
        for index, path in enumerate(sources):
            status, headers, body = request(f"{base}/api/jobs/{job['id']}/files/{index}")
            assert status == 200 and path.name in headers["Content-Disposition"]
            assert body == (tmp_path / "cli" / path.name).read_bytes()  # byte-equal to the CLI's file
        status, _, archive = request(f"{base}/api/jobs/{job['id']}/zip")
        with zipfile.ZipFile(io.BytesIO(archive)) as zipped:
            assert sorted(zipped.namelist()) == ["cat.jpg", "kitten.png"]
            assert zipped.read("cat.jpg") == (tmp_path / "cli" / "cat.jpg").read_bytes()
        # the same outputs again: refused as the CLI refuses them, nothing replaced
        before = tree(tmp_path)
        status, job = request_json(f"{base}/api/jobs", {"sources": ids, "model": GENERAL_X2})
        job = wait_job(base, job["id"])
        assert job["status"] == "refused" and "already exist(s)" in job["message"]
        assert {f["status"] for f in job["files"]} == {"refused"} and tree(tmp_path) == before
        status, job = request_json(
            f"{base}/api/jobs", {"sources": ids, "model": GENERAL_X2, "overwrite": True}
        )
        assert wait_job(base, job["id"])["status"] == "done"


def test_a_folder_job_writes_only_into_the_output_folder_and_reports_each_file(tmp_path):
    folder = tmp_path / "pics"
    (folder / "sub").mkdir(parents=True)
    photo(folder / "a.png")
    photo(folder / "sub" / "b.jpg", (40, 32))
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    model = tmp_path / "tiny.safetensors"
    save_model(tiny_plain(scale=2), model)
    cli_upscale([folder], tmp_path / "cli", "-m", str(model), status=1)  # 1: a file failed
    with running_app(tmp_path) as (base, _):
        status, added = request_json(f"{base}/api/folder", {"path": str(folder)})
        assert status == 200 and [s["name"] for s in added["sources"]] == ["a.png", "broken.png", "sub/b.jpg"]
        before = tree(tmp_path)
        status, job = request_json(
            f"{base}/api/jobs",
            {"folders": [added["folder"]["id"]], "output": str(tmp_path / "results"), "model": str(model)},
        )
        job = wait_job(base, job["id"])
        outcome = {f["target"]: (f["status"], f["reason"]) for f in job["files"]}
        assert outcome["a.png"] == ("written", "") and outcome["sub/b.jpg"] == ("written", "")
        assert outcome["broken.png"][0] == "failed" and "broken.png: not an image" in outcome["broken.png"][1]
        assert job["status"] == "failed" and job["message"].endswith("1 input(s) failed")
        after = tree(tmp_path)
        assert {name: data for name, data in after.items() if name in before} == before  # nothing changed
        assert sorted(set(after) - set(before)) == ["results/a.png", "results/sub/b.jpg"]  # nothing else
        for name in ("a.png", "sub/b.jpg"):
            assert after[f"results/{name}"] == before[f"cli/{name}"]  # as repsr upscale FOLDER writes them
        # an output folder or a model outside the allowed folders is refused before any job
        for body, message in [
            ({"output": "/etc/out"}, "outside the folders"),
            ({"model": "/etc/passwd"}, "outside the folders"),
            ({"model": str(tmp_path / "none.safetensors")}, "no such model file"),
            (
                {"model": "repsr-general-x4"},
                "repsr-general-x4: no such model; choose one of the page's models",
            ),
        ]:
            status, answer = request_json(f"{base}/api/jobs", {"folders": [added["folder"]["id"]], **body})
            assert status == 400 and message in answer["error"]


def test_a_job_request_of_the_wrong_types_is_refused_and_overwrite_must_be_a_boolean(tmp_path):
    """Fields of the wrong JSON type are 400s naming the field (a number or NaN for `sources`, a list in
    it, were 500s), and `"overwrite": "false"` no longer means yes (it replaced existing results)."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "cat.png").write_bytes(b"an earlier result")
    with running_app(tmp_path) as (base, app):
        sid = upload(base, photo(tmp_path / "cat.png"))[1]["id"]
        for body, message in [
            ({"sources": 5}, "sources must be a list of ids, got 5"),
            ({"sources": [[sid]]}, "sources must be a list of ids"),
            ({"sources": [sid], "folders": [{}]}, "folders must be a list of ids"),
            ({"sources": [sid], "format": {"png": 1}}, "format must be one of"),
            ({"sources": [sid], "overwrite": "false"}, "overwrite must be true or false, got 'false'"),
            ({"sources": [sid], "model": GENERAL_X2, "denoise": True}, "got True"),
        ]:
            status, answer = request_json(f"{base}/api/jobs", body)
            assert status == 400 and message in answer["error"], (body, answer)
        second = upload(base, tmp_path / "cat.png")[1]["id"]  # another upload of the same name
        status, answer = request_json(f"{base}/api/jobs", {"sources": [sid, second]})
        assert status == 400 and answer["error"].startswith("cat.png: 2 of the files have this name")
        assert str(app.library.work_dir) not in answer["error"]  # the run's refusal named it
        (tmp_path / "pics").mkdir()
        photo(tmp_path / "pics" / "cat.png")  # a folder's cat.png and an upload's: the same output name
        folder = request_json(f"{base}/api/folder", {"path": str(tmp_path / "pics")})[1]["folder"]["id"]
        status, answer = request_json(f"{base}/api/jobs", {"sources": [sid], "folders": [folder]})
        assert status == 400 and answer["error"].startswith("cat.png: 2 of the files have this name")
        status, answer = request_json(f"{base}/api/jobs", data=b'{"sources": NaN}')
        assert status == 400 and answer["error"] == "sources must be a list of ids, got NaN"
        assert app.queue.jobs == {}  # none of them was queued
    assert (out / "cat.png").read_bytes() == b"an earlier result"


def test_downloads_answer_odd_indices_head_requests_and_removed_files_with_messages(tmp_path):
    """An index like "²" (isdigit, but not int) and a result removed since the job wrote it are 400s
    (were 500s); HEAD of the zip sends its headers only (it sent the whole zip); a NUL in a /static/
    name is a 404 (was a 500)."""
    model = tmp_path / "tiny.safetensors"
    save_model(tiny_plain(scale=2), model)
    with running_app(tmp_path) as (base, _):
        ids = [upload(base, photo(tmp_path / name))[1]["id"] for name in ("a.png", "b.png")]
        job = request_json(f"{base}/api/jobs", {"sources": ids, "model": str(model)})[1]
        job = wait_job(base, job["id"])
        assert job["status"] == "done"
        files = f"{base}/api/jobs/{job['id']}/files"
        for index in ("%C2%B2", "-1", "2", "1.0", "x"):
            status, answer = request_json(f"{files}/{index}")
            assert status == 400 and "no such written file" in answer["error"], (index, answer)
        status, answer = request_json(f"{base}/api/jobs/nope/files/0")
        assert status == 400 and answer["error"] == "nope: no such job"
        head = raw_exchange(
            base, f"HEAD /api/jobs/{job['id']}/zip HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
        )
        assert head.startswith(b"HTTP/1.1 200 ") and head.endswith(b"\r\n\r\n"), head[-200:]
        assert request(f"{files}/1")[0] == 200
        (tmp_path / "out" / "b.png").unlink()
        status, answer = request_json(f"{files}/1")
        assert (
            status == 400 and answer["error"] == "b.png: cannot be read any more (No such file or directory)"
        )
        status, answer = request_json(f"{base}/api/jobs/{job['id']}/zip")
        assert status == 400 and answer["error"].startswith("b.png: removed since the job wrote it")
        status, _, first = request(f"{files}/0")
        assert status == 200 and first == (tmp_path / "out" / "a.png").read_bytes()
        assert request(f"{base}/static/app%00.js")[0] == 404


def test_a_link_inside_the_output_folder_never_leads_a_result_outside_it(tmp_path):
    """A folder job mirrors sub-folders into the output; a sub-folder there that links elsewhere made
    the result land outside every allowed folder. Now the job is refused before any work."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    allowed = tmp_path / "allowed"
    (allowed / "pics" / "sub").mkdir(parents=True)
    photo(allowed / "pics" / "sub" / "c.png", (24, 20))
    (allowed / "out").mkdir()
    (allowed / "out" / "sub").symlink_to(elsewhere)
    model = allowed / "tiny.safetensors"
    save_model(tiny_plain(scale=2), model)
    with running_app(allowed) as (base, _):
        folder = request_json(f"{base}/api/folder", {"path": str(allowed / "pics")})[1]["folder"]["id"]
        job = request_json(f"{base}/api/jobs", {"folders": [folder], "model": str(model)})[1]
        job = wait_job(base, job["id"])
        assert job["status"] == "refused" and "outside the output folder" in job["message"], job["message"]
        assert list(elsewhere.iterdir()) == []
        (allowed / "out" / "sub").unlink()  # without the link the same job writes inside
        job = wait_job(
            base, request_json(f"{base}/api/jobs", {"folders": [folder], "model": str(model)})[1]["id"]
        )
        assert job["status"] == "done" and (allowed / "out" / "sub" / "c.png").is_file()


def test_jobs_run_one_at_a_time_in_order_and_a_queued_one_can_be_cancelled(tmp_path):
    model = tmp_path / "tiny.safetensors"
    save_model(tiny_plain(scale=2), model)
    with running_app(tmp_path) as (base, app):
        sid = upload(base, photo(tmp_path / "cat.png"))[1]["id"]
        ids = []
        for name in ("one", "two", "three"):
            body = {"sources": [sid], "model": str(model), "output": str(tmp_path / name)}
            ids.append(request_json(f"{base}/api/jobs", body)[1]["id"])
        request_json(f"{base}/api/jobs/{ids[2]}/cancel", {})
        results = [wait_job(base, job_id) for job_id in ids]
    assert [r["status"] for r in results] == ["done", "done", "cancelled"]
    first, second = app.queue.jobs[ids[0]], app.queue.jobs[ids[1]]
    assert second.started >= first.finished  # never two at once
    assert not (tmp_path / "three").exists()


def test_a_queued_job_cancelled_says_so_at_once_and_never_starts(tmp_path, monkeypatch):
    """Cancelling a job that waits behind a running one left it "queued" on the page until the running
    one ended (minutes, for a video); now it is "cancelled" at once, and the worker skips it."""
    release = threading.Event()
    original = Job.run

    def run(self: Job, options: dict) -> None:
        if self.request.output.name == "first":
            assert release.wait(30)
        original(self, options)

    monkeypatch.setattr(Job, "run", run)
    model = tmp_path / "tiny.safetensors"
    save_model(tiny_plain(scale=2), model)
    with running_app(tmp_path) as (base, app):
        sid = upload(base, photo(tmp_path / "cat.png"))[1]["id"]
        ids = [
            request_json(
                f"{base}/api/jobs", {"sources": [sid], "model": str(model), "output": str(tmp_path / n)}
            )[1]["id"]
            for n in ("first", "second")
        ]
        status, answer = request_json(f"{base}/api/jobs/{ids[1]}/cancel", {})
        assert (
            status == 200
            and answer["status"] == "cancelled"
            and answer["message"] == "cancelled before it started"
        )
        _, jobs = request_json(f"{base}/api/jobs")
        assert jobs[1]["status"] == "cancelled" and app.queue.jobs[ids[0]].finished is None  # the first waits
        release.set()
        assert wait_job(base, ids[0])["status"] == "done"
        assert app.queue.jobs[ids[1]].status == "cancelled" and not (tmp_path / "second").exists()


def test_cancelling_a_video_midway_keeps_no_file_and_progress_counts_frames(tmp_path, monkeypatch):
    pytest.importorskip("av", reason="video needs PyAV: pip install 'repsr[video]'")
    from tests.helpers.video import make_clip

    clip = tmp_path / "clip.mp4"
    make_clip(clip, frames=40, size=(32, 24))
    model = tmp_path / "tiny.safetensors"
    save_model(tiny_plain(scale=2), model)
    seen: list[int] = []
    with running_app(tmp_path) as (base, app):
        status, added = upload(base, clip)
        assert status == 200 and added["video"] and added["frames"] == 40
        body = {"sources": [added["id"]], "model": str(model), "output": str(tmp_path / "out")}
        job = wait_job(base, request_json(f"{base}/api/jobs", body)[1]["id"])
        assert job["status"] == "done" and job["files"][0]["frames_done"] == 40
        assert job["message"] == f"1 video(s) written to {tmp_path / 'out'}"  # was "0 image(s) written"
        single = {**body, "output": str(tmp_path / "single.mp4")}  # the one output file, as -o OUT.mp4
        job = wait_job(base, request_json(f"{base}/api/jobs", single)[1]["id"])
        assert job["status"] == "done" and job["files"][0]["target"] == "single.mp4"  # was "."
        assert request(f"{base}/api/jobs/{job['id']}/files/0")[2] == (tmp_path / "single.mp4").read_bytes()
        assert "40 frames" in job["files"][0]["detail"]  # the CLI's line for the video

        original = Job.on_frames

        def cancel_after_first_batch(self: Job, count: int) -> None:
            original(self, count)
            seen.append(count)
            self.cancel.set()

        monkeypatch.setattr(Job, "on_frames", cancel_after_first_batch)
        body["output"] = str(tmp_path / "cancelled")
        job = wait_job(base, request_json(f"{base}/api/jobs", body)[1]["id"])
    assert job["status"] == "cancelled" and job["files"][0]["status"] == "cancelled"
    assert 0 < sum(seen) < 40
    assert not (tmp_path / "cancelled").exists() or not any((tmp_path / "cancelled").rglob("*"))


# ----------------------------------------------------------------------------------------- the CLI


def test_repsr_app_prints_its_url_serves_and_stops_on_ctrl_c(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    command = [
        sys.executable,
        "-m",
        "repsr",
        "app",
        "--no-browser",
        "--allow",
        str(tmp_path),
        "--host",
        "127.0.0.2",
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        started = time.monotonic()
        line = process.stdout.readline()
        assert line.startswith("repsr app: http://127.0.0.2:"), line
        url = line.split()[2]
        status, state = request_json(f"{url}api/state")
        assert status == 200 and state["allowed"] == [str(tmp_path.resolve())]
        startup = time.monotonic() - started
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=20)
    finally:
        process.kill()
    assert process.returncode == 0 and "repsr app: stopped" in out
    assert "warning: listening on 127.0.0.2" in err  # not 127.0.0.1: said, not silent
    # the proposed output (./repsr-output of the test's folder) is outside --allow: said at the start
    assert f"warning: the proposed output folder: {Path.cwd() / 'repsr-output'}: outside the folders" in err
    assert "Traceback" not in err
    print(f"repsr app answered {startup:.2f} s after it was started")


def test_a_model_file_is_checked_before_it_is_offered(tmp_path):
    model = tmp_path / "mine.safetensors"
    save_model(tiny_plain(scale=3), model)
    (tmp_path / "junk.safetensors").write_bytes(b"not a model")
    with running_app(tmp_path) as (base, _):
        status, answer = request_json(f"{base}/api/model-file", {"path": str(model)})
        assert status == 200 and answer == {"name": str(model.resolve()), "scale": 3, "denoise": False}
        status, answer = request_json(f"{base}/api/model-file", {"path": str(tmp_path / "junk.safetensors")})
        assert status == 400 and "junk.safetensors" in answer["error"]
        status, answer = request_json(f"{base}/api/model-file", {"path": "/etc/hostname"})
        assert status == 400 and "outside the folders" in answer["error"]
        sid = upload(base, photo(tmp_path / "cat.png"))[1]["id"]
        status, headers, png = request(f"{base}/api/preview?source={sid}&model={model}&size=32")
        assert status == 200 and Image.open(io.BytesIO(png)).size == (96, 96)


def test_a_port_in_use_is_a_one_line_error(tmp_path, capsys):
    import socket

    from repsr.cli import main

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["app", "--no-browser", "--allow", str(tmp_path), "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert f"--port {port}: cannot listen there (Address already in use)" in err and "Traceback" not in err
