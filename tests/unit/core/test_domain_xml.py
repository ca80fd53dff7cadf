"""Rewriting a domain's saved definition after a lost delete (core/domain_xml.py)."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from vmsnapgui.core.domain_xml import without_chains_through

SAVED = """<domain type='kvm' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>web</name>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/vm/web-vda.e2.qcow2'/>
      <backingStore type='file'>
        <format type='qcow2'/>
        <source file='/vm/web-vda.e1.qcow2'/>
        <backingStore type='file'>
          <format type='qcow2'/>
          <source file='/vm/vda.qcow2'/>
        </backingStore>
      </backingStore>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='file' device='disk'>
      <source file='/vm/vdb.qcow2'/>
      <backingStore type='file'><source file='/vm/base-b.qcow2'/></backingStore>
      <target dev='vdb' bus='virtio'/>
    </disk>
  </devices>
  <qemu:commandline><qemu:arg value='-S'/></qemu:commandline>
</domain>"""


def test_a_disk_whose_chain_names_a_removed_file_reads_its_chain_from_the_images() -> None:
    fixed = ET.fromstring(without_chains_through(SAVED, {"/vm/web-vda.e1.qcow2"}))
    vda, vdb = fixed.findall("./devices/disk")
    assert vda.find("backingStore") is None
    assert vda.find("source").get("file") == "/vm/web-vda.e2.qcow2"  # type: ignore[union-attr]
    assert vdb.find("./backingStore/source").get("file") == "/vm/base-b.qcow2"  # type: ignore[union-attr]
    # libvirt finds its own namespace by URI: the element survives under any prefix.
    assert fixed.find("{http://libvirt.org/schemas/domain/qemu/1.0}commandline") is not None


def test_a_definition_that_names_no_removed_file_is_returned_as_it_was() -> None:
    assert without_chains_through(SAVED, {"/elsewhere/x.qcow2"}) is SAVED
