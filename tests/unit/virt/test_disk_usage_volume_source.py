"""Reading a storage volume in ranges: exact bytes, few and concurrent downloads."""

from __future__ import annotations

import threading
import time
from typing import Any

import libvirt
import pytest

from vmsnapgui.core.byte_source import BytesByteSource, ByteSource
from vmsnapgui.virt.volume_source import VolumeByteSource, VolumeReadError

DATA = bytes(range(256)) * 4096  # 1 MiB with a recognisable pattern


class FakeStream:
    """Stands in for a virStream: hands out the bytes a download asked for, in pieces."""

    def __init__(self, volume: FakeVolume) -> None:
        self.volume = volume
        self.pending = b""
        self.finished = False
        self.aborted = False
        volume.streams.append(self)

    def recv(self, nbytes: int) -> bytes:
        chunk, self.pending = self.pending[: min(nbytes, 1000)], self.pending[min(nbytes, 1000) :]
        return chunk

    def finish(self) -> None:
        time.sleep(self.volume.delay)  # a round trip, like the download call
        self.finished = True

    def abort(self) -> None:
        self.aborted = True


class FakeVolume:
    """Stands in for a virStorageVol: records every download and how many overlap."""

    def __init__(self, data: bytes, *, delay: float = 0.0, fail_at: int | None = None) -> None:
        self.data = data
        self.delay = delay
        self.fail_at = fail_at
        self.downloads: list[tuple[int, int]] = []
        self.streams: list[FakeStream] = []
        self.size_asked = 0
        self.lock = threading.Lock()
        self.in_flight = 0
        self.most_in_flight = 0

    def infoFlags(self, flags: int) -> list[int]:  # libvirt's name
        assert flags == libvirt.VIR_STORAGE_VOL_GET_PHYSICAL
        with self.lock:
            self.size_asked += 1
        return [0, 100 * len(self.data), len(self.data)]

    def download(self, stream: FakeStream, offset: int, length: int, flags: int) -> int:
        assert length > 0, "a length of 0 means 'to the end' to libvirt"
        if self.fail_at is not None and offset <= self.fail_at < offset + length:
            raise libvirt.libvirtError("internal error: cannot read the volume")
        with self.lock:
            self.downloads.append((offset, length))
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
        time.sleep(self.delay)
        with self.lock:
            self.in_flight -= 1
        stream.pending = self.data[offset : offset + length]
        return 0

    def key(self) -> str:
        return "/pool/disk.qcow2"


class FakeConnection:
    def __init__(self, volume: FakeVolume) -> None:
        self.volume = volume

    def newStream(self, flags: int) -> FakeStream:  # libvirt's name
        return FakeStream(self.volume)


def source_over(volume: FakeVolume, **options: Any) -> VolumeByteSource:
    return VolumeByteSource(FakeConnection(volume), volume, **options)


def test_it_is_a_byte_source_named_after_the_volume() -> None:
    source = source_over(FakeVolume(DATA))
    assert isinstance(source, ByteSource)
    assert source.describe() == "/pool/disk.qcow2"
    assert source_over(FakeVolume(DATA), path="/images/a.qcow2").describe() == "/images/a.qcow2"


def test_its_size_is_the_file_on_the_host_not_the_guest_disk() -> None:
    assert source_over(FakeVolume(DATA)).size() == len(DATA)


def test_reads_return_exactly_the_bytes_a_file_would_even_past_the_end() -> None:
    volume = FakeVolume(DATA)
    source = source_over(volume)
    reference = BytesByteSource(DATA)
    ranges = [(0, 4), (5000, 70000), (len(DATA) - 10, 100), (len(DATA) + 5, 10), (42, 0)]
    assert source.read_many(ranges) == reference.read_many(ranges)
    assert source.read(123, 4567) == reference.read(123, 4567)
    assert all(length > 0 for _, length in volume.downloads)


def test_neighbouring_ranges_are_fetched_in_one_download() -> None:
    volume = FakeVolume(DATA)
    source_over(volume).read_many([(0, 512), (65536, 512), (131072, 512)])
    assert volume.downloads == [(0, 131072 + 512)]


def test_distant_ranges_are_fetched_concurrently_within_the_thread_bound() -> None:
    data = DATA * 4
    volume = FakeVolume(data, delay=0.02)
    source = source_over(volume, max_threads=4)
    spaced = [(i * 400_000, 512) for i in range(8)]
    try:
        results = source.read_many(spaced)
    finally:
        source.close()
    assert results == BytesByteSource(data).read_many(spaced)
    assert sorted(volume.downloads) == spaced
    assert 2 <= volume.most_in_flight <= 4


def test_a_failed_download_is_one_sentence_and_says_the_connection_is_fine() -> None:
    volume = FakeVolume(DATA, fail_at=300000)
    with pytest.raises(VolumeReadError) as caught:
        source_over(volume, path="/pool/disk.qcow2").read(299000, 4096)
    assert caught.value.message == (
        "Failed reading /pool/disk.qcow2 through libvirt: cannot read the volume."
    )
    assert caught.value.connection_lost is False


def test_a_shared_thread_pool_is_left_running_for_its_owner() -> None:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:
        source = source_over(FakeVolume(DATA), executor=pool)
        source.read_many([(0, 10), (500000, 10)])
        source.close()
        assert pool.submit(lambda: 7).result() == 7


def test_every_stream_is_finished_by_the_time_the_source_is_closed() -> None:
    volume = FakeVolume(DATA, delay=0.01)
    source = source_over(volume)
    source.read_many([(i * 300_000, 100) for i in range(3)])
    source.read(5, 10)
    source.close()
    assert len(volume.streams) == 4
    assert all(stream.finished for stream in volume.streams)


def test_the_head_is_fetched_beside_the_size_and_serves_the_first_reads() -> None:
    volume = FakeVolume(DATA)
    with source_over(volume) as source:
        source.prefetch_head()
        assert source.size() == len(DATA)
        assert source.read(0, 65536) == DATA[:65536]
        assert source.read(100, 4) == DATA[100:104]
    assert volume.downloads == [(0, 65536)]
    assert volume.size_asked == 1


def test_a_head_prefetch_of_a_small_volume_reads_what_there_is() -> None:
    with source_over(FakeVolume(DATA[:1000])) as source:
        source.prefetch_head()
        assert source.read(0, 65536) == DATA[:1000]
