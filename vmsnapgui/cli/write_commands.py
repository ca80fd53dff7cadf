"""``vmsnap take | revert | delete | clone``: the write verbs.

Long work shows progress on a terminal; Ctrl+C cancels where the operation can be
cancelled (a memory snapshot to a file, a clone) and undoes what it did.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any, TypeVar

from vmsnapgui.cli.common import (
    EXIT_FAILURE,
    EXIT_OK,
    Session,
    print_json,
    printable,
    report_failure,
)
from vmsnapgui.core.errors import UserError
from vmsnapgui.core.progress import CancelToken, Progress
from vmsnapgui.core.quoting import quoted, shortened
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
    take.set_defaults(run=run_take, needs_write="taking a snapshot")

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
    revert.set_defaults(run=run_revert, needs_write="reverting to a snapshot")

    delete = commands.add_parser("delete", help="delete a snapshot")
    delete.add_argument("domain", metavar="DOMAIN")
    delete.add_argument("snapshot", metavar="SNAPSHOT")
    how = delete.add_mutually_exclusive_group()
    how.add_argument("--children", action="store_true", help="with all its children")
    how.add_argument("--children-only", action="store_true", help="only its children")
    how.add_argument("--metadata-only", action="store_true", help="forget it, keep its data")
    delete.add_argument("--yes", action="store_true", help="do not ask")
    delete.add_argument("--json", action="store_true")
    delete.set_defaults(run=run_delete, needs_write="deleting a snapshot")

    clone = commands.add_parser("clone", help="make a new VM from a snapshot")
    clone.add_argument("domain", metavar="DOMAIN")
    clone.add_argument("snapshot", metavar="SNAPSHOT", help=f"a snapshot, or {NOW} (VM shut off)")
    clone.add_argument("new_name", metavar="NEW_NAME")
    clone.add_argument("--linked", action="store_true", help="an overlay on the snapshot's image")
    clone.add_argument("--start", action="store_true", help="start the clone")
    clone.add_argument("--target-dir", metavar="DIR", help="where the clone's disks go")
    clone.add_argument("--json", action="store_true")
    clone.set_defaults(run=run_clone, needs_write="cloning a virtual machine")


# -- take -------------------------------------------------------------------------


def run_take(args: argparse.Namespace, session: Session) -> int:
    """``vmsnap take``."""
    from vmsnapgui.core.validation import ValidationError
    from vmsnapgui.virt.take_snapshot import (
        SnapshotMode,
        TakeRequest,
        TakeResult,
        take_options,
        take_snapshot,
    )

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

    def show(result: TakeResult) -> None:
        if args.json:
            print_json(
                {
                    "domain": args.domain,
                    "snapshot": result.name,
                    "mode": result.mode.value,
                    "files": list(result.files),
                    "note": result.note,
                }
            )
        else:
            print(
                f"Took snapshot {quoted(result.name)} of {shortened(args.domain)} "
                f"({result.mode.label})."
            )
            if result.note:
                print(printable(result.note))

    return run_operation(
        lambda progress, cancel: take_snapshot(
            session.loader, args.domain, request, progress, cancel
        ),
        show,
    )


# -- revert -----------------------------------------------------------------------


def run_revert(args: argparse.Namespace, session: Session) -> int:
    """``vmsnap revert``."""
    from vmsnapgui.virt.revert_snapshot import EndState, RevertResult, revert_snapshot

    end = EndState.RUNNING if args.running else EndState.PAUSED if args.paused else EndState.SAVED

    def show(result: RevertResult) -> None:
        if args.json:
            print_json(
                {
                    "domain": args.domain,
                    "reverted_to": result.reverted_to,
                    "safety_snapshot": result.safety_snapshot,
                    "note": result.note,
                }
            )
        else:
            print(f"Reverted {shortened(args.domain)} to {quoted(result.reverted_to)}.")
            if result.safety_snapshot:
                print(f"The state before is saved as snapshot {quoted(result.safety_snapshot)}.")
            if result.note:
                print(printable(result.note))

    return run_operation(
        lambda progress, cancel: revert_snapshot(
            session.loader,
            args.domain,
            args.snapshot,
            end_state=end,
            force=args.force,
            safety_snapshot=not args.no_safety_snapshot,
            progress=progress,
            cancel=cancel,
        ),
        show,
    )


# -- delete -----------------------------------------------------------------------


def run_delete(args: argparse.Namespace, session: Session) -> int:
    """``vmsnap delete``: shows what goes and asks first (unless --yes)."""
    from vmsnapgui.virt.delete_snapshot import (
        DeleteMode,
        DeletePlan,
        delete_snapshot,
        find_dependents,
        plan_delete,
    )
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
            f"The virtual machine {quoted(args.domain)} has no snapshot called "
            f"{quoted(args.snapshot)}."
        )
    usage = None
    try:
        from vmsnapgui.virt.disk_usage import measure

        usage = measure(session.loader, loaded)
    except Exception:  # sizes are a courtesy here; the delete does not depend on them
        usage = None
    dependents = find_dependents(
        session.loader, loaded.domain.name, loaded.tree, args.snapshot, mode
    )
    plan = plan_delete(
        loaded.tree, args.snapshot, mode, session.connection.capabilities, usage, dependents
    )
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
        if not _confirmed(f"Delete {len(plan.removes)} snapshot(s)? [y/N] "):
            print("Nothing was deleted.")
            return EXIT_FAILURE

    def show(done: DeletePlan) -> None:
        if args.json:
            print_json(
                {
                    "domain": args.domain,
                    "mode": mode.value,
                    "deleted": list(done.removes),
                    "removed_files": list(done.removed_files),
                }
            )
        else:
            names = ", ".join(quoted(n) for n in done.removes)
            print(f"Deleted {names} from {shortened(args.domain)}.")
            for path in done.removed_files:
                print(f"Removed the memory file {printable(path)}, which libvirt left behind.")

    return run_operation(
        lambda progress, cancel: delete_snapshot(
            session.loader, args.domain, args.snapshot, mode, progress
        ),
        show,
    )


def _confirmed(question: str) -> bool:
    """Ask on the terminal; Ctrl+C or Ctrl+D there means no."""
    try:
        answer = input(question)
    except (EOFError, KeyboardInterrupt):
        print()  # end the prompt's line
        return False
    return answer.strip().lower() in ("y", "yes")


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
    from vmsnapgui.virt.clone_domain import CloneRequest, CloneResult, clone_domain
    from vmsnapgui.virt.operations import snapshot_names

    if args.snapshot == NOW and NOW in snapshot_names(session.loader.lookup(args.domain)):
        # Made elsewhere (vmsnap refuses names starting with '@'): which one is meant?
        raise UserError(
            f"{quoted(args.domain)} has a snapshot called {NOW}, so {NOW} does not say "
            "whether to clone it or the VM as it is now; clone it from the window."
        )
    request = CloneRequest(
        new_name=args.new_name,
        snapshot=None if args.snapshot == NOW else args.snapshot,
        linked=args.linked,
        target_dir=args.target_dir,
        start=args.start,
    )

    def show(result: CloneResult) -> None:
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
                f"Made {'linked' if request.linked else 'full'} clone {quoted(result.name)} "
                f"of {shortened(args.domain)}{' and started it' if result.started else ''}."
            )

    return run_operation(
        lambda progress, cancel: clone_domain(
            session.loader, args.domain, request, progress, cancel
        ),
        show,
    )


# -- running an operation ---------------------------------------------------------

TOO_LATE = "Ctrl+C came too late to cancel; the operation finished."
Work = Callable[[Callable[[Progress], None], CancelToken], _T]


def run_operation(work: Work[_T], show: Callable[[_T], None]) -> int:
    """Run ``work`` on a thread with progress on a terminal; Ctrl+C cancels it.

    Ctrl+C, once or many times, at any moment, asks the operation to cancel and then
    waits for it to finish or undo what it did: the outcome is always one line on
    stderr (exit 1), or the result (exit 0, with a line saying Ctrl+C came too late).
    Afterwards Ctrl+C stays ignored: vmsnap only closes its connection and exits.
    """
    interrupts = _Interrupts()
    interrupts.install()
    try:
        try:
            result = _wait_for(work, interrupts)
        except UserError as exc:
            report_failure(exc.message)
            return EXIT_FAILURE
        if interrupts.count:
            report_failure(TOO_LATE)
        show(result)
        return EXIT_OK
    finally:
        interrupts.release()


class _Interrupts:
    """Ctrl+C counted by a signal handler instead of raised as KeyboardInterrupt.

    A KeyboardInterrupt lands wherever the main thread happens to be: inside
    ``Thread.join()`` (which then believes a running thread has ended), inside a
    ``finally`` or a print; the undo is then no longer waited for and the process exits
    with it half done. A handler that only counts cannot interrupt anything.
    """

    def __init__(self) -> None:
        self.count = 0
        self._installed = False

    def install(self) -> None:
        """Take over SIGINT (only the main thread can; elsewhere none arrives anyway)."""
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, self._on_interrupt)
            self._installed = True

    def _on_interrupt(self, signum: int, frame: FrameType | None) -> None:
        self.count += 1

    def release(self) -> None:
        """Ignore Ctrl+C from now on: once the operation has ended nothing is left to
        stop, and a press now must neither turn a reported success into "interrupted"
        nor kill the exiting interpreter (which resets Python handlers, not SIG_IGN)."""
        if self._installed:
            signal.signal(signal.SIGINT, signal.SIG_IGN)


def _wait_for(work: Work[_T], interrupts: _Interrupts) -> _T:
    cancel = CancelToken()
    show = sys.stderr.isatty()
    done = threading.Event()
    outcome: list[_T] = []
    failure: list[BaseException] = []

    def status(line: str) -> None:
        if show:
            sys.stderr.write("\r\x1b[K" + line)
            sys.stderr.flush()

    def report(progress: Progress) -> None:
        if cancel.cancelled:
            status(f"Cancelling, waiting for the operation to stop: {progress.phase}…")
            return
        line = progress.phase
        if progress.fraction is not None:
            line += f": {progress.fraction:.0%}"
            if progress.unit == "bytes" and progress.total:
                line += f" ({format_bytes(progress.done)} of {format_bytes(progress.total)})"
        if progress.can_cancel:
            line += "  [Ctrl+C cancels]"
        status(line)

    def target() -> None:
        # Ctrl+C is vmsnap's to interpret: this thread and every process it starts
        # (qemu-img inherits the blocked signal) must not die of the terminal's SIGINT,
        # which reaches the whole foreground process group before our cancel does.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            outcome.append(work(report, cancel))
        except BaseException as exc:  # handed to the main thread below
            failure.append(exc)
        finally:
            done.set()

    thread = threading.Thread(target=target, name="vmsnap-operation")
    thread.start()
    seen = 0
    while not done.wait(0.1):
        if interrupts.count != seen:
            seen = interrupts.count
            status("Cancelling, waiting for the operation to stop…")
            try:
                cancel.cancel()
            except Exception:  # an abort hook that failed: the operation decides the outcome
                pass
    thread.join()
    status("")
    if failure:
        raise failure[0]
    return outcome[0]
