"""Every outbound call obeys the environment's proxy and CA variables (docs/egress.md).

A local forward proxy (``tests.forward_proxy``) stands in front of the IMS emulator, and records
what it forwards: the create call (through the ``create`` function's test client and the use
case), IAM's token request, ``check``'s polls (the h11 keep-alive poller) and the webhook that
``check`` delivers inline all go through it; ``NO_PROXY`` takes them past it. Over TLS, the
emulator's certificate comes from a throw-away CA (trustme) that only ``SSL_CERT_FILE`` names:
the proxy then sees ``CONNECT`` and nothing of the requests inside the tunnel.

The variables are set in ``os.environ``, where a deployment sets them; the ``isolate_environment``
fixture of tests/conftest.py restores it after each test.
"""

from __future__ import annotations

import os
import ssl
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import trustme
from flask.testing import FlaskClient
from functions_framework import create_app

from ims_emulator import EmulatorConfig, ImsEmulator
from tests.fakes import FakeImsClient, make_settings
from tests.forward_proxy import ForwardProxy
from wholeimage.bootstrap import Dependencies, set_dependencies
from wholeimage.create import submit_create
from wholeimage.ims.client import HttpImsClient
from wholeimage.models import CreateImageRequest, Job, JobStatus
from wholeimage.service.ports import ims_client
from wholeimage.store.sqlite import SqliteJobStore

pytestmark = pytest.mark.slow  # threads, sockets and a TLS handshake per connection

ROOT = Path(__file__).resolve().parents[2]
MAIN = str(ROOT / "functions" / "main.py")
INSTANCE_ID = "877a2cda-ba63-4e1e-b95f-e67e48b6129a"
CONFIG = EmulatorConfig(job_seconds=0)


class _Receiver(BaseHTTPRequestHandler):
    """A Slack-shaped webhook: 200 ``ok``."""

    received: list[str]

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        type(self).received.append(self.path)
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def webhook() -> Iterator[tuple[str, list[str]]]:
    received: list[str] = []
    handler = type("Receiver", (_Receiver,), {"received": received})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", received
    server.shutdown()
    server.server_close()


@pytest.fixture(autouse=True)
def no_proxy_variables() -> None:
    for name in list(os.environ):
        if name.lower().endswith("_proxy") or name in ("SSL_CERT_FILE", "SSL_CERT_DIR"):
            del os.environ[name]


@pytest.fixture
def proxy() -> Iterator[ForwardProxy]:
    with ForwardProxy() as running:
        yield running


@pytest.fixture
def ims() -> Iterator[ImsEmulator]:
    with ImsEmulator(CONFIG) as emulator:
        yield emulator


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def tls_ims(ca: trustme.CA) -> Iterator[ImsEmulator]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    emulator = ImsEmulator(CONFIG)
    emulator.start(ssl_context=context)
    yield emulator
    emulator.stop()


@pytest.fixture
def deps_for(tmp_path: Path) -> Iterator[Any]:
    made: list[Dependencies] = []

    def make(ims: ImsEmulator, **overrides: Any) -> Dependencies:
        values: dict[str, Any] = {
            "ims_endpoint": ims.url,
            "iam_endpoint": ims.url,
            "iam_user": ims.config.iam_user,
            "iam_password": ims.config.iam_password,
            "iam_domain": ims.config.iam_domain,
            "poll_min_interval": 0,
            "poll_max_interval": 0,
        }
        deps = Dependencies(
            settings=make_settings(**(values | overrides)),
            store=SqliteJobStore(str(tmp_path / f"state-{len(made)}.db")),
        )
        made.append(deps)
        set_dependencies(deps)
        return deps

    yield make
    set_dependencies(None)
    for deps in made:
        if isinstance(deps.ims, HttpImsClient):
            deps.ims._http.close()
        if deps.webhooks is not None:
            deps.webhooks.close()
        deps.store.close()


def function(target: str) -> FlaskClient:
    client: FlaskClient = create_app(target, MAIN).test_client()
    return client


def create_through_the_function() -> dict[str, Any]:
    response = function("create").post("/", json={"name": "web01-full", "instance_id": INSTANCE_ID})
    assert response.status_code == 202, response.get_data(as_text=True)
    return dict(response.get_json())


def submitted_a_minute_ago(deps: Dependencies) -> Job:
    """A job submitted a minute ago through the use case, so the next tick finds it due."""
    return submit_create(
        CreateImageRequest(name="db01-full", instance_id=str(uuid.uuid4())),
        idempotency_key=None,
        requested_by="tests",
        trace=None,
        ims=ims_client(deps),
        store=deps.store,
        now=lambda: datetime.now(UTC) - timedelta(minutes=1),
        first_poll_after=timedelta(seconds=10),
    ).job


def tick_through_the_function() -> dict[str, Any]:
    response = function("check").post("/")
    assert response.status_code == 200, response.get_data(as_text=True)
    return dict(response.get_json())


def test_create_iam_polls_and_the_webhook_all_go_through_the_proxy(proxy, ims, deps_for, webhook):
    os.environ["HTTP_PROXY"] = proxy.url
    hook_url, delivered = webhook
    deps = deps_for(ims, webhook_url=hook_url, webhook_format="slack")

    created = create_through_the_function()
    job = submitted_a_minute_ago(deps)
    answer = tick_through_the_function()

    # WHOLEIMAGE_POLL_MIN_INTERVAL=0: the job created through the function is due at once too.
    assert answer["polled"] == 2
    assert answer["ended"] == {"SUCCESS": 2}
    assert answer["notify"]["delivered"] == 2
    assert delivered == ["/hook", "/hook"]
    assert deps.store.get(job.request_id).status is JobStatus.SUCCESS
    ims_host = ims.url.removeprefix("http://")
    targets = [(entry.method, entry.target) for entry in proxy.forwarded]
    assert ("POST", f"{ims.url}/v3/auth/tokens?nocatalog=true") in targets
    assert [t for t in targets if t[1].endswith("/wholeimages/action")] == [
        ("POST", f"{ims.url}/v1/cloudimages/wholeimages/action")
    ] * 2
    assert ("GET", f"{ims.url}/v1/{ims.config.project_id}/jobs/{job.ims_job_id}") in targets
    assert ("POST", hook_url) in targets
    assert created["job_id"] in ims.jobs
    # Nothing reached IMS but through the proxy: every request the emulator saw was forwarded.
    assert len(ims.requests) == len([h for h in proxy.hosts() if h == ims_host])


def test_no_proxy_takes_every_call_past_the_proxy(proxy, ims, deps_for, webhook):
    os.environ["HTTP_PROXY"] = proxy.url
    os.environ["NO_PROXY"] = "localhost,127.0.0.1"
    hook_url, delivered = webhook
    deps = deps_for(ims, webhook_url=hook_url, webhook_format="slack")

    create_through_the_function()
    submitted_a_minute_ago(deps)
    answer = tick_through_the_function()

    assert answer["ended"] == {"SUCCESS": 2}
    assert delivered == ["/hook", "/hook"]
    assert proxy.forwarded == []
    assert ims.calls["job"] == 2


def test_over_tls_the_proxy_tunnels_and_the_ca_of_ssl_cert_file_is_trusted(
    proxy, tls_ims, ca, deps_for, tmp_path
):
    bundle = tmp_path / "corporate-ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    os.environ["SSL_CERT_FILE"] = str(bundle)
    os.environ["HTTPS_PROXY"] = proxy.url
    deps = deps_for(tls_ims)

    create_through_the_function()
    job = submitted_a_minute_ago(deps)
    answer = tick_through_the_function()

    assert answer["ended"] == {"SUCCESS": 2}, answer
    assert deps.store.get(job.request_id).status is JobStatus.SUCCESS
    authority = tls_ims.url.removeprefix("https://")
    # Only tunnels: the proxy never saw a path, a header or a body of ours.
    assert {(entry.method, entry.target) for entry in proxy.forwarded} == {("CONNECT", authority)}
    assert all("authorization" not in entry.headers for entry in proxy.forwarded)
    assert tls_ims.calls["job"] == 2


def test_without_the_ca_the_tunnelled_tls_is_refused(proxy, tls_ims, deps_for):
    os.environ["HTTPS_PROXY"] = proxy.url
    deps_for(
        tls_ims, access_key=tls_ims.config.ak, secret_key=tls_ims.config.sk, ims_max_attempts=1
    )

    response = function("create").post("/", json={"name": "web01-full", "instance_id": INSTANCE_ID})

    # Nothing reached IMS (the handshake failed inside the tunnel): certainly not submitted.
    assert response.status_code == 503, response.get_data(as_text=True)
    assert [entry.method for entry in proxy.forwarded] == ["CONNECT"]
    assert tls_ims.calls.get("create", 0) == 0


def test_the_poller_through_a_proxy_that_wants_a_password_sends_the_urls_credentials(ims, deps_for):
    with ForwardProxy(credentials=("svc-wholeimage", "p@ss:word")) as guarded:
        os.environ["HTTP_PROXY"] = guarded.url
        deps = deps_for(ims)
        job = submitted_a_minute_ago(deps)
        answer = tick_through_the_function()

    assert answer["ended"] == {"SUCCESS": 1}, answer
    assert deps.store.get(job.request_id).status is JobStatus.SUCCESS
    assert "GET" in {entry.method for entry in guarded.forwarded}  # the poller's, with them too
    assert all(entry.allowed for entry in guarded.forwarded)


def test_a_proxy_that_refuses_the_tunnel_leaves_the_job_to_the_next_tick(tls_ims, deps_for):
    with ForwardProxy(credentials=("svc", "right")) as guarded:
        os.environ["HTTPS_PROXY"] = guarded.url.replace("right", "wrong")
        deps = deps_for(tls_ims, access_key=tls_ims.config.ak, secret_key=tls_ims.config.sk)
        job = submit_create(
            CreateImageRequest(name="db01-full", instance_id=INSTANCE_ID),
            idempotency_key=None,
            requested_by="tests",
            trace=None,
            ims=FakeImsClient(),
            store=deps.store,
            now=lambda: datetime.now(UTC) - timedelta(minutes=1),
            first_poll_after=timedelta(seconds=10),
        ).job
        answer = tick_through_the_function()

    assert answer["polled"] == 1
    assert answer["errors"] == {"transient": 1}, answer
    assert deps.store.get(job.request_id).status is JobStatus.SUBMITTED
    assert [(entry.method, entry.allowed) for entry in guarded.forwarded] == [("CONNECT", False)]
    assert tls_ims.calls.get("job", 0) == 0


def test_through_an_https_proxy_every_client_trusts_the_ca_of_ssl_cert_file(
    ca, ims, deps_for, webhook, tmp_path
):
    # The poller's workers fall back to httpx here (HttpxPollClient): it does TLS to the proxy.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    os.environ["SSL_CERT_FILE"] = str(bundle)
    hook_url, delivered = webhook
    with ForwardProxy(tls=context) as secure:
        assert secure.url.startswith("https://")
        os.environ["HTTP_PROXY"] = secure.url
        deps = deps_for(ims, webhook_url=hook_url, webhook_format="slack")
        job = submitted_a_minute_ago(deps)
        answer = tick_through_the_function()

    assert answer["ended"] == {"SUCCESS": 1}, answer
    assert deps.store.get(job.request_id).status is JobStatus.SUCCESS
    assert delivered == ["/hook"]
    methods = {(entry.method, entry.target.split("?")[0]) for entry in secure.forwarded}
    assert ("GET", f"{ims.url}/v1/{ims.config.project_id}/jobs/{job.ims_job_id}") in methods
    assert ("POST", hook_url) in methods
