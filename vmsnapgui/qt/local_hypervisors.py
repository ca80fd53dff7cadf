"""Finding a hypervisor on this computer when nothing is configured yet."""

from __future__ import annotations

from dataclasses import dataclass

from vmsnapgui.core.errors import UserError
from vmsnapgui.core.progress import CancelToken, ProgressCallback
from vmsnapgui.virt.connection import Connection

LOCAL_URIS = ("qemu:///system", "qemu:///session")


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """What trying the local hypervisors found: the first that answered, and why not."""

    uri: str | None
    failures: tuple[tuple[str, str], ...]


def probe_local_hypervisors(
    progress: ProgressCallback, cancel: CancelToken, uris: tuple[str, ...] = LOCAL_URIS
) -> ProbeResult:
    """Try each URI in turn (the system hypervisor first); the first that opens wins.

    Blocking: a job.
    """
    failures = []
    for uri in uris:
        cancel.raise_if_cancelled()
        connection = Connection(uri, reconnect=False)
        try:
            connection.open()
        except UserError as exc:
            failures.append((uri, exc.message))
            continue
        connection.close()
        return ProbeResult(uri, tuple(failures))
    return ProbeResult(None, tuple(failures))
