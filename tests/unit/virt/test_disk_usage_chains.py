"""Which files stand behind each disk, as a domain definition tells it."""

from __future__ import annotations

import pytest

from vmsnapgui.virt.disk_usage import ChainLayer, DiskChain, disk_chains, is_local_uri

RUNNING_XML = """
<domain type='kvm' id='7'>
  <name>web</name>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/images/web.s2' index='3'/>
      <backingStore type='file' index='2'>
        <format type='qcow2'/>
        <source file='/images/web.s1'/>
        <backingStore type='file' index='1'>
          <format type='raw'/>
          <source file='/images/web.img'/>
          <backingStore/>
        </backingStore>
      </backingStore>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='file' device='cdrom'>
      <driver name='qemu' type='raw'/>
      <source file='/iso/debian.iso'/>
      <target dev='sda' bus='sata'/>
    </disk>
    <disk type='block' device='disk'>
      <driver name='qemu' type='raw'/>
      <source dev='/dev/vg/data'/>
      <target dev='vdb' bus='virtio'/>
    </disk>
    <disk type='network' device='disk'>
      <driver name='qemu' type='raw'/>
      <source protocol='rbd' name='pool/image'/>
      <target dev='vdc' bus='virtio'/>
    </disk>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <target dev='vdd' bus='virtio'/>
    </disk>
  </devices>
</domain>
"""

INACTIVE_XML = """
<domain type='kvm'>
  <name>web</name>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/images/web.s1'/>
      <backingStore type='file'>
        <format type='qcow2'/>
        <source file='/images/web.qcow2'/>
      </backingStore>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/images/data.qcow2'/>
      <target dev='vdb' bus='virtio'/>
    </disk>
  </devices>
</domain>
"""


def test_a_running_domain_lists_its_whole_chain_top_first_and_marks_its_end() -> None:
    chains = disk_chains(RUNNING_XML)
    assert chains[0] == DiskChain(
        "vda",
        (
            ChainLayer("/images/web.s2", "qcow2"),
            ChainLayer("/images/web.s1", "qcow2"),
            ChainLayer("/images/web.img", "raw"),
        ),
        complete=True,
    )


def test_cdroms_and_disks_without_a_source_hold_no_snapshots_and_are_left_out() -> None:
    assert [chain.target for chain in disk_chains(RUNNING_XML)] == ["vda", "vdb", "vdc"]


def test_block_devices_are_paths_and_network_sources_are_named_but_not_paths() -> None:
    by_target = {chain.target: chain for chain in disk_chains(RUNNING_XML)}
    assert by_target["vdb"].layers == (ChainLayer("/dev/vg/data", "raw", "block"),)
    network = by_target["vdc"].layers[0]
    assert network.path is None
    assert network.name == "rbd source pool/image"


def test_an_inactive_definition_may_stop_early_so_its_chain_is_not_complete() -> None:
    vda, vdb = disk_chains(INACTIVE_XML)
    assert vda.layers == (
        ChainLayer("/images/web.s1", "qcow2"),
        ChainLayer("/images/web.qcow2", "qcow2"),
    )
    assert vda.complete is False
    assert vdb.layers == (ChainLayer("/images/data.qcow2", "qcow2"),)
    assert vdb.complete is False


@pytest.mark.parametrize(
    ("uri", "local"),
    [
        ("qemu:///system", True),
        ("qemu:///session", True),
        ("qemu:///embed?root=/tmp/lab", True),
        ("test:///tmp/host.xml", True),
        ("qemu+ssh://root@localhost/system", True),
        ("qemu+tcp://127.0.0.1:16509/system", True),
        ("qemu+tcp://[::1]:16509/system", True),
        ("qemu+ssh://root@kvm1.example.org/system", False),
        ("qemu+tls://10.0.0.5/system", False),
    ],
)
def test_only_uris_without_a_host_or_with_a_loopback_host_are_local(uri: str, local: bool) -> None:
    assert is_local_uri(uri) is local
