"""The composition root: ports built once per process, and never a credential in a repr."""

from __future__ import annotations

from tests.fakes import make_settings
from wholeimage.bootstrap import Dependencies
from wholeimage.service.ports import ims_client, ims_connection
from wholeimage.store.sqlite import SqliteJobStore

PASSWORD = "iam-password-Hunter2"


def iam_dependencies(tmp_path) -> Dependencies:
    settings = make_settings(
        cloud="otc",
        region="eu-de",
        iam_user="ops",
        iam_password=PASSWORD,
        iam_domain="example",
    )
    return Dependencies(settings=settings, store=SqliteJobStore(str(tmp_path / "state.db")))


def test_each_port_is_built_once_and_shared(tmp_path):
    deps = iam_dependencies(tmp_path)

    connection = ims_connection(deps)

    assert ims_connection(deps) is connection
    assert ims_client(deps) is ims_client(deps)
    assert deps.connection is connection  # the client was built from the same connection


def test_no_repr_of_the_dependencies_shows_a_credential(tmp_path):
    deps = iam_dependencies(tmp_path)
    ims_client(deps)

    assert deps.connection is not None
    assert PASSWORD not in repr(deps)
    assert PASSWORD not in repr(deps.connection)
    assert PASSWORD not in repr(deps.settings)
