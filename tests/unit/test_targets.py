"""Notification targets: each service's payload, digest, escaping and signing, and what its answers mean.

Answers are driven through ``httpx.MockTransport``: the rendered message is really sent (URL,
headers, bytes) and the service's answer is classified. Example URLs have the shapes of
docs/webhooks.md §0, with made-up credentials.
"""

from __future__ import annotations

import ast
import base64
import hashlib
import hmac
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import httpx
import pytest
from jsonschema import Draft6Validator
from pydantic import SecretStr
from standardwebhooks import Webhook, WebhookVerificationError

import wholeimage.channels
from wholeimage.channels.base import Delivery, OutgoingMessage, RateLimit
from wholeimage.channels.formats import FORMATS as CHANNEL_FORMATS
from wholeimage.channels.registry import CHANNEL_TARGETS, target_for
from wholeimage.channels.urls import OFFICE_CONNECTOR_RETIRED, redact_url
from wholeimage.errors import ConfigurationError, RequestInvalidError
from wholeimage.results import Channel, JobResult, console_url, notification_key
from wholeimage.settings import load_settings
from wholeimage.validation import validate

ADAPTIVE_CARD_SCHEMA = (
    Path(__file__).resolve().parents[1] / "data" / "schemas" / "adaptive-card-1.5.json"
)
EVENT_SCHEMA = "notification-event.schema.json"
JOB_RESULT_SCHEMA = "job-result.schema.json"

FORMATS = [
    "slack",
    "teams",
    "discord",
    "googlechat",
    "mattermost",
    "rocketchat",
    "feishu",
    "dingtalk",
    "wecom",
    "standard",
]
CHAT_FORMATS = [f for f in FORMATS if f != "standard"]
STATUSES = ["SUCCESS", "FAIL", "TIMED_OUT", "UNCONFIRMED"]
EMOJI = {"SUCCESS": "✅", "FAIL": "❌", "TIMED_OUT": "⏱", "UNCONFIRMED": "❔"}
WORD = {
    "SUCCESS": "succeeded",
    "FAIL": "failed",
    "TIMED_OUT": "timed out",
    "UNCONFIRMED": "was not confirmed",
}

URLS = {
    "slack": "https://hooks.slack.com/services/T024BE7LD/B08QZ1KJ2MN/xoxbSecretTokenAbCdEf123456",
    "teams": (
        "https://prod-12.westeurope.logic.azure.com:443/workflows/5a4b3c2d1e0f4a9b8c7d6e5f4a3b2c1d"
        "/triggers/manual/paths/invoke?api-version=2016-06-01&sp=%2Ftriggers%2Fmanual%2Frun&sv=1.0"
        "&sig=Qx7vN2mK9pL4rT8wZ1yB3cD5eF6gH0jA2sUiOp9KlMn"
    ),
    "discord": (
        "https://discord.com/api/webhooks/1234567890123456789/"
        "AbCdEfGhIjKlMnOpQrStUvWxYz0123456789-_AbCdEfGhIjKlMnOpQrStUvWxYz012345"
    ),
    "googlechat": (
        "https://chat.googleapis.com/v1/spaces/AAAAb3XyZ12/messages"
        "?key=AIzaSyDdI0hCZtE6vySjMm-WEfRq3CPzqKqqsHI&token=q9Xk2LmN4pR7sT1vW3yZ5bD8fH0jK6nP-QrStUv%3D"
    ),
    "mattermost": "https://chat.example.com/hooks/xj8h3b6mpfbo7q5n3k1w9e4r2c",
    "rocketchat": "https://rocket.example.com/hooks/6FtXJ9bQZq3KmW2pC/NvT8sLq4Rz7Yw2Xc5Vb9Nm1Kj3Hg6Fd8Sa0Pq4Wr7Ty2Ui5O",
    "feishu": "https://open.feishu.cn/open-apis/bot/v2/hook/0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0",
    "dingtalk": "https://oapi.dingtalk.com/robot/send?access_token=4e8b7c6d5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d9c8b7a6f5e4d3c2b1a0f9e8d",
    "wecom": "https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=693a91f6-7c2e-4b5d-9a8f-1e2d3c4b5a69",
    "standard": "https://hooks.example.com/wholeimage/acme7Hq2Lx9Pz4Ty8?tenant=acme-Kp3Lq8Wz",
}
# The credential parts of each URL: none may reach a log line or a delivery detail.
URL_SECRETS = {
    "slack": ["T024BE7LD", "B08QZ1KJ2MN", "xoxbSecretTokenAbCdEf123456"],
    "teams": ["5a4b3c2d1e0f4a9b8c7d6e5f4a3b2c1d", "Qx7vN2mK9pL4rT8wZ1yB3cD5eF6gH0jA2sUiOp9KlMn"],
    "discord": [
        "1234567890123456789",
        "AbCdEfGhIjKlMnOpQrStUvWxYz0123456789-_AbCdEfGhIjKlMnOpQrStUvWxYz012345",
    ],
    "googlechat": [
        "AAAAb3XyZ12",
        "AIzaSyDdI0hCZtE6vySjMm-WEfRq3CPzqKqqsHI",
        "q9Xk2LmN4pR7sT1vW3yZ5bD8fH0jK6nP-QrStUv",
    ],
    "mattermost": ["xj8h3b6mpfbo7q5n3k1w9e4r2c"],
    "rocketchat": ["6FtXJ9bQZq3KmW2pC", "NvT8sLq4Rz7Yw2Xc5Vb9Nm1Kj3Hg6Fd8Sa0Pq4Wr7Ty2Ui5O"],
    "feishu": ["0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"],
    "dingtalk": ["4e8b7c6d5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d9c8b7a6f5e4d3c2b1a0f9e8d"],
    "wecom": ["693a91f6-7c2e-4b5d-9a8f-1e2d3c4b5a69"],
    "standard": ["acme7Hq2Lx9Pz4Ty8", "acme-Kp3Lq8Wz"],
}
FEISHU_SECRET = "xR7mK2pQ9vL4tW8zN3bC"
DINGTALK_SECRET = "SEC3f1e2d3c4b5a69788796a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4"
WHSEC = "whsec_" + base64.b64encode(bytes(range(7, 39))).decode()

END = datetime(2026, 11, 27, 9, 30, tzinfo=UTC)
NOW = END + timedelta(seconds=20)
REQUEST_ID = "9f1c2d3e4b5a69788796a5b4c3d2e1f0"
IMAGE_ID = "7a1e0b52-28c9-4e4b-9b62-ef6b4a3b8a1d"
JOB_ID = "ff8080814dbd65d7014dc1c8b6ac00fa"
SOURCE_ID = "877a2cda-ba63-4e1e-b95f-e67e48b6129a"
CONSOLE = console_url("huaweicloud", "cn-north-4")
HOSTILE = (
    "<script>alert(1)</script> @everyone <!channel> <@123> "
    "[click](https://evil.example) **bold** `code`"
)


def make_result(status: str = "SUCCESS", **changes: Any) -> JobResult:
    request_id = changes.pop("request_id", REQUEST_ID)
    values: dict[str, Any] = {
        "key": notification_key(request_id, status),
        "request_id": request_id,
        "job_id": JOB_ID,
        "status": status,
        "image_name": "web01-full",
        "image_id": IMAGE_ID if status == "SUCCESS" else None,
        "source_kind": "ecs",
        "source_id": SOURCE_ID,
        "requested_by": "alice@example.com",
        "error_code": "IMS.0001" if status == "FAIL" else None,
        "fail_reason": {
            "FAIL": "The ECS is not stopped.",
            "TIMED_OUT": "no verdict before the deadline",
            "UNCONFIRMED": "IMS lists no image tagged wholeimage_request=…",
        }.get(status),
        "submitted_at": END - timedelta(seconds=754),
        "ended_at": END,
        "console_url": CONSOLE,
        "region": "cn-north-4",
    }
    values.update(changes)
    return JobResult(**values)


def make_channel(format: str, **changes: Any) -> Channel:
    values: dict[str, Any] = {
        "name": f"ops-{format}",
        "format": format,
        "url": SecretStr(URLS[format]),
        "secret": SecretStr(WHSEC) if format == "standard" else None,
    }
    values.update(changes)
    return Channel(**values)


def render(
    format: str, results: list[JobResult], now: datetime = NOW, **channel: Any
) -> OutgoingMessage:
    return CHANNEL_TARGETS[format].render(results, make_channel(format, **channel), now)


def body_of(message: OutgoingMessage) -> Any:
    return json.loads(message.body)


def strings(value: Any) -> Iterator[str]:
    """Every string inside a JSON value, keys excluded."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings(item)


def text_of(message: OutgoingMessage) -> str:
    return "\n".join(strings(body_of(message)))


def card_of(body: dict[str, Any]) -> dict[str, Any]:
    """The Adaptive Card of a Teams message."""
    (attachment,) = body["attachments"]
    assert attachment["contentType"] == "application/vnd.microsoft.card.adaptive"
    return attachment["content"]  # type: ignore[no-any-return]


def send(
    format: str, message: OutgoingMessage, answer: Callable[[httpx.Request], httpx.Response]
) -> tuple[Delivery, httpx.Request]:
    """POST ``message`` as the delivery loop would, to a service answering with ``answer``."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return answer(request)

    with httpx.Client(transport=httpx.MockTransport(handler)) as client:
        response = client.post(message.url, content=message.body, headers=message.headers)
    return CHANNEL_TARGETS[format].classify(response), seen[0]


def answering(status: int, **response: Any) -> Callable[[httpx.Request], httpx.Response]:
    return lambda request: httpx.Response(status, **response)


# --- the registry -------------------------------------------------------------------------------


def test_the_format_list_settings_read_is_the_registrys_list_of_targets():
    # Settings validates formats from channels.formats without loading the services.
    assert tuple(CHANNEL_TARGETS) == CHANNEL_FORMATS


def test_shared_channel_modules_never_import_a_service_and_services_not_each_other():
    package = Path(wholeimage.channels.__file__).parent
    services = {type(target).__module__.rsplit(".", 1)[-1] for target in CHANNEL_TARGETS.values()}
    for module in package.glob("*.py"):
        imported = {
            node.module.rsplit(".", 1)[-1]
            for node in ast.walk(ast.parse(module.read_text("utf-8")))
            if isinstance(node, ast.ImportFrom)
            and node.module is not None
            and node.module.startswith("wholeimage.channels.")
        }
        if module.stem != "registry":
            assert not imported & services, f"{module.name} imports {imported & services}"


def test_every_format_has_a_target_serving_it():
    assert sorted(CHANNEL_TARGETS) == sorted(FORMATS)
    for format, target in CHANNEL_TARGETS.items():
        assert target.format == format
        assert target_for(format) is target


def test_an_unknown_format_is_refused_naming_the_allowed_ones():
    with pytest.raises(ValueError, match="unknown notification format 'msteams'") as raised:
        target_for("msteams")

    for format in FORMATS:
        assert format in str(raised.value)


@pytest.mark.parametrize(
    ("format", "rate"),
    [
        ("slack", RateLimit(1.0, None)),
        ("discord", RateLimit(1.0, None)),
        ("googlechat", RateLimit(1.0, None)),
        ("teams", RateLimit(1.0, None)),
        ("mattermost", RateLimit(10.0, None)),
        ("rocketchat", RateLimit(None, 10.0)),
        ("feishu", RateLimit(5.0, 100.0)),
        ("dingtalk", RateLimit(None, 20.0)),
        ("wecom", RateLimit(None, 20.0)),
        ("standard", RateLimit(None, None)),
    ],
)
def test_each_target_states_the_services_documented_rate_limit(format, rate):
    assert CHANNEL_TARGETS[format].rate == rate


@pytest.mark.parametrize("format", FORMATS)
def test_rendering_nothing_is_refused(format):
    with pytest.raises(ValueError, match="empty"):
        render(format, [])


@pytest.mark.parametrize("status", STATUSES)
@pytest.mark.parametrize("format", FORMATS)
def test_every_message_is_compact_utf8_json_posted_with_the_json_content_type(format, status):
    message = render(format, [make_result(status, image_name="镜像-web01")])

    assert message.headers["Content-Type"] == "application/json; charset=utf-8"
    assert message.headers["User-Agent"]
    parsed = body_of(message)
    assert message.body == json.dumps(parsed, ensure_ascii=False, separators=(",", ":")).encode()
    assert "镜像-web01".encode() in message.body  # UTF-8, not \u escapes


def test_an_outgoing_message_never_shows_its_url_in_its_repr():
    message = render("slack", [make_result()])

    assert "xoxbSecretTokenAbCdEf123456" not in repr(message)
    assert redact_url(URLS["slack"]) in repr(message)


# --- the rules settings share with the targets ---------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "https://contoso.webhook.office.com/webhookb2/1234@5678/IncomingWebhook/abc/def",
        "https://outlook.office.com/webhook/1234@5678/IncomingWebhook/abc/def",
        "https://outlook.office365.com/webhook/1234@5678/IncomingWebhook/abc/def",
    ],
)
def test_settings_refuse_every_office_365_connector_form_with_the_teams_targets_pointer(
    monkeypatch, url
):
    # Given a retired connector URL, in the settings and in a channel an older configuration left
    monkeypatch.setenv("WHOLEIMAGE_WEBHOOK_URL", url)
    monkeypatch.setenv("WHOLEIMAGE_WEBHOOK_FORMAT", "teams")

    # When the settings are read, and when the Teams target would send to it
    with pytest.raises(ConfigurationError) as refused:
        load_settings().notification_channels()
    with pytest.raises(ValueError, match="Office 365 connector") as unsendable:
        render("teams", [make_result()], url=SecretStr(url))

    # Then both refuse it with the same pointer to a Teams Workflows webhook, and never show it
    assert OFFICE_CONNECTOR_RETIRED in refused.value.message
    assert OFFICE_CONNECTOR_RETIRED in str(unsendable.value)
    assert "Workflows" in OFFICE_CONNECTOR_RETIRED
    assert "WHOLEIMAGE_WEBHOOK_URL" in refused.value.message
    assert "IncomingWebhook/abc" not in refused.value.message
    assert "IncomingWebhook/abc" not in str(unsendable.value)


@pytest.mark.slow
def test_settings_and_results_load_no_service_module_and_no_httpx():
    # The create function loads settings and results; the services are the notifier's.
    program = (
        "import sys\n"
        "import wholeimage.results, wholeimage.settings\n"
        "print(sorted(m for m in sys.modules if m.startswith('wholeimage.channels.')))\n"
        "print('httpx' in sys.modules)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(wholeimage.channels.__file__).parents[2])}

    finished = subprocess.run(
        [sys.executable, "-c", program],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )

    assert finished.returncode == 0, finished.stderr
    loaded, httpx_loaded = finished.stdout.splitlines()
    light = ["wholeimage.channels.formats", "wholeimage.channels.sinks", "wholeimage.channels.urls"]
    assert loaded == repr(light)
    assert httpx_loaded == "False"


# --- single results: what every message says ---------------------------------------------------


def labelled(pairs: list[list[str]]) -> dict[str, str]:
    """``**Label**`` / ``*Label*`` and a value, with bold and code markup taken off."""
    return {label.strip("*"): value.strip("`") for label, value in pairs}


def markdown_facts(pattern: str, text: str) -> dict[str, str]:
    found = dict(re.findall(pattern, text, re.MULTILINE))
    found.pop("Reason", None)  # the reason is checked on its own
    return found


FACT_READERS: dict[str, Callable[[dict[str, Any]], dict[str, str]]] = {
    "slack": lambda body: labelled(
        [field["text"].split("\n", 1) for field in body["attachments"][0]["blocks"][1]["fields"]]
    ),
    "teams": lambda body: {
        fact["title"]: fact["value"] for fact in card_of(body)["body"][1]["facts"]
    },
    "discord": lambda body: labelled(
        [[f["name"], f["value"]] for f in body["embeds"][0]["fields"]]
    ),
    "googlechat": lambda body: {
        widget["decoratedText"]["topLabel"]: widget["decoratedText"]["text"]
        for widget in body["cardsV2"][0]["card"]["sections"][0]["widgets"]
        if "decoratedText" in widget
    },
    "mattermost": lambda body: labelled(
        [[f["title"], f["value"]] for f in body["attachments"][0]["fields"]]
    ),
    "rocketchat": lambda body: labelled(
        [[f["title"], f["value"]] for f in body["attachments"][0]["fields"]]
    ),
    "feishu": lambda body: labelled(
        [field["text"]["content"].split("\n", 1) for field in body["card"]["elements"][0]["fields"]]
    ),
    "dingtalk": lambda body: markdown_facts(r"^- \*\*(.+?):\*\* (.+)$", body["markdown"]["text"]),
    "wecom": lambda body: markdown_facts(r"^> (\w[\w ]*): (.+)$", body["markdown"]["content"]),
}


def facts_of(format: str, body: dict[str, Any]) -> dict[str, str]:
    """Label → value of a single-result message, with code markup taken off."""
    return FACT_READERS[format](body)


def expected_facts(status: str) -> dict[str, str]:
    facts = {
        "Image": "web01-full",
        "Source": f"ECS {SOURCE_ID}",
        "Requested by": "alice@example.com",
        "Verdict": f"{EMOJI[status]} {WORD[status]}",
    }
    if status == "SUCCESS":
        facts["Image ID"] = IMAGE_ID
    if status == "FAIL":
        facts["Error code"] = "IMS.0001"
    facts.update({"Duration": "12m 34s", "Region": "cn-north-4", "IMS job": JOB_ID})
    return facts


@pytest.mark.parametrize("status", STATUSES)
@pytest.mark.parametrize("format", CHAT_FORMATS)
def test_a_single_result_says_what_was_asked_who_asked_and_how_it_ended(format, status):
    body = body_of(render(format, [make_result(status)]))

    assert facts_of(format, body) == expected_facts(status)


@pytest.mark.parametrize("status", ["FAIL", "TIMED_OUT"])
@pytest.mark.parametrize("format", CHAT_FORMATS)
def test_a_failure_or_timeout_carries_its_reason(format, status):
    reason = make_result(status).fail_reason

    assert reason is not None
    assert reason in text_of(render(format, [make_result(status)]))


@pytest.mark.parametrize("format", CHAT_FORMATS)
def test_the_console_link_and_the_request_id_are_in_every_chat_message(format):
    text = text_of(render(format, [make_result("FAIL")]))

    assert CONSOLE is not None
    assert CONSOLE in text
    assert f"request {REQUEST_ID}" in text


@pytest.mark.parametrize("format", CHAT_FORMATS)
def test_without_a_console_url_or_optional_facts_the_message_leaves_them_out(format):
    result = make_result(
        "TIMED_OUT",
        console_url=None,
        requested_by=None,
        region=None,
        job_id=None,
        submitted_at=None,
        fail_reason=None,
    )

    text = text_of(render(format, [result]))

    assert "console" not in text.lower()
    assert "Requested by" not in text
    assert "Duration" not in text


@pytest.mark.parametrize(
    ("seconds", "shown"), [(45, "45s"), (754, "12m 34s"), (7384, "2h 03m 04s"), (60, "1m 00s")]
)
def test_durations_are_written_in_hours_minutes_and_seconds(seconds, shown):
    result = make_result(submitted_at=END - timedelta(seconds=seconds))

    assert facts_of("discord", body_of(render("discord", [result])))["Duration"] == shown


LOOKS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "slack": lambda body: body["attachments"][0]["color"],
    "teams": lambda body: card_of(body)["body"][0]["style"],
    "discord": lambda body: body["embeds"][0]["color"],
    "googlechat": lambda body: re.search(
        r'<font color="(#\w+)">',
        body["cardsV2"][0]["card"]["sections"][0]["widgets"][0]["textParagraph"]["text"],
    ).group(1),  # type: ignore[union-attr]
    "mattermost": lambda body: body["attachments"][0]["color"],
    "rocketchat": lambda body: body["attachments"][0]["color"],
    "feishu": lambda body: body["card"]["header"]["template"],
    "dingtalk": lambda body: body["markdown"]["text"].split("\n")[0].split()[1],
    "wecom": lambda body: re.search(r'<font color="(\w+)">', body["markdown"]["content"]).group(1),  # type: ignore[union-attr]
}
EXPECTED_LOOKS = {
    "SUCCESS": {
        "slack": "#2EB67D",
        "teams": "good",
        "discord": 3066993,
        "googlechat": "#2EB67D",
        "mattermost": "#2EB67D",
        "rocketchat": "#2EB67D",
        "feishu": "green",
        "dingtalk": "✅",
        "wecom": "info",
    },
    "FAIL": {
        "slack": "#E01E5A",
        "teams": "attention",
        "discord": 15158332,
        "googlechat": "#E01E5A",
        "mattermost": "#E01E5A",
        "rocketchat": "#E01E5A",
        "feishu": "red",
        "dingtalk": "❌",
        "wecom": "warning",
    },
    "TIMED_OUT": {
        "slack": "#ECB22E",
        "teams": "warning",
        "discord": 15965202,
        "googlechat": "#ECB22E",
        "mattermost": "#ECB22E",
        "rocketchat": "#ECB22E",
        "feishu": "orange",
        "dingtalk": "⏱",
        "wecom": "comment",
    },
    "UNCONFIRMED": {
        "slack": "#ECB22E",
        "teams": "warning",
        "discord": 15965202,
        "googlechat": "#ECB22E",
        "mattermost": "#ECB22E",
        "rocketchat": "#ECB22E",
        "feishu": "orange",
        "dingtalk": "❔",
        "wecom": "comment",
    },
}


@pytest.mark.parametrize("status", STATUSES)
@pytest.mark.parametrize("format", CHAT_FORMATS)
def test_each_verdict_has_its_colour_or_sign(format, status):
    body = body_of(render(format, [make_result(status)]))

    assert LOOKS[format](body) == EXPECTED_LOOKS[status][format]


# --- single results: each service's own shape ---------------------------------------------------


@pytest.mark.parametrize("status", STATUSES)
def test_slack_wraps_block_kit_in_a_coloured_attachment_with_a_text_fallback(status):
    body = body_of(render("slack", [make_result(status)]))

    (attachment,) = body["attachments"]
    blocks = attachment["blocks"]
    title = f"{EMOJI[status]} Image web01-full {WORD[status]}"
    assert body["text"].startswith(title)
    assert blocks[0] == {
        "type": "header",
        "text": {"type": "plain_text", "text": title, "emoji": True},
    }
    assert blocks[1]["type"] == "section"
    assert all(field["type"] == "mrkdwn" for field in blocks[1]["fields"])
    assert blocks[-2]["text"]["text"] == f"<{CONSOLE}|Open the image list in the console>"
    assert blocks[-1]["type"] == "context"
    assert "blocks" not in body  # the blocks live in the attachment, which carries the colour


def test_slack_fallback_text_names_the_image_id_or_the_error_code():
    assert (
        body_of(render("slack", [make_result()]))["text"]
        == f"✅ Image web01-full succeeded (image {IMAGE_ID})"
    )
    assert (
        body_of(render("slack", [make_result("FAIL")]))["text"]
        == "❌ Image web01-full failed: IMS.0001"
    )
    assert (
        body_of(render("slack", [make_result("TIMED_OUT")]))["text"]
        == "⏱ Image web01-full timed out after 12m 34s"
    )


@pytest.mark.parametrize("status", STATUSES)
def test_teams_posts_a_workflows_message_with_an_adaptive_card(status):
    body = body_of(render("teams", [make_result(status)]))

    assert body["type"] == "message"
    card = card_of(body)
    assert card["type"] == "AdaptiveCard"
    assert card["version"] in ("1.4", "1.5")
    assert body["attachments"][0]["contentUrl"] is None
    banner, facts = card["body"][0], card["body"][1]
    assert banner["type"] == "Container"
    assert banner["items"][0]["text"] == f"{EMOJI[status]} Image web01-full {WORD[status]}"
    assert facts["type"] == "FactSet"
    assert card["actions"] == [
        {"type": "Action.OpenUrl", "title": "Open the image list in the console", "url": CONSOLE}
    ]


def test_teams_leaves_out_the_console_action_when_the_console_is_unknown():
    card = card_of(body_of(render("teams", [make_result(console_url=None)])))

    assert "actions" not in card


@pytest.mark.parametrize("status", STATUSES)
def test_discord_sends_one_coloured_embed_with_mentions_disabled(status):
    message = render("discord", [make_result(status)])

    body = body_of(message)
    (embed,) = body["embeds"]
    assert body["allowed_mentions"] == {"parse": []}
    assert embed["title"] == f"{EMOJI[status]} Image web01-full {WORD[status]}"
    assert embed["timestamp"] == "2026-11-27T09:30:00Z"
    assert embed["url"] == CONSOLE
    assert all(field["inline"] is True for field in embed["fields"])
    assert message.headers["User-Agent"].startswith("DiscordBot (")


def test_discord_asks_to_wait_so_that_a_failed_post_is_reported():
    message = render("discord", [make_result()])

    assert message.url == URLS["discord"] + "?wait=true"


def test_discord_keeps_a_thread_id_already_in_the_url():
    url = URLS["discord"] + "?thread_id=998877665544332211"

    message = render("discord", [make_result()], url=SecretStr(url))

    assert parse_qs(urlsplit(message.url).query) == {
        "thread_id": ["998877665544332211"],
        "wait": ["true"],
    }


def test_discord_cuts_a_huge_reason_to_the_embed_limits():
    result = make_result("FAIL", fail_reason="disk full " * 2000, image_name="n" * 128)

    (embed,) = body_of(render("discord", [result]))["embeds"]

    assert discord_problems(body_of(render("discord", [result]))) == []
    assert embed["description"].endswith("…")


@pytest.mark.parametrize("status", STATUSES)
def test_google_chat_sends_a_card_in_the_jobs_own_thread(status):
    body = body_of(render("googlechat", [make_result(status)]))

    (card,) = body["cardsV2"]
    assert card["cardId"] == notification_key(REQUEST_ID, status)
    assert card["card"]["header"]["title"] == f"{EMOJI[status]} Image web01-full {WORD[status]}"
    assert body["thread"] == {"threadKey": f"wholeimage-{REQUEST_ID}"}
    assert body["text"].startswith(f"{EMOJI[status]} Image web01-full")


def test_google_chat_threads_every_verdict_of_one_job_together_and_jobs_apart():
    first = body_of(render("googlechat", [make_result("TIMED_OUT")]))["thread"]
    again = body_of(render("googlechat", [make_result("SUCCESS")]))["thread"]
    other = body_of(
        render("googlechat", [make_result(request_id="0123456789abcdef0123456789abcdef")])
    )["thread"]

    assert first == again
    assert first != other


def test_google_chat_hashes_a_request_id_that_cannot_be_a_thread_key():
    odd = "request with spaces/and slashes"

    key = body_of(render("googlechat", [make_result(request_id=odd, key="wi_x_success")]))[
        "thread"
    ]["threadKey"]

    assert re.fullmatch(r"wholeimage-[0-9a-f]{32}", key)


def test_google_chat_replies_in_the_thread_without_losing_key_and_token():
    message = render("googlechat", [make_result()])

    query = parse_qs(urlsplit(message.url).query)
    assert query == {
        "key": ["AIzaSyDdI0hCZtE6vySjMm-WEfRq3CPzqKqqsHI"],
        "token": ["q9Xk2LmN4pR7sT1vW3yZ5bD8fH0jK6nP-QrStUv="],
        "messageReplyOption": ["REPLY_MESSAGE_FALLBACK_TO_NEW_THREAD"],
    }
    assert message.url.startswith(URLS["googlechat"] + "&")  # the original query, byte for byte


@pytest.mark.parametrize("format", ["mattermost", "rocketchat"])
@pytest.mark.parametrize("status", STATUSES)
def test_mattermost_and_rocket_chat_send_slack_style_attachments_without_blocks(format, status):
    body = body_of(render(format, [make_result(status)]))

    (attachment,) = body["attachments"]
    assert "blocks" not in body
    assert "blocks" not in attachment
    assert attachment["title"] == f"{EMOJI[status]} Image web01-full {WORD[status]}"
    assert attachment["title_link"] == CONSOLE
    assert all(field["short"] is True for field in attachment["fields"])
    assert body["text"].startswith(f"{EMOJI[status]} Image web01-full {WORD[status]}")


@pytest.mark.parametrize("status", STATUSES)
def test_feishu_sends_an_interactive_card_with_a_coloured_header(status):
    body = body_of(render("feishu", [make_result(status)]))

    assert body["msg_type"] == "interactive"
    card = body["card"]
    assert card["header"]["title"] == {
        "tag": "plain_text",
        "content": f"{EMOJI[status]} Image web01-full {WORD[status]}",
    }
    (button,) = card["elements"][-2]["actions"]
    assert button["url"] == CONSOLE
    assert "timestamp" not in body  # no secret, no signature
    assert "sign" not in body


def test_feishu_signs_the_body_when_the_channel_has_a_secret():
    message = render("feishu", [make_result()], secret=SecretStr(FEISHU_SECRET))

    body = body_of(message)
    timestamp = str(int(NOW.timestamp()))
    key = f"{timestamp}\n{FEISHU_SECRET}".encode()
    expected = base64.b64encode(hmac.new(key, b"", hashlib.sha256).digest()).decode()
    assert body["timestamp"] == timestamp
    assert body["sign"] == expected
    assert body["msg_type"] == "interactive"
    assert message.url == URLS["feishu"]


@pytest.mark.parametrize("status", STATUSES)
def test_dingtalk_sends_markdown_that_repeats_its_title_and_never_ats_everyone(status):
    body = body_of(render("dingtalk", [make_result(status)]))

    assert body["msgtype"] == "markdown"
    assert body["at"] == {"isAtAll": False}
    assert body["markdown"]["title"].startswith(f"{EMOJI[status]} Image web01-full {WORD[status]}")
    assert body["markdown"]["text"].startswith(
        f"### {EMOJI[status]} Image web01-full {WORD[status]}"
    )


def test_dingtalk_signs_in_the_query_encoded_once_and_keeps_the_access_token():
    # Given a robot with a signing secret
    message = render("dingtalk", [make_result()], secret=SecretStr(DINGTALK_SECRET))

    # When the message is sent
    delivery, request = send(
        "dingtalk", message, answering(200, json={"errcode": 0, "errmsg": "ok"})
    )

    # Then the URL carries the token, the millisecond timestamp and the signature, encoded once
    timestamp = str(int(NOW.timestamp() * 1000))
    digest = hmac.new(
        DINGTALK_SECRET.encode(), f"{timestamp}\n{DINGTALK_SECRET}".encode(), hashlib.sha256
    ).digest()
    sign = base64.b64encode(digest).decode()
    assert parse_qs(urlsplit(message.url).query) == {
        "access_token": [URL_SECRETS["dingtalk"][0]],
        "timestamp": [timestamp],
        "sign": [sign],
    }
    assert f"sign={quote(sign, safe='')}" in message.url
    assert "%25" not in message.url
    assert request.url.params["sign"] == sign
    assert request.url.params["access_token"] == URL_SECRETS["dingtalk"][0]
    assert delivery.outcome == "delivered"


def test_dingtalk_without_a_secret_posts_to_the_url_as_configured():
    assert render("dingtalk", [make_result()]).url == URLS["dingtalk"]


@pytest.mark.parametrize("status", STATUSES)
def test_wecom_sends_markdown_with_the_verdict_in_font_colour(status):
    body = body_of(render("wecom", [make_result(status)]))

    assert body["msgtype"] == "markdown"
    content = body["markdown"]["content"]
    colour = EXPECTED_LOOKS[status]["wecom"]
    assert content.startswith(
        f'**{EMOJI[status]} Image web01-full <font color="{colour}">{WORD[status]}</font>**'
    )
    assert len(content.encode()) <= 4096


def test_wecom_stays_within_4096_bytes_with_the_longest_texts():
    result = make_result(
        "FAIL",
        image_name="镜" * 128,
        fail_reason="错误" * 3000,
        requested_by="用" * 256,
        error_code="E" * 128,
    )

    content = body_of(render("wecom", [result], keyword="【IMS】"))["markdown"]["content"]

    assert len(content.encode()) <= 4096
    assert content.startswith("【IMS】 ")


# --- keyword robots -----------------------------------------------------------------------------

KEYWORD = "[IMS]"


def keyword_texts(format: str, body: dict[str, Any]) -> list[str]:
    """The texts a keyword robot checks, as this target fills them."""
    if format == "feishu":
        return [body["card"]["header"]["title"]["content"]]
    if format == "dingtalk":
        return [body["markdown"]["title"], body["markdown"]["text"].removeprefix("### ")]
    return [body["markdown"]["content"]]


@pytest.mark.parametrize("several", [False, True], ids=["single", "digest"])
@pytest.mark.parametrize("format", ["feishu", "dingtalk", "wecom"])
def test_keyword_robots_get_the_keyword_verbatim_in_front_of_the_text(format, several):
    results = [make_result("FAIL")] + ([make_result(request_id="0" * 32)] if several else [])

    body = body_of(render(format, results, keyword=KEYWORD))

    for text in keyword_texts(format, body):
        assert text.startswith(KEYWORD + " ")


@pytest.mark.parametrize(
    "format", ["slack", "teams", "discord", "googlechat", "mattermost", "rocketchat"]
)
def test_services_without_keyword_checks_ignore_the_keyword(format):
    assert KEYWORD not in text_of(render(format, [make_result()], keyword=KEYWORD))


# --- escaping -----------------------------------------------------------------------------------

# What must not reach each service as markup: tags, mentions, links, emphasis.
ACTIVE = [
    "<script>",
    "@everyone",
    "@here",
    "<!channel>",
    "<@123>",
    "[click](",
    "**bold**",
    "<b>mallory",
]
SLACK_ACTIVE = ["<script>", "@everyone", "@here", "<!channel>", "<@123>", "<b>mallory"]


def hostile_result() -> JobResult:
    return make_result(
        "FAIL", fail_reason=HOSTILE, requested_by="@here <b>mallory</b>", error_code="IMS.<i>1</i>"
    )


@pytest.mark.parametrize(
    "format", ["discord", "mattermost", "rocketchat", "feishu", "dingtalk", "wecom"]
)
def test_user_and_cloud_text_cannot_inject_markup_mentions_or_links(format):
    text = text_of(render(format, [hostile_result()]))

    for active in ACTIVE:
        assert active not in text
    assert "alert(1)" in text  # escaped, not dropped


def test_slack_escapes_ampersand_and_angle_brackets_in_mrkdwn():
    body = body_of(render("slack", [hostile_result()]))

    text = "\n".join(strings(body))
    for active in SLACK_ACTIVE:
        assert active not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "&lt;!channel&gt;" in text
    assert "`IMS.&lt;i&gt;1&lt;/i&gt;`" in text


def test_slack_escapes_an_ampersand_once():
    text = text_of(render("slack", [make_result("FAIL", fail_reason="R&D <team> & more")]))

    assert "R&amp;D &lt;team&gt; &amp; more" in text


def test_discord_backslash_escapes_markdown_and_disables_mentions():
    body = body_of(render("discord", [hostile_result()]))

    assert body["allowed_mentions"] == {"parse": []}
    assert "\\[click\\](https://evil.example)" in body["embeds"][0]["description"]
    assert "@\u200beveryone" in body["embeds"][0]["description"]


def test_google_chat_html_escapes_card_text_and_keeps_its_fallback_text_inert():
    body = body_of(render("googlechat", [hostile_result()]))

    card_text = "\n".join(strings(body["cardsV2"]))
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in card_text
    assert "&lt;b&gt;mallory&lt;/b&gt;" in card_text
    assert "<script>" not in card_text
    assert "<" not in body["text"]


def test_teams_escapes_markdown_and_shows_the_reason_as_literal_text():
    card = card_of(body_of(render("teams", [hostile_result()])))

    markdown = [card["body"][0]["items"][0]["text"], card["body"][-1]["text"]]
    markdown += [
        value for fact in card["body"][1]["facts"] for value in (fact["title"], fact["value"])
    ]
    for active in ACTIVE:
        assert all(active not in text for text in markdown)
    assert {"title": "Requested by", "value": "@\u200bhere \\<b\\>mallory\\</b\\>"} in card["body"][
        1
    ]["facts"]
    # A TextRun is never markdown, so the reason is shown exactly as IMS wrote it.
    reason = card["body"][2]
    assert reason["type"] == "RichTextBlock"
    assert reason["inlines"][1] == {"type": "TextRun", "text": HOSTILE}


def test_the_keyword_is_never_escaped_even_when_it_looks_like_markup():
    body = body_of(render("dingtalk", [hostile_result()], keyword="[告警]"))

    assert body["markdown"]["text"].startswith("### [告警] ")


def test_line_breaks_in_cloud_text_cannot_start_new_markdown_blocks():
    result = make_result("FAIL", fail_reason="first\n# heading\n> quote\n- item")

    text = body_of(render("dingtalk", [result]))["markdown"]["text"]

    assert "- **Reason:** first # heading \u203a quote - item" in text  # ">" defanged


# --- Teams against the Adaptive Card schema -------------------------------------------------------


@pytest.fixture(scope="module")
def adaptive_card_validator() -> Draft6Validator:
    schema = json.loads(ADAPTIVE_CARD_SCHEMA.read_text("utf-8"))
    Draft6Validator.check_schema(schema)
    return Draft6Validator(schema)


@pytest.mark.parametrize(
    "results",
    [
        pytest.param([make_result("SUCCESS")], id="success"),
        pytest.param([make_result("FAIL")], id="fail"),
        pytest.param([make_result("TIMED_OUT", console_url=None)], id="timed-out-without-console"),
        pytest.param([hostile_result()], id="hostile-text"),
        pytest.param(
            [make_result(s, request_id=f"{i:032x}") for i, s in enumerate(STATUSES * 50)],
            id="digest-150",
        ),
    ],
)
def test_the_teams_card_is_a_valid_adaptive_card_1_5(adaptive_card_validator, results):
    card = card_of(body_of(render("teams", results)))

    errors = [
        f"{error.json_path}: {error.message[:200]}"
        for error in adaptive_card_validator.iter_errors(card)
    ]
    assert errors == []


@pytest.mark.parametrize(
    "url",
    [
        "https://contoso.webhook.office.com/webhookb2/1a2b3c4d@5e6f7a8b/IncomingWebhook/0123456789abcdef/9f8e7d6c",
        "https://outlook.office.com/webhook/1a2b3c4d@5e6f7a8b/IncomingWebhook/0123456789abcdef/9f8e7d6c",
        "https://outlook.office365.com/webhook/1a2b3c4d@5e6f7a8b/IncomingWebhook/0123456789abcdef/9f8e7d6c",
    ],
)
def test_teams_refuses_a_retired_office_365_connector_url_with_a_migration_hint(url):
    with pytest.raises(ValueError, match="Workflows") as raised:
        render("teams", [make_result()], url=SecretStr(url))

    assert "retired" in str(raised.value)
    assert "0123456789abcdef" not in str(raised.value)


def test_teams_accepts_a_power_platform_workflows_url():
    url = (
        "https://default0f1e2d3c4b5a.69.environment.api.powerplatform.com:443/powerautomate/automations"
        "/direct/workflows/5a4b3c2d1e0f4a9b/triggers/manual/paths/invoke?api-version=1&sp=%2Ftriggers%2Fmanual%2Frun&sv=1.0&sig=Zz9"
    )

    assert render("teams", [make_result()], url=SecretStr(url)).url == url


# --- digests ------------------------------------------------------------------------------------


def many_results(count: int, *, name_length: int = 48) -> list[JobResult]:
    """``count`` results: every third fails, every seventh times out; names img-NNN-… are unique."""
    results = []
    for index in range(count):
        status = "FAIL" if index % 3 == 0 else "TIMED_OUT" if index % 7 == 0 else "SUCCESS"
        name = f"img-{index:03d}-".ljust(name_length, "x")
        results.append(
            make_result(
                status,
                request_id=f"{index:032x}",
                image_name=name,
                image_id=f"{index:08x}-28c9-4e4b-9b62-ef6b4a3b8a1d"
                if status == "SUCCESS"
                else None,
                error_code="IMS.0254" if status == "FAIL" else None,
                ended_at=END - timedelta(seconds=index),
            )
        )
    return results


def slack_problems(body: dict[str, Any]) -> list[str]:
    blocks = body["attachments"][0]["blocks"]
    problems = [f"{len(blocks)} blocks"] if len(blocks) > 50 else []
    problems += [
        f"header of {len(b['text']['text'])}"
        for b in blocks
        if b["type"] == "header" and len(b["text"]["text"]) > 150
    ]
    problems += [
        f"section of {len(b['text']['text'])}"
        for b in blocks
        if b["type"] == "section" and "text" in b and len(b["text"]["text"]) > 3000
    ]
    for block in blocks:
        fields = block.get("fields", [])
        problems += [f"{len(fields)} fields"] if len(fields) > 10 else []
        problems += [f"field of {len(f['text'])}" for f in fields if len(f["text"]) > 2000]
    return problems


def discord_problems(body: dict[str, Any]) -> list[str]:
    problems = []
    total = 0
    for embed in body["embeds"]:
        sizes = {
            "title": (len(embed.get("title", "")), 256),
            "description": (len(embed.get("description", "")), 4096),
            "footer": (len(embed.get("footer", {}).get("text", "")), 2048),
            "fields": (len(embed.get("fields", [])), 25),
        }
        problems += [f"{name} of {size}" for name, (size, limit) in sizes.items() if size > limit]
        problems += [
            f"field value of {len(f['value'])}"
            for f in embed.get("fields", [])
            if len(f["value"]) > 1024
        ]
        total += sizes["title"][0] + sizes["description"][0] + sizes["footer"][0]
        total += sum(len(f["name"]) + len(f["value"]) for f in embed.get("fields", []))
    return problems + ([f"embeds total {total}"] if total > 6000 else [])


def size_problems(format: str, message: OutgoingMessage) -> list[str]:
    """Where ``message`` breaks the service's documented size limits."""
    body = body_of(message)
    size = len(message.body)
    checks: dict[str, Callable[[], list[str]]] = {
        "slack": lambda: slack_problems(body),
        "teams": lambda: [f"{size} bytes"] if size > 28_000 else [],
        "discord": lambda: discord_problems(body),
        "googlechat": lambda: [f"{size} bytes"] if size > 32_000 else [],
        "mattermost": lambda: (
            ["post too long"]
            if len(body["text"]) + len(body["attachments"][0].get("text", "")) > 16_383
            else []
        ),
        "rocketchat": lambda: (
            ["text too long"] if len(body["attachments"][0].get("text", "")) > 5000 else []
        ),
        "feishu": lambda: [f"{size} bytes"] if size > 20_000 else [],
        "dingtalk": lambda: [f"{size} bytes"] if size > 20_000 else [],
        "wecom": lambda: (
            ["content too long"] if len(body["markdown"]["content"].encode()) > 4096 else []
        ),
        "standard": list,  # the spec's 20 KB is advice; machine data is never cut
    }
    return checks[format]()


def listed(text: str, results: list[JobResult]) -> list[JobResult]:
    return [r for r in results if r.image_name[:8] in text]


def omitted_count(text: str) -> int:
    found = re.search(r"and (\d+) more jobs? not listed", text)
    return int(found.group(1)) if found else 0


@pytest.mark.parametrize("name_length", [48, 128], ids=["names-48", "names-128-clipped"])
@pytest.mark.parametrize("format", CHAT_FORMATS)
def test_a_digest_of_digest_limit_results_lists_every_job_within_the_size_limits(
    format, name_length
):
    results = many_results(CHANNEL_TARGETS[format].digest_limit, name_length=name_length)

    message = render(format, results)

    text = text_of(message)
    assert size_problems(format, message) == []
    assert listed(text, results) == results
    assert omitted_count(text) == 0


@pytest.mark.parametrize("name_length", [48, 128])
@pytest.mark.parametrize("format", CHAT_FORMATS)
def test_a_digest_of_250_results_stays_within_the_limits_and_counts_what_it_leaves_out(
    format, name_length
):
    results = many_results(250, name_length=name_length)

    message = render(format, results)

    text = text_of(message)
    shown = listed(text, results)
    assert size_problems(format, message) == []
    assert len(shown) + omitted_count(text) == 250
    in_text_order = [r.status for r in sorted(shown, key=lambda r: text.index(r.image_name[:8]))]
    assert in_text_order == sorted(in_text_order, key=["FAIL", "TIMED_OUT", "SUCCESS"].index)


@pytest.mark.parametrize("format", ["teams", "googlechat", "feishu", "dingtalk", "wecom"])
def test_a_digest_of_cjk_names_counts_bytes_not_characters(format):
    results = [
        make_result("SUCCESS", request_id=f"{i:032x}", image_name=f"{i:03d}" + "镜像" * 40)
        for i in range(CHANNEL_TARGETS[format].digest_limit * 2)
    ]

    message = render(format, results)

    text = text_of(message)
    assert size_problems(format, message) == []
    assert len([r for r in results if r.image_name[:5] in text]) + omitted_count(text) == len(
        results
    )


@pytest.mark.parametrize("format", CHAT_FORMATS)
def test_a_digest_counts_each_verdict_at_the_top_and_lists_failures_first(format):
    results = [
        make_result("SUCCESS", request_id="a" * 32, image_name="alpha-ok"),
        make_result("TIMED_OUT", request_id="b" * 32, image_name="bravo-late"),
        make_result("FAIL", request_id="c" * 32, image_name="charlie-bad"),
        make_result("SUCCESS", request_id="d" * 32, image_name="delta-ok"),
    ]

    text = text_of(render(format, results))

    counts = "❌ 4 image jobs ended: 1 failed, 1 timed out, 2 succeeded"
    assert counts in text
    positions = [text.index(name) for name in ("charlie-bad", "bravo-late", "alpha-ok", "delta-ok")]
    assert text.index(counts) < positions[0]
    assert positions == sorted(positions)
    assert "IMS.0001" in text
    assert IMAGE_ID in text


def test_a_digest_is_coloured_by_its_worst_verdict():
    ok = make_result("SUCCESS")
    late = make_result("TIMED_OUT", request_id="b" * 32)
    bad = make_result("FAIL", request_id="c" * 32)

    assert body_of(render("slack", [ok, late]))["attachments"][0]["color"] == "#ECB22E"
    assert body_of(render("feishu", [ok, late, bad]))["card"]["header"]["template"] == "red"
    assert body_of(render("discord", [ok, ok]))["embeds"][0]["color"] == 3066993


def test_google_chat_digests_of_one_day_share_a_thread():
    results = many_results(3)

    assert body_of(render("googlechat", results))["thread"] == {
        "threadKey": "wholeimage-digest-2026-11-27"
    }


# --- what the services answer -------------------------------------------------------------------

CASES = [
    # Slack: 200 "ok" only; plain-text codes decide the rest.
    ("slack", 200, {"text": "ok"}, {}, "delivered", None),
    ("slack", 404, {"text": "no_service"}, {}, "permanent", None),
    ("slack", 404, {"text": "channel_not_found"}, {}, "permanent", None),
    ("slack", 410, {"text": "channel_is_archived"}, {}, "permanent", None),
    ("slack", 403, {"text": "invalid_token"}, {}, "permanent", None),
    ("slack", 403, {"text": "action_prohibited"}, {}, "permanent", None),
    ("slack", 400, {"text": "invalid_payload"}, {}, "permanent", None),
    ("slack", 500, {"text": "rollup_error"}, {}, "retry", None),
    ("slack", 429, {"text": ""}, {"Retry-After": "7"}, "retry", 7.0),
    ("slack", 503, {"text": "Service Unavailable"}, {}, "retry", None),
    ("slack", 200, {"text": "<html>captive portal</html>"}, {}, "permanent", None),
    # Teams Workflows: 202 (or 200) is accepted.
    ("teams", 202, {}, {}, "delivered", None),
    ("teams", 200, {}, {}, "delivered", None),
    ("teams", 429, {}, {"Retry-After": "30"}, "retry", 30.0),
    ("teams", 404, {"json": {"error": {"code": "WorkflowNotFound"}}}, {}, "permanent", None),
    ("teams", 401, {}, {}, "permanent", None),
    (
        "teams",
        409,
        {"json": {"error": {"code": "WorkflowTriggerIsNotEnabled"}}},
        {},
        "permanent",
        None,
    ),
    ("teams", 502, {}, {}, "retry", None),
    # Discord.
    ("discord", 200, {"json": {"id": "1", "type": 0}}, {}, "delivered", None),
    ("discord", 204, {}, {}, "delivered", None),
    (
        "discord",
        404,
        {"json": {"code": 10015, "message": "Unknown Webhook"}},
        {},
        "permanent",
        None,
    ),
    (
        "discord",
        400,
        {"json": {"code": 50035, "message": "Invalid Form Body"}},
        {},
        "permanent",
        None,
    ),
    (
        "discord",
        400,
        {"json": {"code": 50006, "message": "Cannot send an empty message"}},
        {},
        "permanent",
        None,
    ),
    (
        "discord",
        429,
        {"json": {"message": "You are being rate limited.", "retry_after": 1.5, "global": False}},
        {"Retry-After": "2"},
        "retry",
        1.5,
    ),
    ("discord", 429, {"text": ""}, {"Retry-After": "3"}, "retry", 3.0),
    ("discord", 429, {"text": ""}, {"X-RateLimit-Reset-After": "0.75"}, "retry", 0.75),
    ("discord", 500, {}, {}, "retry", None),
    # Google Chat.
    ("googlechat", 200, {"json": {"name": "spaces/AAAA/messages/x.y"}}, {}, "delivered", None),
    (
        "googlechat",
        429,
        {"json": {"error": {"code": 429, "message": "Quota", "status": "RESOURCE_EXHAUSTED"}}},
        {},
        "retry",
        None,
    ),
    (
        "googlechat",
        403,
        {
            "json": {
                "error": {
                    "code": 403,
                    "message": "The caller does not have permission",
                    "status": "PERMISSION_DENIED",
                }
            }
        },
        {},
        "permanent",
        None,
    ),
    (
        "googlechat",
        404,
        {"json": {"error": {"code": 404, "message": "Not found", "status": "NOT_FOUND"}}},
        {},
        "permanent",
        None,
    ),
    (
        "googlechat",
        400,
        {"json": {"error": {"code": 400, "message": "Invalid", "status": "INVALID_ARGUMENT"}}},
        {},
        "permanent",
        None,
    ),
    ("googlechat", 503, {}, {}, "retry", None),
    # Mattermost.
    ("mattermost", 200, {"text": "ok"}, {}, "delivered", None),
    (
        "mattermost",
        400,
        {
            "json": {
                "id": "web.incoming_webhook.parse.app_error",
                "message": "Unable to parse",
                "status_code": 400,
            }
        },
        {},
        "permanent",
        None,
    ),
    (
        "mattermost",
        404,
        {"json": {"id": "web.incoming_webhook.invalid.app_error", "status_code": 404}},
        {},
        "permanent",
        None,
    ),
    ("mattermost", 429, {"text": "limit"}, {"Retry-After": "1"}, "retry", 1.0),
    ("mattermost", 500, {}, {}, "retry", None),
    ("mattermost", 200, {"text": "something else"}, {}, "permanent", None),
    # Rocket.Chat.
    ("rocketchat", 200, {"json": {"success": True}}, {}, "delivered", None),
    (
        "rocketchat",
        404,
        {"json": {"success": False, "error": "Invalid integration id or token provided."}},
        {},
        "permanent",
        None,
    ),
    (
        "rocketchat",
        400,
        {"json": {"success": False, "error": "Unable to parse"}},
        {},
        "permanent",
        None,
    ),
    ("rocketchat", 200, {"json": {"success": False}}, {}, "permanent", None),
    (
        "rocketchat",
        429,
        {"json": {"success": False, "error": "Too many requests"}},
        {"Retry-After": "60"},
        "retry",
        60.0,
    ),
    ("rocketchat", 500, {}, {}, "retry", None),
    # Feishu: HTTP 200 with a non-zero code is a refusal.
    ("feishu", 200, {"json": {"code": 0, "msg": "success", "data": {}}}, {}, "delivered", None),
    ("feishu", 200, {"json": {"code": 11232, "msg": "frequency limited"}}, {}, "retry", None),
    ("feishu", 200, {"json": {"code": 9499, "msg": "Bad Request"}}, {}, "permanent", None),
    (
        "feishu",
        200,
        {"json": {"code": 19021, "msg": "sign match fail or timestamp is not within one hour"}},
        {},
        "permanent",
        None,
    ),
    ("feishu", 200, {"json": {"code": 19022, "msg": "Ip Not Allowed"}}, {}, "permanent", None),
    ("feishu", 200, {"json": {"code": 19024, "msg": "Key Words Not Found"}}, {}, "permanent", None),
    ("feishu", 200, {"text": "not json"}, {}, "permanent", None),
    ("feishu", 200, {"json": {"code": False}}, {}, "permanent", None),
    ("feishu", 429, {}, {"Retry-After": "5"}, "retry", 5.0),
    ("feishu", 500, {}, {}, "retry", None),
    # DingTalk.
    ("dingtalk", 200, {"json": {"errcode": 0, "errmsg": "ok"}}, {}, "delivered", None),
    (
        "dingtalk",
        200,
        {"json": {"errcode": 310000, "errmsg": "keywords not in content"}},
        {},
        "permanent",
        None,
    ),
    ("dingtalk", 200, {"json": {"errcode": 410100, "errmsg": "send too fast"}}, {}, "retry", 600.0),
    ("dingtalk", 200, {"json": {"errcode": 130101, "errmsg": "send too fast"}}, {}, "retry", 600.0),
    (
        "dingtalk",
        200,
        {"json": {"errcode": 300001, "errmsg": "token is not exist"}},
        {},
        "permanent",
        None,
    ),
    ("dingtalk", 502, {}, {}, "retry", None),
    # WeCom.
    ("wecom", 200, {"json": {"errcode": 0, "errmsg": "ok"}}, {}, "delivered", None),
    (
        "wecom",
        200,
        {"json": {"errcode": 93000, "errmsg": "invalid webhook url"}},
        {},
        "permanent",
        None,
    ),
    (
        "wecom",
        200,
        {"json": {"errcode": 45009, "errmsg": "api freq out of limit"}},
        {},
        "retry",
        60.0,
    ),
    ("wecom", 200, {"json": {"errcode": -1, "errmsg": "system busy"}}, {}, "retry", None),
    ("wecom", 503, {}, {}, "retry", None),
    # Standard Webhooks.
    ("standard", 200, {}, {}, "delivered", None),
    ("standard", 201, {"json": {"received": True}}, {}, "delivered", None),
    ("standard", 204, {}, {}, "delivered", None),
    ("standard", 410, {}, {}, "permanent", None),
    ("standard", 429, {}, {"Retry-After": "12"}, "retry", 12.0),
    ("standard", 502, {}, {"Retry-After": "4"}, "retry", 4.0),
    ("standard", 503, {}, {}, "retry", None),
    ("standard", 504, {}, {}, "retry", None),
    ("standard", 500, {}, {}, "retry", None),
    ("standard", 400, {}, {}, "permanent", None),
    ("standard", 401, {}, {}, "permanent", None),
    ("standard", 404, {}, {}, "permanent", None),
    ("standard", 301, {}, {"Location": "https://elsewhere.example/"}, "permanent", None),
    ("standard", 307, {}, {"Location": "https://elsewhere.example/"}, "permanent", None),
    ("standard", 408, {}, {}, "retry", None),
]


@pytest.mark.parametrize(
    ("format", "status", "content", "headers", "outcome", "retry_after"),
    [pytest.param(*case, id=f"{case[0]}-{case[1]}-{index}") for index, case in enumerate(CASES)],
)
def test_each_answer_of_each_service_is_classified(
    format, status, content, headers, outcome, retry_after
):
    message = render(format, [make_result("FAIL")])

    delivery, _ = send(format, message, answering(status, headers=headers, **content))

    assert delivery.outcome == outcome
    assert delivery.retry_after == retry_after
    assert delivery.detail


@pytest.mark.parametrize(
    ("format", "code"),
    [("feishu", 19024), ("dingtalk", 310000), ("wecom", 93000)],
)
def test_http_200_with_a_non_zero_code_is_never_delivered_and_the_detail_names_the_code(
    format, code
):
    field = "code" if format == "feishu" else "errcode"

    delivery, _ = send(
        format,
        render(format, [make_result()]),
        answering(200, json={field: code, "errmsg": "no", "msg": "no"}),
    )

    assert delivery.outcome != "delivered"
    assert str(code) in delivery.detail


def test_a_retry_after_given_as_an_http_date_becomes_seconds_from_now():
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=120), usegmt=True)

    delivery, _ = send(
        "teams", render("teams", [make_result()]), answering(429, headers={"Retry-After": later})
    )

    assert delivery.outcome == "retry"
    assert delivery.retry_after is not None
    assert 100 < delivery.retry_after <= 120


@pytest.mark.parametrize("value", ["soon", "-5", "nan"])
def test_a_retry_after_that_is_not_a_time_is_ignored_or_floored(value):
    delivery, _ = send(
        "slack", render("slack", [make_result()]), answering(429, headers={"Retry-After": value})
    )

    assert delivery.outcome == "retry"
    assert delivery.retry_after in (None, 0.0)


def test_a_response_without_a_request_is_still_classified():
    delivery = CHANNEL_TARGETS["slack"].classify(httpx.Response(404, text="no_service"))

    assert delivery.outcome == "permanent"
    assert "no_service" in delivery.detail


@pytest.mark.parametrize("status", [200, 400, 404, 429, 500])
@pytest.mark.parametrize("format", FORMATS)
def test_no_delivery_detail_contains_the_url_or_its_secrets_even_when_the_service_echoes_them(
    format, status
):
    message = render(
        format,
        [make_result()],
        secret=SecretStr(DINGTALK_SECRET) if format == "dingtalk" else make_channel(format).secret,
    )

    def echo(request: httpx.Request) -> httpx.Response:
        said = (
            f"bad request to {request.url} ({request.url.query.decode()}) path {request.url.path}"
        )
        field = "code" if format == "feishu" else "errcode"
        return httpx.Response(
            status,
            json={
                field: 9499 if format == "feishu" else 400102,
                "msg": said,
                "errmsg": said,
                "error": {"message": said},
                "message": said,
            },
        )

    delivery, request = send(format, message, echo)

    assert str(request.url) not in delivery.detail
    assert URLS[format] not in delivery.detail
    for secret in URL_SECRETS[format]:
        assert secret not in delivery.detail
    assert DINGTALK_SECRET not in delivery.detail


@pytest.mark.parametrize("format", FORMATS)
def test_a_long_answer_is_cut_to_a_short_detail(format):
    delivery, _ = send(format, render(format, [make_result()]), answering(400, text="x" * 5000))

    assert delivery.outcome == "permanent"
    assert len(delivery.detail) <= 320


# --- Standard Webhooks ----------------------------------------------------------------------------


@pytest.mark.parametrize("status", STATUSES)
def test_the_standard_event_of_one_result_is_its_job_result_under_a_typed_envelope(status):
    result = make_result(status)

    event = body_of(render("standard", [result]))

    validate(EVENT_SCHEMA, event)
    assert event == {
        "type": f"wholeimage.job.{ {'SUCCESS': 'succeeded', 'FAIL': 'failed', 'TIMED_OUT': 'timed_out', 'UNCONFIRMED': 'unconfirmed'}[status] }",
        "timestamp": "2026-11-27T09:30:00Z",
        "data": result.to_json(),
    }


def test_the_standard_target_sends_one_event_per_result_and_refuses_a_digest():
    # A digest's webhook-id would change with its composition on a resend: receivers could
    # not drop the repeats
    assert CHANNEL_TARGETS["standard"].digest_limit == 1

    with pytest.raises(ValueError, match="one event per result"):
        render("standard", many_results(2))


def test_a_standard_event_with_the_longest_fail_reason_stays_near_the_recommended_20_kb():
    result = make_result("FAIL", image_name="n" * 128, fail_reason="r" * 1000)

    assert len(render("standard", [result]).body) <= 20 * 1024


@pytest.mark.parametrize("status", STATUSES)
def test_the_standard_signature_verifies_with_the_standardwebhooks_library(status):
    # Given an attempt made now (the library allows five minutes of skew)
    now = datetime.now(UTC)
    message = CHANNEL_TARGETS["standard"].render(
        [make_result(status)], make_channel("standard"), now
    )

    # When the receiver verifies it with the reference library
    event = Webhook(WHSEC).verify(message.body, message.headers)

    # Then it is accepted and is exactly what was sent
    assert event == body_of(message)
    assert message.headers["webhook-timestamp"] == str(int(now.timestamp()))
    assert message.headers["webhook-signature"].startswith("v1,")


def test_a_tampered_standard_body_fails_verification():
    message = CHANNEL_TARGETS["standard"].render(
        [make_result()], make_channel("standard"), datetime.now(UTC)
    )

    with pytest.raises(WebhookVerificationError):
        Webhook(WHSEC).verify(message.body.replace(b"web01-full", b"web02-full"), message.headers)


def test_the_standard_webhook_id_is_the_notification_key_and_stays_across_retries():
    result = make_result("FAIL")

    first = render("standard", [result], now=NOW)
    retry = render("standard", [result], now=NOW + timedelta(minutes=2))

    assert first.headers["webhook-id"] == result.key == notification_key(REQUEST_ID, "FAIL")
    assert retry.headers["webhook-id"] == first.headers["webhook-id"]
    assert retry.body == first.body
    assert retry.headers["webhook-timestamp"] != first.headers["webhook-timestamp"]
    assert retry.headers["webhook-signature"] != first.headers["webhook-signature"]


def test_a_naive_now_is_taken_as_utc():
    aware = render("standard", [make_result()], now=NOW)
    naive = render("standard", [make_result()], now=NOW.replace(tzinfo=None))

    assert naive.headers == aware.headers


@pytest.mark.parametrize(
    "secret",
    [
        None,
        "",
        "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "whsec_not base64!",
        "whsec_" + base64.b64encode(b"short").decode(),
    ],
)
def test_the_standard_target_refuses_a_missing_or_malformed_secret_without_quoting_it(secret):
    channel = make_channel("standard", secret=SecretStr(secret) if secret is not None else None)

    with pytest.raises(ValueError, match="secret") as raised:
        CHANNEL_TARGETS["standard"].render([make_result()], channel, NOW)

    assert not secret or secret.removeprefix("whsec_") not in str(raised.value)


# --- the schemas ---------------------------------------------------------------------------------


@pytest.mark.parametrize("status", STATUSES)
def test_every_job_result_validates_against_its_schema(status):
    validate(JOB_RESULT_SCHEMA, make_result(status).to_json())
    validate(
        JOB_RESULT_SCHEMA,
        make_result(status, submitted_at=None, console_url=None, region=None).to_json(),
    )


def test_a_minimal_job_result_posted_to_notify_is_valid_and_reads_back():
    body = {
        "request_id": REQUEST_ID,
        "status": "FAIL",
        "image_name": "web01-full",
        "error_code": "IMS.0001",
        "ended_at": "2026-11-27T09:30:00Z",
    }

    validate(JOB_RESULT_SCHEMA, body)
    result = JobResult.from_json(body)
    assert result.key == notification_key(REQUEST_ID, "FAIL")
    assert result.ended_at == END


@pytest.mark.parametrize(
    ("change", "path"),
    [
        ({"colour": "red"}, "$.colour"),
        ({"status": "DONE"}, "$.status"),
        ({"ended_at": "27-Nov-2026 09:30:00"}, "$.ended_at"),
        ({"ended_at": "2026-11-27T09:30:00"}, "$.ended_at"),  # no offset
        ({"submitted_at": "2026-11-27T09:30:00Z\n"}, "$.submitted_at"),
        ({"console_url": "javascript:alert(1)"}, "$.console_url"),
        ({"request_id": "has.dot"}, "$.request_id"),
        ({"source": {"kind": "vm", "id": "x"}}, "$.source.kind"),
        ({"duration_s": -1}, "$.duration_s"),
    ],
)
def test_the_job_result_schema_refuses_unknown_fields_and_bad_values(change, path):
    body = {**make_result("FAIL").to_json(), **change}

    with pytest.raises(RequestInvalidError) as raised:
        validate(JOB_RESULT_SCHEMA, body)

    assert [detail["path"] for detail in raised.value.details] == [path]
    assert "does not match" not in raised.value.details[0]["message"]


def test_the_event_schema_refuses_a_type_that_contradicts_the_results_status():
    event = body_of(render("standard", [make_result("FAIL")]))
    event["type"] = "wholeimage.job.succeeded"

    with pytest.raises(RequestInvalidError) as raised:
        validate(EVENT_SCHEMA, event)

    assert [detail["path"] for detail in raised.value.details] == ["$.data.status"]


def test_the_event_schema_refuses_a_digest_of_a_single_result():
    # The schema still describes digests, which the standard target no longer sends
    one = make_result("FAIL")
    event = {
        "type": "wholeimage.jobs.digest",
        "timestamp": "2026-11-27T09:30:00Z",
        "data": {"counts": {"SUCCESS": 0, "FAIL": 1, "TIMED_OUT": 0}, "results": [one.to_json()]},
    }

    with pytest.raises(RequestInvalidError):
        validate(EVENT_SCHEMA, event)


# --- redaction -----------------------------------------------------------------------------------

REDACTED_PREFIXES = {
    "slack": "https://hooks.slack.com/services/…",
    "teams": "https://prod-12.westeurope.logic.azure.com/workflows/…",
    "discord": "https://discord.com/api/…",
    "googlechat": "https://chat.googleapis.com/v1/…",
    "mattermost": "https://chat.example.com/hooks/…",
    "rocketchat": "https://rocket.example.com/hooks/…",
    "feishu": "https://open.feishu.cn/open-apis/…",
    "dingtalk": "https://oapi.dingtalk.com/robot/…",
    "wecom": "https://qyapi.weixin.qq.com/cgi-bin/…",
    "standard": "https://hooks.example.com/wholeimage/…",
}


@pytest.mark.parametrize("format", FORMATS)
def test_a_redacted_url_keeps_host_and_first_segment_and_a_fingerprint_but_no_token(format):
    url = URLS[format]

    shown = redact_url(url)

    assert shown == f"{REDACTED_PREFIXES[format]}#{hashlib.sha256(url.encode()).hexdigest()[:8]}"
    for secret in URL_SECRETS[format]:
        assert secret not in shown
    for name in ("key=", "token", "sig", "access_token"):
        assert name not in shown


def test_a_signed_dingtalk_url_redacts_like_any_other():
    message = render("dingtalk", [make_result()], secret=SecretStr(DINGTALK_SECRET))

    assert "sign" not in redact_url(message.url)
    assert "timestamp" not in redact_url(message.url)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://example.com/AbC123xyz987TOKENtoken", "https://example.com/…"),
        ("https://user:hunter2pass@example.com/hook", "https://example.com/hook"),
        ("https://example.com", "https://example.com"),
        ("not a url", "…"),
    ],
)
def test_a_token_like_first_segment_user_info_and_odd_urls_are_never_shown(url, shown):
    assert redact_url(url) == f"{shown}#{hashlib.sha256(url.encode()).hexdigest()[:8]}"


def test_two_urls_of_one_service_have_different_fingerprints():
    other = URLS["slack"].replace("xoxb", "yoyb")

    assert redact_url(URLS["slack"]) != redact_url(other)
    assert redact_url(URLS["slack"]).split("#")[0] == redact_url(other).split("#")[0]
