"""Which proxy an outbound call takes (``httputil.Egress``), with httpx itself as the referee.

``create`` goes through httpx, ``check``'s poller through its own h11 client: both must agree on
every URL, or submissions work behind a proxy and polling never does. ``environment_proxy_mounts``
restates httpx's reading of ``HTTP_PROXY``, ``HTTPS_PROXY``, ``ALL_PROXY`` and ``NO_PROXY`` over
``urllib.request.getproxies``; these tests hold it to what httpx 0.28 derives from the same
environment (its private ``get_environment_proxies`` and the transport its client picks per URL,
read here only as the referee).
"""

from __future__ import annotations

import os
import ssl

import httpx
import pytest
from httpx._utils import get_environment_proxies
from hypothesis import given, settings
from hypothesis import strategies as st

from wholeimage.errors import ConfigurationError
from wholeimage.httputil import Egress, environment_proxy_mounts
from wholeimage.ims.keepalive import HttpProxy

PROXY = "http://proxy.corp.example:3128"
OTHER = "http://other-proxy.corp.example:8080"


@pytest.fixture(autouse=True)
def no_proxy_variables() -> None:
    """No proxy variable of the machine's (the conftest fixture restores them afterwards)."""
    for name in list(os.environ):
        if name.lower().endswith("_proxy") or name == "REQUEST_METHOD":
            del os.environ[name]


def set_environment(variables: dict[str, str]) -> None:
    for name in list(os.environ):
        if name.lower().endswith("_proxy"):
            del os.environ[name]
    os.environ.update(variables)


ENVIRONMENTS = [
    {},
    {"HTTPS_PROXY": PROXY},
    {"https_proxy": PROXY, "HTTPS_PROXY": OTHER},  # lower case wins
    {"HTTP_PROXY": "proxy.corp.example:3128"},  # no scheme: http:// is meant
    {"ALL_PROXY": PROXY, "HTTPS_PROXY": OTHER},
    {"HTTPS_PROXY": PROXY, "NO_PROXY": "*"},
    {"HTTPS_PROXY": PROXY, "NO_PROXY": "localhost,127.0.0.1,::1,.internal,example.com"},
    {"HTTPS_PROXY": PROXY, "no_proxy": " ims.eu-de.otc.t-systems.com , ,10.0.0.0/8"},
    {"ALL_PROXY": PROXY, "NO_PROXY": "https://ims.example.com,http://*.hooks.example"},
    {"HTTPS_PROXY": "https://user:p%40ss@secure-proxy.example:443"},
    {"HTTPS_PROXY": PROXY, "https_proxy": ""},  # an empty lower-case variable unsets it
]


@pytest.mark.parametrize("variables", ENVIRONMENTS)
def test_the_mounts_are_those_httpx_derives_from_the_same_environment(variables):
    set_environment(variables)

    assert environment_proxy_mounts() == get_environment_proxies()


def httpx_choice(client: httpx.Client, url: str) -> str | None:
    """The proxy URL httpx's own client takes for ``url`` (None: direct)."""
    transport = client._transport_for_url(httpx.URL(url))
    if transport is client._transport:
        return None
    chosen = {id(mounted): pattern for pattern, mounted in client._mounts.items()}[id(transport)]
    return get_environment_proxies()[chosen.pattern]


HOSTS = [
    "ims.eu-de.otc.t-systems.com",
    "iam.eu-de.otc.t-systems.com",
    "example.com",
    "www.example.com",
    "wwwexample.com",
    "a.internal",
    "internal",
    "localhost",
    "127.0.0.1",
    "10.0.0.1",
    "[::1]",
    "hooks.slack.com",
]
URLS = [
    f"{scheme}://{host}{port}/path"
    for scheme in ("http", "https")
    for host in HOSTS
    for port in ("", ":8443", ":443", ":80")
]
NO_PROXY_ENTRIES = st.sampled_from(
    [
        "example.com",
        ".example.com",
        "*.example.com",
        "internal",
        ".internal",
        "localhost",
        "127.0.0.1",
        "::1",
        "10.0.0.0/8",
        "ims.eu-de.otc.t-systems.com",
        "otc.t-systems.com",
        "https://hooks.slack.com",
        "http://example.com:8443",
        "all://*.t-systems.com",
        "EXAMPLE.COM",
    ]
)


@settings(max_examples=60)
@given(
    proxies=st.fixed_dictionaries(
        {},
        optional={
            "HTTPS_PROXY": st.sampled_from([PROXY, OTHER]),
            "HTTP_PROXY": st.sampled_from([PROXY, OTHER]),
            "ALL_PROXY": st.sampled_from([PROXY, "https://secure-proxy.example:443"]),
        },
    ),
    no_proxy=st.lists(NO_PROXY_ENTRIES, max_size=4),
)
def test_every_url_takes_the_proxy_httpx_would_take(proxies, no_proxy):
    set_environment({**proxies, "NO_PROXY": ",".join(no_proxy)})
    egress = Egress.from_mounts(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), environment_proxy_mounts())

    with httpx.Client(trust_env=True) as referee:
        for url in URLS:
            assert egress.proxy_for(url) == httpx_choice(referee, url), url


def test_our_httpx_clients_take_the_same_route_as_the_poller():
    set_environment({"HTTPS_PROXY": PROXY, "NO_PROXY": ".internal"})
    egress = Egress.from_environment()

    with egress.client() as client:
        direct = client._transport_for_url(httpx.URL("https://ims.a.internal/v1"))
        proxied = client._transport_for_url(httpx.URL("https://ims.example.com/v1"))

    assert direct is client._transport
    assert proxied is not client._transport
    assert egress.proxy_for("https://ims.a.internal/v1") is None
    assert egress.proxy_for("https://ims.example.com/v1") == PROXY


def test_a_proxy_of_an_unknown_scheme_is_a_configuration_error_naming_the_variable_not_the_url():
    set_environment({"HTTPS_PROXY": "ftp://user:hunter2@proxy.example:21"})

    with pytest.raises(ConfigurationError, match="HTTPS_PROXY") as raised:
        Egress.from_environment()

    assert "hunter2" not in raised.value.message


def test_the_proxy_urls_user_and_password_become_basic_proxy_authorization():
    proxy = HttpProxy.of("http://svc%2Dwholeimage:p%40ss%3Aword@proxy.example:3128")

    # base64("svc-wholeimage:p@ss:word"): the URL's percent-encoding is undone first.
    assert proxy.authorization == "Basic c3ZjLXdob2xlaW1hZ2U6cEBzczp3b3Jk"
    assert (proxy.host, proxy.port) == ("proxy.example", 3128)
    assert "p@ss" not in repr(proxy)
    assert HttpProxy.of("http://proxy.example").port == 80
    assert HttpProxy.of("http://proxy.example").authorization is None
    with pytest.raises(ValueError, match="http://"):
        HttpProxy.of("https://proxy.example")
