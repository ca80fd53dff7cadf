"""``vmsnap take | revert | delete | clone``: the write verbs.

Long work shows progress on a terminal; Ctrl+C cancels where the operation can be
cancelled (a memory snapshot to a file, a clone) and undoes what it did.
"""

from __future__ import annotations

import argparse
import sys
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from vmsnapgui.cli.common import EXIT_FAILURE, EXIT_OK, Session, print_json, printable
from vmsnapgui.core.progress import CancelToken, Progress
from vmsnapgui.core.units import format_bytes

_T = TypeVar("_T")
NOW = "@now"


def register(commands: Any) -> None:
    """Add the write verbs to the ``vmsnap`` parser."""
    take = commands.add_parser("take", help="take a snapshot")
    take.add_argument("domain", metavar="DOMAIN")
    take.add_argument("name", metavar="NAME", nargs="?", help="default: from the time")
    take.add_argument("--description", metavar="TEXT")
    take.add_argument(
        "--memory", choices=("internal", "external", "none"), help="where memory is saved"
    )
    take.add_argument("--disk-only", action="store_true", help="external, disks only")
    take.add_argument("--quiesce", action="store_true", help="freeze guest filesystems first")
    take.add_argument("--json", action="store_true")
    take.set_defaults(run=run_take)

    revert = commands.add_parser("revert", help="revert to a snapshot (a safety snapshot first)")
    revert.add_argument("domain", metavar="DOMAIN")
    revert.add_argument("snapshot", metavar="SNAPSHOT")
    end = revert.add_mutually_exclusive_group()
    end.add_argument("--running", action="store_true", help="end running")
    end.add_argument("--paused", action="store_true", help="end paused")
    revert.add_argument("--force", action="store_true", help="revert even where libvirt warns")
    revert.add_argument(
        "--no-safety-snapshot", action="store_true", help="do not save the current state first"
    )
    revert.add_argument("--json", action="store_true")
    revert.set_defaults(run=run_revert)

    delete = commands.add_parser("delete", help="delete a snapshot")
    delete.add_argument("domain", metavar="DOMAIN")
    delete.add_argument("snapshot", metavar="SNAPSHOT")
    how = delete.add_mutually_exclusive_group()
    how.add_argument("--children", action="store_true", help="with all its children")
    how.add_argument("--children-only", action="store_true", help="only its children")
    how.add_argument("--metadata-only", action="store_true", help="forget it, keep its data")
    delete.add_argument("--yes", action="store_true", help="do not ask")
    delete.add_argument("--json", action="store_true")
    delete.set_defaults(run=run_delete)

    clone = commands.add_parser("clone", help="make a new VM from a snapshot")
    clone.add_argument("domain", metavar="DOMAIN")
    clone.add_argument("snapshot", metavar="SNAPSHOT", help=f"a snapshot, or {NOW} (VM shut off)")
    clone.add_argument("new_name", metavar="NEW_NAME")
    clone.add_argument("--linked", action="store_true", help="an overlay on the snapshot's image")
    clone.add_argument("--start", action="store_true", help="start the clone")
    clone.add_argument("--target-dir", metavar="DIR", help="where the clone's disks go")
    clone.add_argument("--json", action="store_true")
    clone.set_defaults(run=run_clone)


# -- take -------------------------------------------------------------------------


def run_take(args: argparse.Namespace, session: Session) -> int:
    """``vmsnap take``."""
    from vmsnapgui.core.validation import ValidationError
    from vmsnapgui.virt.take_snapshot import SnapshotMode, TakeRequest, take_options, take_snapshot

    mode: SnapshotMode | None = None
    if args.disk_only:
        if args.memory not in (None, "none"):
            raise ValidationError("--disk-only saves no memory; leave out --memory.")
        mode = SnapshotMode.EXTERNAL_DISK
    elif args.memory == "internal":
        mode = SnapshotMode.INTERNAL_MEMORY
    elif args.memory == "external":
        mode = SnapshotMode.EXTERNAL_MEMORY
    elif args.memory == "none":
        options = take_options(session.loader, args.domain)
        mode = (
            SnapshotMode.INTERNAL_DISK
            if options.modes[SnapshotMode.INTERNAL_DISK].allowed
            else SnapshotMode.EXTERNAL_DISK
        )
    if args.quiesce and mode is None:
        mode = SnapshotMode.EXTERNAL_DISK
    request = TakeRequest(
        name=args.name, description=args.description, mode=mode, quiesce=args.quiesce
    )
    result = _with_progress(
        lambda progress, cancel: take_snapshot(
            session.loader, args.domain, request, progress, cancel
        )
    )
    if args.json:
        print_json(
            {
                "domain": args.domain,
                "snapshot": result.name,
                "mode": result.mode.value,
                "files": list(result.files),
            }
        )
    else:
        name, domain = printable(result.name), printable(args.domain)
        print(f"Took snapshot {name!r} of {domain} ({result.mode.label}).")
    return EXIT_OK


# -- revert -----------------------------------------------------------------------


def run_revert(args: argparse.Namespace, session: Session) -> int:
    """``vmsnap revert``."""
    from vmsnapgui.virt.revert_snapshot import EndState, revert_snapshot

    end = EndState.RUNNING if args.running else EndState.PAUSED if args.paused else EndState.SAVED
    result = _with_progress(
        lambda progress, cancel: revert_snapshot(
            session.loader,
            args.domain,
            args.snapshot,
            end_state=end,
            force=args.force,
            safety_snapshot=not args.no_safety_snapshot,
            progress=progress,
            cancel=cancel,
        )
    )
    if args.json:
        print_json(
            {
                "domain": args.domain,
                "reverted_to": result.reverted_to,
                "safety_snapshot": result.safety_snapshot,
            }
        )
    else:
        print(f"Reverted {printable(args.domain)} to {printable(result.reverted_to)!r}.")
        if result.safety_snapshot:
            print(f"The state before is saved as snapshot {printable(result.safety_snapshot)!r}.")
    return EXIT_OK


# -- delete -----------------------------------------------------------------------


def run_delete(args: argparse.Namespace, session: Session) -> int:
    """``vmsnap delete``: shows what goes and asks first (unless --yes)."""
    from vmsnapgui.virt.delete_snapshot import DeleteMode, delete_snapshot, plan_delete
    from vmsnapgui.virt.errors import VirtError

    mode = (
        DeleteMode.CHILDREN
        if args.children
        else DeleteMode.CHILDREN_ONLY
        if args.children_only
        else DeleteMode.METADATA_ONLY
        if args.metadata_only
        else DeleteMode.SNAPSHOT
    )
    loaded = session.loader.load(args.domain)
    if args.snapshot not in loaded.tree:
        raise VirtError(
            f"The virtual machine {args.domain!r} has no snapshot called {args.snapshot!r}."
        )
    usage = None
    try:
        from vmsnapgui.virt.disk_usage import measure

        usage = measure(session.loader, loaded)
    except Exception:  # sizes are a courtesy here; the delete does not depend on them
        usage = None
    plan = plan_delete(loaded.tree, args.snapshot, mode, session.connection.capabilities, usage)
    if not plan.allowed:
        raise VirtError(plan.refusal or "Cannot delete.")
    if not args.yes:
        if not sys.stdin.isatty():
            print(
                "vmsnap: refusing to delete without confirmation: run it on a terminal or "
                "pass --yes",
                file=sys.stderr,
            )
            return EXIT_FAILURE
        _describe_plan(plan)
        answer = input(f"Delete {len(plan.removes)} snapshot(s)? [y/N] ").strip().lower()
        if answer not in ("y", "yes"):
            print("Nothing was deleted.")
            return EXIT_FAILURE
    done = _with_progress(
        lambda progress, cancel: delete_snapshot(
            session.loader, args.domain, args.snapshot, mode, progress
        )
    )
    if args.json:
        print_json({"domain": args.domain, "mode": mode.value, "deleted": list(done.removes)})
    else:
        names = ", ".join(repr(printable(n)) for n in done.removes)
        print(f"Deleted {names} from {printable(args.domain)}.")
    return EXIT_OK


def _describe_plan(plan: Any) -> None:
    print("These snapshots will be deleted:")
    for name in plan.removes:
        print(f"  {printable(name)}")
    for line in plan.merges:
        print(f"Merge: {printable(line)}")
    for line in plan.warnings:
        print(f"Note: {printable(line)}")
    if plan.frees_bytes is not None:
        print(f"Space freed: about {format_bytes(plan.frees_bytes)}")


# -- clone ------------------------------------------------------------------------


def run_clone(args: argparse.Namespace, session: Session) -> int:
    """``vmsnap clone``."""
    from vmsnapgui.virt.clone_domain import CloneRequest, clone_domain

    request = CloneRequest(
        new_name=args.new_name,
        snapshot=None if args.snapshot == NOW else args.snapshot,
        linked=args.linked,
        target_dir=args.target_dir,
        start=args.start,
    )
    result = _with_progress(
        lambda progress, cancel: clone_domain(
            session.loader, args.domain, request, progress, cancel
        )
    )
    if args.json:
        print_json(
            {
                "domain": args.domain,
                "snapshot": request.snapshot,
                "clone": result.name,
                "uuid": result.uuid,
                "linked": request.linked,
                "files": list(result.files),
                "started": result.started,
            }
        )
    else:
        print(
            f"Made {'linked' if request.linked else 'full'} clone {printable(result.name)!r} "
            f"of {printable(args.domain)}{' and started it' if result.started else ''}."
        )
    return EXIT_OK


# -- progress ---------------------------------------------------------------------


def _with_progress(work: Callable[[Callable[[Progress], None], CancelToken], _T]) -> _T:
    """Run ``work`` on a thread; show progress on a terminal; Ctrl+C cancels it."""
    cancel = CancelToken()
    show = sys.stderr.isatty()
    outcome: list[_T] = []
    failure: list[BaseException] = []

    def report(progress: Progress) -> None:
        if not show:
            return
        line = progress.phase
        if progress.fraction is not None:
            line += f": {progress.fraction:.0%}"
            if progress.unit == "bytes" and progress.total:
                line += f" ({format_bytes(progress.done)} of {format_bytes(progress.total)})"
        if progress.can_cancel:
            line += "  [Ctrl+C cancels]"
        sys.stderr.write("\r\x1b[K" + line)
        sys.stderr.flush()

    def target() -> None:
        try:
            outcome.append(work(report, cancel))
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=target, name="vmsnap-operation")
    thread.start()
    while thread.is_alive():
        try:
            thread.join(0.2)
        except KeyboardInterrupt:
            if show:
                sys.stderr.write("\r\x1b[Kcancelling…")
            cancel.cancel()
    if show:
        sys.stderr.write("\r\x1b[K")
        sys.stderr.flush()
    if failure:
        raise failure[0]
    return outcome[0]
