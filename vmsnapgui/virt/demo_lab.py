"""The demo lab: real tiny VMs with real snapshot trees, on libvirt's embedded QEMU driver.

``qemu:///embed?root=DIR`` runs the QEMU driver inside this process, so no daemon is
needed. The lab is built once under the user's data directory and reused; its guests
keep running after the process exits and are picked up when the lab is opened again.
Every size the app shows for it comes from data really written into its disks.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import libvirt

from vmsnapgui.core.domain_xml import DiskSpec, tiny_domain_xml
from vmsnapgui.core.errors import UserError
from vmsnapgui.core.snapshot import DiskKind, MemoryKind, SnapshotDisk
from vmsnapgui.core.snapshot_xml import snapshot_request_xml
from vmsnapgui.virt.event_loop import ensure_event_loop

_log = logging.getLogger(__name__)

LAB_VERSION = 1
MIB = 1024 * 1024
Progress = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class DemoLab:
    """Where the lab lives and how to connect to it."""

    root: Path

    @property
    def uri(self) -> str:
        """The embedded-driver URI for this lab."""
        return "qemu:///embed?root=" + quote(str(self.root), safe="/")

    @property
    def images(self) -> Path:
        """The folder holding the lab's disk images and memory files."""
        return self.root / "images"


def default_root() -> Path:
    """``$VMSNAP_DEMO_ROOT``, else ``$XDG_DATA_HOME/vmsnapgui/demo-lab``."""
    explicit = os.environ.get("VMSNAP_DEMO_ROOT")
    if explicit:
        return Path(explicit).expanduser().resolve()
    data_home = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
    return Path(data_home) / "vmsnapgui" / "demo-lab"


def ensure_demo_lab(
    root: Path | None = None, *, reset: bool = False, progress: Progress | None = None
) -> DemoLab:
    """The demo lab, built first when missing, incomplete or ``reset`` is asked for."""
    lab = DemoLab((root or default_root()).resolve())
    say = progress or (lambda message: None)
    marker = lab.root / "lab.json"
    if not reset and _marker_ok(marker):
        return lab
    _require_tools()
    ensure_event_loop()
    if lab.root.exists():
        say(f"removing the old demo lab in {lab.root}")
        _remove_lab(lab)
    say(f"building the demo lab in {lab.root} (about half a minute, once)")
    _prepare_root(lab)
    conn = _open(lab)
    try:
        _Builder(conn, lab, say).build()
    except libvirt.libvirtError as exc:
        raise UserError(
            f"Building the demo lab failed: {exc.get_error_message()}", detail=str(exc)
        ) from None
    finally:
        conn.close()
    marker.write_text(json.dumps({"version": LAB_VERSION, "built": int(time.time())}))
    say("demo lab ready")
    return lab


def _marker_ok(marker: Path) -> bool:
    try:
        return bool(json.loads(marker.read_text()).get("version") == LAB_VERSION)
    except (OSError, ValueError, AttributeError):
        return False


def _require_tools() -> None:
    missing = [
        tool for tool in ("qemu-system-x86_64", "qemu-img", "qemu-io") if not shutil.which(tool)
    ]
    if missing:
        raise UserError(
            "The demo lab needs QEMU, which is not installed (missing "
            + ", ".join(missing)
            + "): install the Debian packages qemu-system-x86 and qemu-utils."
        )


def _prepare_root(lab: DemoLab) -> None:
    (lab.root / "etc" / "qemu").mkdir(parents=True, exist_ok=True)
    lab.images.mkdir(parents=True, exist_ok=True)
    lines = ['stdio_handler = "file"']
    if os.geteuid() == 0:
        # As root the embedded driver would run QEMU as an unprivileged user that
        # cannot read a home directory; the lab's files are ours, so run as ourselves.
        lines += ['user = "root"', 'group = "root"']
    # The embedded driver reads ROOT/etc/qemu.conf.
    (lab.root / "etc" / "qemu.conf").write_text("\n".join(lines) + "\n")


def _open(lab: DemoLab) -> libvirt.virConnect:
    try:
        return libvirt.open(lab.uri)
    except libvirt.libvirtError as exc:
        message = exc.get_error_message() or str(exc)
        if "no connection driver" in message:
            raise UserError(
                "The demo lab needs libvirt's QEMU driver: install libvirt-daemon-driver-qemu.",
                detail=message,
            ) from None
        raise UserError(f"Could not open the demo lab: {message}", detail=message) from None


def remove_demo_lab(root: Path | None = None) -> None:
    """Stop the lab's guests, forget their definitions and delete every file of the lab."""
    ensure_event_loop()
    _remove_lab(DemoLab((root or default_root()).resolve()))


def _remove_lab(lab: DemoLab) -> None:
    if (lab.root / "etc").is_dir():
        try:
            conn = libvirt.open(lab.uri)
        except libvirt.libvirtError:
            conn = None
        if conn is not None:
            try:
                for dom in conn.listAllDomains(0):
                    try:
                        if dom.isActive():
                            dom.destroy()
                    except libvirt.libvirtError:
                        pass  # still being reattached; the sweep below stops it
                    try:
                        dom.undefineFlags(
                            libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
                            | libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
                        )
                    except libvirt.libvirtError:
                        pass
            finally:
                conn.close()
        _stop_lab_processes(lab)
    shutil.rmtree(lab.root, ignore_errors=True)


def _stop_lab_processes(lab: DemoLab) -> None:
    """Stop any QEMU of this lab that libvirt did not (its pid files name them)."""
    marker = str(lab.root).encode()
    pids = []
    for pidfile in (lab.root / "run" / "qemu").glob("*.pid"):
        if pidfile.name == "driver.pid":
            continue
        try:
            pid = int(pidfile.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            continue
        if b"qemu-system" in cmdline and marker in cmdline:
            pids.append(pid)
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 5
    while pids and time.monotonic() < deadline:
        pids = [pid for pid in pids if Path(f"/proc/{pid}").exists()]
        time.sleep(0.05)
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def _domain_type() -> str:
    # KVM when this user may open /dev/kvm (the embedded driver runs QEMU as us).
    return "kvm" if os.access("/dev/kvm", os.R_OK | os.W_OK) else "qemu"


class _Builder:
    """Builds the lab's VMs step by step, writing real data between snapshots."""

    def __init__(self, conn: libvirt.virConnect, lab: DemoLab, say: Progress) -> None:
        self.conn = conn
        self.lab = lab
        self.say = say
        self.domain_type = _domain_type()

    def build(self) -> None:
        self._web_frontend()
        self._database()
        self._build_box()
        self._scratch()

    # -- the VMs ----------------------------------------------------------------------

    def _web_frontend(self) -> None:
        """Shut off; internal disk snapshots with two branches."""
        self.say("demo lab: web-frontend (internal snapshots, branches, shut off)")
        image = self._image("web-frontend.qcow2", "1G")
        dom = self._define("web-frontend", [DiskSpec(str(image))], "Public web server")
        self._write_offline(image, 0x11, 0, 48 * MIB)
        self._snapshot(dom, "fresh-install", "Debian 12 minimal install")
        self._write_offline(image, 0x22, 64 * MIB, 16 * MIB)
        self._snapshot(dom, "nginx-installed", "apt install nginx; default site enabled")
        self._write_offline(image, 0x33, 128 * MIB, 8 * MIB)
        self._write_offline(image, 0x34, 0, 4 * MIB)
        self._snapshot(dom, "tls-configured", "Let's Encrypt certificates & HSTS")
        self._revert(dom, "nginx-installed")
        self._write_offline(image, 0x44, 256 * MIB, 24 * MIB)
        self._snapshot(dom, "php-experiment", "Tried php-fpm <8.2> — abandoned")
        self._write_offline(image, 0x45, 300 * MIB, 4 * MIB)
        self._snapshot(dom, "php-tuned", None)
        self._revert(dom, "tls-configured")
        self._write_offline(image, 0x55, 512 * MIB, 2 * MIB)

    def _database(self) -> None:
        """Running; internal snapshots with memory, one revert and a new branch."""
        self.say("demo lab: database (internal snapshots with memory, running)")
        image = self._image("database.qcow2", "2G")
        dom = self._define("database", [DiskSpec(str(image))], "PostgreSQL 15")
        dom.create()
        self._write_online(dom, 0x61, 0, 32 * MIB)
        self._snapshot(dom, "schema-v1", "Empty schema, version 1")
        self._write_online(dom, 0x62, 64 * MIB, 16 * MIB)
        self._snapshot(dom, "data-loaded", "Imported the 2024 customer data")
        self._write_online(dom, 0x63, 96 * MIB, 8 * MIB)
        self._snapshot(dom, "before-migration", "Right before the v2 schema migration")
        self._revert(dom, "data-loaded", libvirt.VIR_DOMAIN_SNAPSHOT_REVERT_RUNNING)
        self._write_online(dom, 0x64, 200 * MIB, 12 * MIB)
        self._snapshot(dom, "migration-retry", "Second attempt, with a smaller batch size")
        self._write_online(dom, 0x65, 300 * MIB, 1 * MIB)

    def _build_box(self) -> None:
        """Running; an external chain: disk-only, then with memory."""
        self.say("demo lab: build-box (external snapshots, running)")
        image = self._image("build-box.qcow2", "1G")
        dom = self._define("build-box", [DiskSpec(str(image))], "CI build runner")
        dom.create()
        self._write_online(dom, 0x71, 0, 24 * MIB)
        self._external_snapshot(dom, "deps-installed", "Toolchain and dependencies", memory=False)
        self._write_online(dom, 0x72, 32 * MIB, 12 * MIB)
        self._external_snapshot(dom, "compiled", "First full build", memory=True)
        self._write_online(dom, 0x73, 64 * MIB, 6 * MIB)

    def _scratch(self) -> None:
        """Shut off, a raw disk and no snapshots (raw disks cannot hold internal ones)."""
        self.say("demo lab: scratch (raw disk, no snapshots, shut off)")
        image = self._image("scratch.img", "256M", fmt="raw")
        self._define("scratch", [DiskSpec(str(image), driver_type="raw")], "Throw-away VM")

    # -- steps ------------------------------------------------------------------------

    def _image(self, name: str, size: str, fmt: str = "qcow2") -> Path:
        path = self.lab.images / name
        _run(["qemu-img", "create", "-q", "-f", fmt, str(path), size])
        return path

    def _define(self, name: str, disks: list[DiskSpec], description: str) -> libvirt.virDomain:
        xml = tiny_domain_xml(
            name, disks, memory_mib=64, domain_type=self.domain_type, description=description
        )
        return self.conn.defineXML(xml)

    def _snapshot(self, dom: libvirt.virDomain, name: str, description: str | None) -> None:
        dom.snapshotCreateXML(snapshot_request_xml(name, description), 0)

    def _external_snapshot(
        self, dom: libvirt.virDomain, name: str, description: str, *, memory: bool
    ) -> None:
        base = self.lab.images / f"{dom.name()}.{name}"
        disk = SnapshotDisk("vda", DiskKind.EXTERNAL, f"{base}.qcow2", "qcow2")
        if memory:
            xml = snapshot_request_xml(
                name,
                description,
                memory=MemoryKind.EXTERNAL,
                memory_file=f"{base}.mem",
                disks=(disk,),
            )
            flags = 0
        else:
            xml = snapshot_request_xml(name, description, memory=MemoryKind.NONE, disks=(disk,))
            flags = (
                libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_DISK_ONLY
                | libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_ATOMIC
            )
        dom.snapshotCreateXML(xml, flags)

    def _revert(self, dom: libvirt.virDomain, name: str, flags: int = 0) -> None:
        dom.revertToSnapshot(dom.snapshotLookupByName(name, 0), flags)

    def _write_offline(self, image: Path, pattern: int, offset: int, length: int) -> None:
        _run(
            ["qemu-io", "-f", "qcow2", "-c", f"write -P {pattern:#x} {offset} {length}", str(image)]
        )

    def _write_online(self, dom: libvirt.virDomain, pattern: int, offset: int, length: int) -> None:
        write_through_monitor(dom, pattern, offset, length)


def write_through_monitor(
    dom: libvirt.virDomain, pattern: int, offset: int, length: int, device: str = "virtio-disk0"
) -> None:
    """Write a byte pattern into a running guest's disk with QEMU's ``qemu-io`` monitor command.

    Needs no guest OS; the write goes through the device's block backend to the active
    layer, exactly as the guest's own writes would.
    """
    import libvirt_qemu

    backend = f"/machine/peripheral/{device}/virtio-backend"
    command = f'qemu-io -d {backend} "write -P {pattern:#x} {offset} {length}"'
    reply = libvirt_qemu.qemuMonitorCommand(
        dom, command, libvirt_qemu.VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP
    )
    if reply.strip():
        raise UserError(f"Writing test data into {dom.name()} failed: {reply.strip()}")


def _run(argv: list[str]) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise UserError(
            f"{argv[0]} failed while building the demo lab: "
            + (result.stderr.strip() or f"exit status {result.returncode}"),
            detail=" ".join(argv),
        )
