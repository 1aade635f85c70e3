"""Which certificates outbound TLS trusts (``httputil.build_ssl_context``), against a real TLS server
on loopback whose certificate a throw-away CA signed (trustme): ``SSL_CERT_FILE``, ``SSL_CERT_DIR``
(a hashed directory, as ``openssl rehash`` makes), and neither (then our CA is unknown)."""

from __future__ import annotations

import shutil
import ssl
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
import trustme

from wholeimage.errors import ConfigurationError
from wholeimage.httputil import build_ssl_context


class _Ok(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def https_url(ca: trustme.CA) -> Iterator[str]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"https://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def get(url: str, context: ssl.SSLContext) -> httpx.Response:
    with httpx.Client(verify=context, timeout=5) as client:
        return client.get(url)


def test_the_bundle_ssl_cert_file_names_is_trusted(ca, https_url, tmp_path):
    bundle = tmp_path / "corporate-ca.pem"
    ca.cert_pem.write_to_path(str(bundle))

    context = build_ssl_context({"SSL_CERT_FILE": str(bundle)})

    assert get(https_url, context).text == "ok"


def test_the_hashed_directory_ssl_cert_dir_names_is_trusted(ca, https_url, tmp_path):
    openssl = shutil.which("openssl")
    assert openssl, "the openssl command computes the subject hash a certificate directory uses"
    pem = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(pem))
    subject_hash = subprocess.run(
        [openssl, "x509", "-subject_hash", "-noout", "-in", str(pem)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    directory = tmp_path / "certs"
    directory.mkdir()
    shutil.copy(pem, directory / f"{subject_hash}.0")

    context = build_ssl_context({"SSL_CERT_DIR": str(directory)})

    assert get(https_url, context).text == "ok"


def test_a_certificate_no_trusted_ca_signed_is_refused(https_url):
    context = build_ssl_context({})  # the system's store or certifi's: neither knows our CA

    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        get(https_url, context)


def test_the_host_name_is_checked_too(ca, https_url, tmp_path):
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    context = build_ssl_context({"SSL_CERT_FILE": str(bundle)})

    # The certificate names 127.0.0.1, not localhost.
    with pytest.raises(httpx.ConnectError, match=r"CERTIFICATE_VERIFY_FAILED|match"):
        get(https_url.replace("127.0.0.1", "localhost"), context)


def test_an_unreadable_ssl_cert_file_is_a_configuration_error_naming_it(tmp_path: Path):
    with pytest.raises(ConfigurationError, match="SSL_CERT_FILE"):
        build_ssl_context({"SSL_CERT_FILE": str(tmp_path / "missing.pem")})

    (tmp_path / "not-a-certificate.pem").write_text("hello")
    with pytest.raises(ConfigurationError, match="SSL_CERT_FILE"):
        build_ssl_context({"SSL_CERT_FILE": str(tmp_path / "not-a-certificate.pem")})
