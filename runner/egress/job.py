"""A job's egress, built from its plan entry when the job starts and dropped when it ends."""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from dataclasses import asdict
from typing import TYPE_CHECKING

from runner.egress.transport import Seam
from runner.plan import JobSpec

if TYPE_CHECKING:
    from runner.egress.client import Egress

__all__ = ["egress_for"]


def egress_for(
    job: JobSpec,
    seam: Seam | None,
    *,
    deadline: float,
    cancel: threading.Event | None = None,
    environ: Mapping[str, str] | None = None,
) -> Egress:
    """The job's :class:`Egress`: no ``network`` grants nothing (every request refused and recorded).

    Secret values are read from ``environ`` (the runner's environment) now, never from the plan.
    Called when the guest first calls out: the client (httptools, ssl) is imported only then.
    """
    from runner.egress.client import Bounds, Egress, Secret
    from runner.egress.rules import Grant

    network = job.network
    if network is None:
        return Egress(Grant.none(), seam=seam, deadline=deadline, cancel=cancel)
    allow = [entry if isinstance(entry, str) else asdict(entry) for entry in network.allow]
    env = os.environ if environ is None else environ
    secrets = [Secret.from_plan(asdict(ref), env) for ref in network.secrets]
    limits = network.limits
    bounds = Bounds(
        timeout_s=limits.timeout_ms / 1000,
        max_body=limits.body,
        max_requests=limits.requests,
        max_handles=limits.handles,
    )
    grant = Grant.from_plan(allow, network.block)
    return Egress(grant, seam=seam, secrets=secrets, bounds=bounds, deadline=deadline, cancel=cancel)
