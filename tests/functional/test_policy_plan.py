"""``wholeimage policy plan``: the README's example output, and the command (docs/policies.md §5).

The README's "Policies" section shows ``examples/policy.json`` and the plan it gets after three
nights against the IMS emulator on a simulated clock; the first test makes that plan again and
compares it with the README, image ids aside (the emulator makes new ones each run). The others
run the command as a user does, against the emulator: it reads IMS's image list and writes
nothing, and its exit codes say what happened.
"""

from __future__ import annotations

import json
import os
import re
import socket
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest

from ims_emulator import EmulatorConfig, ImsEmulator
from tests.functional.test_policies_lifecycle import World, world  # noqa: F401 - the fixture
from tests.functional.test_policy_management import cli  # noqa: F401 - the fixture
from wholeimage.cli.output import EXIT_NOT_FOUND, EXIT_OK, EXIT_UNAVAILABLE, EXIT_USAGE
from wholeimage.cli.plan import plan_text
from wholeimage.policies import policy_from_document
from wholeimage.service.lifecycle import plan_policies

pytestmark = pytest.mark.usefixtures("store_kind")

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "policy.json"
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
AK, SK = EmulatorConfig().ak, EmulatorConfig().sk


def readme_plan() -> str:
    """The plan output block of the README's "Policies" section."""
    text = (ROOT / "README.md").read_text("utf-8")
    section = text[text.index("## Policies") :]
    match = re.search(r"policy plan nightly-web --slots 2\n```\n\n```text\n(.*?)```", section, re.S)
    assert match, "the README's Policies section has no plan output block"
    return match[1].rstrip("\n")


def anonymous(text: str) -> str:
    """``text`` with image ids replaced, as they differ from run to run."""
    return UUID.sub("<id>", text)


def test_the_readme_shows_the_plan_the_example_policy_gets(world: World) -> None:  # noqa: F811
    document = json.loads(EXAMPLE.read_text("utf-8"))
    policy = world.apply(document)
    slot = policy.next_slot_after(world.clock.now())
    for _ in range(3):
        world.day(slot)
        slot = policy.next_slot_after(slot)
    world.clock.set(slot - timedelta(hours=12))

    [plan] = plan_policies(world.deps, name="nightly-web", slots=2, now=world.clock.now())

    print(plan_text([plan]))  # with -s: the block the README shows
    assert anonymous(plan_text([plan])) == anonymous(readme_plan())
    # The example itself is what the README says it is.
    assert policy_from_document(document, cloud="otc").name == "nightly-web"


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def point_at(url: str) -> None:
    """The CLI's environment, as a user's shell has it (conftest puts it back after each test)."""
    os.environ["WHOLEIMAGE_IMS_ENDPOINT"] = url
    os.environ["WHOLEIMAGE_PROJECT_ID"] = EmulatorConfig().project_id
    os.environ["HUAWEICLOUD_SDK_AK"] = AK
    os.environ["HUAWEICLOUD_SDK_SK"] = SK


def test_plan_reads_ims_and_writes_nothing(
    cli: Callable[..., tuple[int, str, str]],  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    with ImsEmulator() as ims:
        point_at(ims.url)
        assert cli(capsys, "policy", "apply", str(EXAMPLE))[0] == EXIT_OK
        ims.add_image(
            "web-1-old",
            tags={
                "wholeimage_policy": "nightly-web",
                "wholeimage_source": "11111111-1111-4111-8111-111111111111",
            },
            created_at=ims.clock() - 86400 * 30,
        )

        code, out, _ = cli(capsys, "policy", "plan", "nightly-web", "--slots", "2", "--json")

        assert code == EXIT_OK
        [plan] = json.loads(out)["plans"]
        assert plan["name"] == "nightly-web"
        assert plan["images_read"] == 1
        assert [len(slot["creates"]) for slot in plan["slots"]] == [2, 2]
        # The 30-day-old image goes after the first slot: beyond max_age_days 14.
        assert [image["name"] for image in plan["slots"][0]["deletes"]] == ["web-1-old"]
        assert "max_age_days" in plan["slots"][0]["deletes"][0]["reason"]
        calls = ims.calls
        assert calls.get("images", 0) >= 1
        assert calls.get("create", 0) == 0
        assert calls.get("delete", 0) == 0

        code, out, _ = cli(capsys, "policy", "plan", "--slots", "1")
        assert code == EXIT_OK
        assert "policy nightly-web: active" in out
        assert "+ create web-1-" in out

        assert cli(capsys, "policy", "plan", "no-such-policy")[0] == EXIT_NOT_FOUND
        with pytest.raises(SystemExit) as refused:
            cli(capsys, "policy", "plan", "nightly-web", "--slots", "0")
        assert refused.value.code == EXIT_USAGE
        assert "--slots: must be 1 to 100" in capsys.readouterr().err


def test_plan_without_ims_shows_the_creates_and_exits_3(
    cli: Callable[..., tuple[int, str, str]],  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    point_at(closed_port_url())
    assert cli(capsys, "policy", "apply", str(EXAMPLE))[0] == EXIT_OK

    code, out, _ = cli(capsys, "policy", "plan", "nightly-web")

    assert code == EXIT_UNAVAILABLE
    assert "could not be read" in out
    assert out.count("+ create") == 3 * 2
