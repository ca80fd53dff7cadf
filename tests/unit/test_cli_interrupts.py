"""``vmsnap`` under Ctrl+C, closed pipes and odd arguments: one line, an honest exit status.

The operation wrapper is driven here with real SIGINTs sent to this process while a
stand-in operation runs on its thread; tests/integration/test_cli_interrupts.py does
the same to real ``vmsnap`` processes on real guests.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from vmsnapgui.cli import main, parse_arguments
from vmsnapgui.cli.write_commands import TOO_LATE, run_operation
from vmsnapgui.core.progress import Cancelled, CancelToken, Progress


@pytest.fixture(autouse=True)
def sigint_handler_restored() -> Iterator[None]:
    """After an operation vmsnap ignores Ctrl+C until it exits; pytest wants it back."""
    saved = signal.getsignal(signal.SIGINT)
    yield
    signal.signal(signal.SIGINT, saved)


def press_ctrl_c() -> None:
    """What a terminal does: SIGINT to the process (not to the calling thread)."""
    os.kill(os.getpid(), signal.SIGINT)


class StandIn:
    """An operation that runs until cancelled, then takes a while to undo its work."""

    def __init__(self, undo_seconds: float = 0.5, cancellable: bool = True) -> None:
        self.undo_seconds = undo_seconds
        self.cancellable = cancellable
        self.undone = False
        self.started = threading.Event()

    def __call__(self, progress: Callable[[Progress], None], cancel: CancelToken) -> str:
        progress(Progress("Copying", 0, 100, "bytes", self.cancellable))
        self.started.set()
        for _ in range(100):
            if self.cancellable and cancel.wait(0.05):
                time.sleep(self.undo_seconds)  # removing what it made
                self.undone = True
                raise Cancelled("Cancelled; the clone's files were removed.")
            if not self.cancellable:
                time.sleep(0.005)
        return "made"


def interrupt_when_started(work: StandIn, times: int = 1, gap: float = 0.0) -> None:
    def press() -> None:
        work.started.wait(5)
        for _ in range(times):
            press_ctrl_c()
            time.sleep(gap)

    threading.Thread(target=press, daemon=True).start()


def test_ctrl_c_cancels_waits_for_the_undo_and_says_so_in_one_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    work = StandIn()
    interrupt_when_started(work)
    code = run_operation(work, lambda result: print(result))
    out, err = capsys.readouterr()
    assert code == 1
    assert work.undone  # waited for the undo before returning
    assert out == ""
    assert err == "vmsnap: Cancelled; the clone's files were removed.\n"


def test_ctrl_c_again_during_the_undo_does_not_cut_it_short(
    capsys: pytest.CaptureFixture[str],
) -> None:
    work = StandIn(undo_seconds=0.8)
    interrupt_when_started(work, times=4, gap=0.15)  # three more while it undoes
    code = run_operation(work, lambda result: print(result))
    _, err = capsys.readouterr()
    assert code == 1 and work.undone
    assert err == "vmsnap: Cancelled; the clone's files were removed.\n"


def test_ctrl_c_that_comes_too_late_keeps_the_result_and_says_so(
    capsys: pytest.CaptureFixture[str],
) -> None:
    work = StandIn(cancellable=False)  # an internal snapshot, a delete: cannot stop
    interrupt_when_started(work, times=2, gap=0.05)
    code = run_operation(work, lambda result: print(result))
    out, err = capsys.readouterr()
    assert code == 0
    assert out == "made\n"
    assert err == f"vmsnap: {TOO_LATE}\n"


def test_ctrl_c_while_the_result_is_printed_changes_nothing(
    capsys: pytest.CaptureFixture[str],
) -> None:
    def show(result: str) -> None:
        press_ctrl_c()
        time.sleep(0.05)  # the handler runs here; a KeyboardInterrupt would escape
        print(result)

    code = run_operation(lambda progress, cancel: "made", show)
    out, err = capsys.readouterr()
    assert (code, out, err) == (0, "made\n", "")


def test_after_the_operation_ctrl_c_is_ignored_until_vmsnap_exits() -> None:
    # The exiting interpreter puts back the default action for Python handlers (a
    # late Ctrl+C would then kill it after its one line), but leaves SIG_IGN alone.
    assert run_operation(lambda progress, cancel: 1, lambda result: None) == 0
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN


def test_processes_the_operation_starts_do_not_die_of_the_terminals_ctrl_c() -> None:
    # The terminal sends SIGINT to the whole process group, children included; only
    # vmsnap's cancel may stop them (and then undo what they made).
    seen: list[str] = []

    def work(progress: Callable[[Progress], None], cancel: CancelToken) -> None:
        child = subprocess.Popen(["sleep", "30"])
        cancel.on_cancel(child.terminate)
        os.kill(child.pid, signal.SIGINT)  # the terminal's Ctrl+C, as the child gets it
        time.sleep(0.3)
        seen.append("alive" if child.poll() is None else f"died {child.returncode}")
        press_ctrl_c()
        child.wait(5)
        seen.append(f"stopped {child.returncode}")
        cancel.raise_if_cancelled()

    assert run_operation(work, lambda result: None) == 1
    assert seen == ["alive", f"stopped {-signal.SIGTERM}"]


# -- arguments ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "field", "value"),
    [
        (["take", "vm", "--", "--"], "name", "--"),
        (["take", "vm", "--"], "name", None),
        (["take", "--", "vm", "--"], "name", "--"),
        (["take", "vm", "--", "-x"], "name", "-x"),
        (["clone", "vm", "--", "--", "new"], "snapshot", "--"),
        (["clone", "vm", "--", "base", "--"], "new_name", "--"),
        (["revert", "vm", "--", "--"], "snapshot", "--"),
        # An option between the VM and the name (argparse before 3.12 dropped the name).
        (["take", "vm", "--memory", "none", "mine"], "name", "mine"),
        (["take", "vm", "--memory=none", "--", "--"], "name", "--"),
        (["take", "vm", "--disk-only", "--", "-x"], "name", "-x"),
    ],
)
def test_a_double_dash_after_the_separator_is_a_value(
    argv: list[str], field: str, value: str | None
) -> None:
    args = parse_arguments(argv)
    assert getattr(args, field) == value
    assert args.domain == "vm"


def test_too_many_words_after_the_separator_are_a_usage_error_naming_them() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "vmsnapgui", "take", "vm", "--", "--", "--"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.endswith("vmsnap: error: unrecognized arguments: --\n")


def test_take_with_a_name_of_two_dashes_takes_that_name(
    capsys: pytest.CaptureFixture[str], lab_uri: str
) -> None:
    code = main(["-c", lab_uri, "take", "web", "--", "--"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert out == "Took snapshot '--' of web (internal, with memory).\n"


# -- output and messages --------------------------------------------------------------


def test_a_reader_that_goes_away_ends_vmsnap_quietly(lab_uri: str) -> None:
    # ``vmsnap tree --json | head -c0``: the pipe is closed before vmsnap writes.
    process = subprocess.Popen(
        [sys.executable, "-m", "vmsnapgui", "-c", lab_uri, "tree", "web", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()
    with process.stderr:
        stderr = process.stderr.read().decode()
    assert process.wait(30) == 141
    assert stderr == ""


@pytest.mark.parametrize(
    ("argv", "doing"),
    [
        (["take", "web", "x"], "taking a snapshot"),
        (["revert", "web", "base"], "reverting to a snapshot"),
        (["delete", "web", "base", "--yes"], "deleting a snapshot"),
        (["clone", "web", "base", "web2"], "cloning a virtual machine"),
    ],
)
def test_write_verbs_on_a_read_only_connection_say_so(
    capsys: pytest.CaptureFixture[str], lab_uri: str, argv: list[str], doing: str
) -> None:
    code = main(["-c", lab_uri, "--read-only", *argv])
    out, err = capsys.readouterr()
    assert code == 1 and out == ""
    assert err == (
        f"vmsnap: The connection is read-only (--read-only); {doing} needs a read-write "
        "connection.\n"
    )


@pytest.mark.parametrize("verb", ["revert", "delete"])
def test_a_64_kib_snapshot_name_is_cut_in_the_message(
    capsys: pytest.CaptureFixture[str], lab_uri: str, verb: str
) -> None:
    code = main(["-c", lab_uri, verb, "web", "n" * 65536])
    _, err = capsys.readouterr()
    assert code == 1
    assert err == (
        f"vmsnap: The virtual machine 'web' has no snapshot called '{'n' * 60}…' (65536 bytes).\n"
    )
