"""Downloading official raw files: checksums, resume, atomic placement, offline errors.

A local HTTP server stands in for the dataset host (the tests never reach the internet). It
honours `Range` requests like the real hosts, and can cut a response short.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import io
import os
import socket
import threading

import pytest

from commandline import cli
from pipeline import preprocess
from preprocessing import download, official_files, registry
from preprocessing.datasets.base import RawDataMissing
from preprocessing.download import DownloadError, NetworkUnavailable, RemoteFile
from tests.fixtures import make_higgs


class _Host(http.server.BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}
    requests: list[tuple[str, str | None]] = []
    cut_after: int | None = None  # announce the full length but send only this many bytes
    ignore_range = False  # like a host without Range support: always the whole file, HTTP 200

    def do_GET(self):  # noqa: N802 (http.server's name)
        name = self.path.lstrip("/")
        self.requests.append((name, self.headers.get("Range")))
        if name not in self.files:
            self.send_error(404)
            return
        data, start = self.files[name], 0
        if self.headers.get("Range") and not self.ignore_range:
            start = int(self.headers["Range"].split("=")[1].rstrip("-"))
            if start >= len(data):
                self.send_error(416)
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body if self.cut_after is None else body[:self.cut_after])

    def log_message(self, *args):
        pass


@pytest.fixture
def host():
    """(base URL, handler class) of a local file host; `files` maps name -> bytes."""
    handler = type("Host", (_Host,), {"files": {}, "requests": [], "cut_after": None,
                                      "ignore_range": False})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", handler
    server.shutdown()
    server.server_close()


def _remote(data: bytes, name: str = "raw.bin", **overrides) -> RemoteFile:
    fields = dict(url=f"https://example.invalid/{name}", filename=name, size=len(data),
                  sha256=hashlib.sha256(data).hexdigest(), checksum_source="test")
    fields.update(overrides)
    return RemoteFile(**fields)


def _closed_port_url() -> str:
    with contextlib.closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


DATA = bytes(range(256)) * 4096  # 1 MiB: more than one read chunk


def test_fetch_verifies_and_places_the_file_atomically(host, tmp_path):
    url, handler = host
    handler.files["raw.bin"] = DATA
    log = io.StringIO()
    path = download.fetch(_remote(DATA), str(tmp_path), mirror=url, stream=log)
    assert path == str(tmp_path / "raw.bin")
    assert open(path, "rb").read() == DATA
    assert sorted(os.listdir(tmp_path)) == ["raw.bin"]  # no .part / .lock left
    assert "checksum verified (sha256)" in log.getvalue()
    assert "1.0 MB" in log.getvalue()  # the progress line
    # Present under its real name = complete: a second call does not touch the network.
    download.fetch(_remote(DATA), str(tmp_path), mirror=_closed_port_url())


def test_md5_only_files_are_verified_too(host, tmp_path):
    url, handler = host
    handler.files["raw.bin"] = DATA
    remote = _remote(DATA, sha256=None, md5=hashlib.md5(DATA).hexdigest())
    log = io.StringIO()
    download.fetch(remote, str(tmp_path), mirror=url, stream=log)
    assert "checksum verified (md5)" in log.getvalue()


def test_wrong_checksum_deletes_the_bytes_and_names_both_sums(host, tmp_path):
    url, handler = host
    handler.files["raw.bin"] = DATA
    remote = _remote(DATA, sha256="0" * 64)
    with pytest.raises(DownloadError) as e:
        download.fetch(remote, str(tmp_path), mirror=url, stream=io.StringIO())
    message = str(e.value)
    assert "0" * 64 in message and hashlib.sha256(DATA).hexdigest() in message
    assert "raw.bin" in message and str(tmp_path) in message
    assert os.listdir(tmp_path) == []


def test_size_announced_by_the_server_must_match_the_official_size(host, tmp_path):
    url, handler = host
    handler.files["raw.bin"] = DATA[:1000]  # e.g. an HTML error page instead of the archive
    with pytest.raises(DownloadError, match="announces 1000 bytes.*has 1048576"):
        download.fetch(_remote(DATA), str(tmp_path), mirror=url, stream=io.StringIO())
    assert os.listdir(tmp_path) == []


def test_broken_connection_keeps_the_part_and_the_next_call_resumes_it(host, tmp_path):
    url, handler = host
    handler.files["raw.bin"] = DATA
    handler.cut_after = 300_000
    with pytest.raises(DownloadError, match="resumes"):
        download.fetch(_remote(DATA), str(tmp_path), mirror=url, stream=io.StringIO(), timeout=5)
    assert os.path.getsize(tmp_path / "raw.bin.part") == 300_000
    assert not (tmp_path / "raw.bin").exists()

    handler.cut_after = None
    log = io.StringIO()
    download.fetch(_remote(DATA), str(tmp_path), mirror=url, stream=log)
    assert open(tmp_path / "raw.bin", "rb").read() == DATA
    assert handler.requests[-1] == ("raw.bin", "bytes=300000-")
    assert "resuming" in log.getvalue()


def test_a_host_without_range_support_restarts_from_zero(host, tmp_path):
    url, handler = host
    handler.files["raw.bin"] = DATA
    handler.ignore_range = True
    (tmp_path / "raw.bin.part").write_bytes(DATA[:1234])
    download.fetch(_remote(DATA), str(tmp_path), mirror=url, stream=io.StringIO())
    assert open(tmp_path / "raw.bin", "rb").read() == DATA  # not the 1234 bytes twice


def test_a_second_process_on_the_same_file_is_refused(host, tmp_path):
    import fcntl

    url, handler = host
    handler.files["raw.bin"] = DATA
    with open(tmp_path / "raw.bin.part.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(DownloadError, match="another process"):
            download.fetch(_remote(DATA), str(tmp_path), mirror=url, stream=io.StringIO())
    assert handler.requests == []


def test_a_complete_part_file_is_verified_without_downloading_again(host, tmp_path):
    url, handler = host
    handler.files["raw.bin"] = DATA
    (tmp_path / "raw.bin.part").write_bytes(DATA)
    download.fetch(_remote(DATA), str(tmp_path), mirror=url, stream=io.StringIO())
    assert handler.requests == [("raw.bin", f"bytes={len(DATA)}-")]  # answered 416
    assert open(tmp_path / "raw.bin", "rb").read() == DATA


def test_unreachable_host_is_network_unavailable(tmp_path):
    with pytest.raises(NetworkUnavailable, match="could not connect"):
        download.fetch(_remote(DATA), str(tmp_path), mirror=_closed_port_url(), stream=io.StringIO())
    assert not (tmp_path / "raw.bin").exists()


def test_missing_file_on_the_server_is_a_download_error(host, tmp_path):
    url, _ = host
    with pytest.raises(DownloadError, match="HTTP 404"):
        download.fetch(_remote(DATA), str(tmp_path), mirror=url, stream=io.StringIO())


def test_unverified_files_report_the_sha256_they_got(host, tmp_path):
    url, handler = host
    handler.files["raw.bin"] = DATA
    log = io.StringIO()
    download.fetch(_remote(DATA, size=None, sha256=None), str(tmp_path), mirror=url, stream=log)
    assert hashlib.sha256(DATA).hexdigest() in log.getvalue()


# === the pipeline ===
def _higgs_bytes(tmp_path) -> bytes:
    folder = make_higgs.make_raw(str(tmp_path / "fixture"))
    return open(os.path.join(folder, "HIGGS.csv.gz"), "rb").read()


def _higgs_args(data_dir, out_dir, *extra):
    return ["--dataset", "higgs", "--raw_data_dir", str(data_dir), "--data_dir", str(out_dir),
            "--reader_option", f"pretrain_rows={make_higgs.PRETRAIN_ROWS}",
            "--max_bad_fraction", "0.1", "--num_shards", "1", *extra]


def test_pipeline_downloads_missing_raw_files_then_runs(host, tmp_path, monkeypatch, capsys):
    url, handler = host
    data = _higgs_bytes(tmp_path)
    handler.files["HIGGS.csv.gz"] = data
    # The official entry, with the fixture's size and checksum in place of the real 2.8 GB file's.
    official = official_files.HIGGS
    monkeypatch.setitem(official_files.OFFICIAL_FILES, "higgs", (_remote(
        data, name="HIGGS.csv.gz", url=official.url),))
    raw = tmp_path / "raw"
    result = preprocess.run(_higgs_args(raw, tmp_path / "out", "--download", "auto",
                                        "--download_mirror", url))
    assert result.num_examples == make_higgs.PRETRAIN_ROWS - 1
    assert os.listdir(raw) == ["HIGGS.csv.gz"]
    assert "checksum verified" in capsys.readouterr().err


def test_pipeline_checksum_mismatch_fails_and_leaves_nothing(host, tmp_path):
    url, handler = host
    handler.files["HIGGS.csv.gz"] = _higgs_bytes(tmp_path)  # not the official 2.8 GB file
    raw = tmp_path / "raw"
    code = cli.call_program(preprocess, _higgs_args(raw, tmp_path / "out", "--download", "auto",
                                                    "--download_mirror", url))
    assert code == 2
    assert not raw.exists()  # neither the wrong bytes nor the folder made for them
    assert not (tmp_path / "out" / "higgs" / "1").exists()


def test_pipeline_offline_error_names_file_url_and_folder(tmp_path):
    raw = tmp_path / "raw"
    with pytest.raises(RawDataMissing) as e:
        preprocess.run(_higgs_args(raw, tmp_path / "out", "--download", "auto",
                                   "--download_mirror", _closed_port_url(), "--download_timeout", "5"))
    message = str(e.value)
    assert "HIGGS.csv.gz" in message and official_files.HIGGS.url in message
    assert str(raw) in message and "automatic download failed" in message
    assert not raw.exists()  # the failed attempt leaves no empty folder behind


def test_download_never_does_not_touch_the_network(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("--download never must not download")

    monkeypatch.setattr(download, "ensure_raw_files", refuse)
    with pytest.raises(RawDataMissing, match="HIGGS.csv.gz"):
        preprocess.run(_higgs_args(tmp_path / "raw", tmp_path / "out", "--download", "never"))


def test_list_says_which_datasets_download_themselves():
    table = preprocess.list_datasets(raw_root="/nonexistent")
    rows = {line.split()[0]: line for line in table.splitlines()[1:]}
    assert rows["higgs"].endswith("no: download 2.8 GB")
    assert rows["imagenet32"].endswith("no: place by hand")


def test_list_fits_100_columns_and_list_name_gives_the_details(capsys):
    table = preprocess.list_datasets(raw_root="/nonexistent")
    assert max(len(line) for line in table.splitlines()) <= 100
    assert table.splitlines()[-1].endswith("--list NAME")
    # `--list NAME` as typed: the flag's value may follow it, or be left out.
    assert preprocess.run(["--list", "higgs", "--raw_data_dir", "/nonexistent"]) is None
    details = capsys.readouterr().out
    assert "metric       accuracy" in details and "HIGGS.csv.gz" in details
    assert preprocess.run(["--list"]) is None
    assert "higgs-transfer" in capsys.readouterr().out
    with pytest.raises(cli.UserError, match=r"unknown dataset 'higs' \(--list higs\)"):
        preprocess.run(["--list", "higs"])


@pytest.mark.parametrize("dataset", sorted(official_files.OFFICIAL_FILES))
def test_official_files_are_the_ones_the_reader_asks_for(dataset):
    """Every downloadable file is named in the reader's own missing-data message."""
    reader = registry.get_reader(dataset, data_dir="/nonexistent/raw")
    with pytest.raises(RawDataMissing) as e:
        reader.check_raw()
    named = str(e.value) + " ".join(reader.expected_files())
    for remote in official_files.official_files(dataset):
        assert remote.filename in named, (dataset, remote.filename)
        assert remote.url.startswith(("http://", "https://"))
        assert remote.sha256 is None or len(remote.sha256) == 64


def test_datasets_made_from_the_same_files_share_one_raw_folder():
    """vqa and mismatched-caption read (and download) COCO where mscoco does, and so on."""
    shared = {"higgs-transfer": "higgs", "genomics-ood": "genomics", "genomics-id": "genomics",
              "vqa": "mscoco", "mismatched-caption": "mscoco", "wafermap-unlabeled": "wafermap",
              "librispeech-dev-clean": "librispeech", "fluent-speech-action": "fluent-speech",
              "cifar10": "cifar10"}
    for dataset, folder in shared.items():
        assert registry.raw_folder(dataset) == folder
        reader = registry.get_reader(dataset)
        assert reader.default_data_dir() == os.path.join("data", "raw", folder)
    assert "raw folder   /r/mscoco\n" in preprocess.describe_dataset("vqa", "/r")
