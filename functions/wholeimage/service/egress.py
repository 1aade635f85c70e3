"""The egress port: how the process's outbound calls leave (docs/egress.md).

One per ``Dependencies``, read from the environment on first use: IMS, IAM, the poller and the
webhooks all take their proxies and CA from it, so no client can disagree with another.
"""

from __future__ import annotations

from wholeimage.bootstrap import Dependencies
from wholeimage.httputil import Egress


def egress(deps: Dependencies) -> Egress:
    """The proxies and the CA the environment names, kept with ``deps`` once read."""
    return deps.once("egress", Egress.from_environment)
