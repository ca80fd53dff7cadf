"""Keeping the cyclic garbage collector's pauses short while hosts load.

CPython's full collection walks every container object with the GIL held, whichever
thread happens to trigger it. Twenty hosts of 25 VMs with 40 snapshots each are about
200,000 such objects (snapshots, disks, sizes): a full collection takes 100-150 ms, and
for that long no thread runs Python, the GUI thread included. While trees load the heap
keeps growing, and every time it has grown by a quarter the collector walks all of it
again.

Loaded trees and sizes stay as long as they are shown and hold no reference cycles (a
refresh replaces them and reference counting frees the old ones), so after data has
arrived the collector is told to leave what survives alone (``gc.freeze``): later
collections walk only what was made since. The young generations are collected first,
so fresh garbage is not frozen with the data. The price: a cycle of frozen objects that
becomes garbage later is never collected. Nothing the loading path keeps forms such
cycles; the rest (windows, connections) lives until the app quits anyway.

Once the app has started (:func:`start_up_done`) what it imported is frozen too, and the
collector no longer starts full collections by itself: one of 20-30 ms, walking what
the first hosts had just loaded, landed as the first VM was drawn. Young collections go
on as usual (they catch almost every cycle); full ones run when the window says it is
a quiet moment (:func:`collect_while_quiet`), so a cycle that survived into the old
generation waits at most until then.
"""

from __future__ import annotations

import gc
import time

# Freezing costs a collection of the young generations (a millisecond or two); loading
# data at full speed, once a second keeps the unfrozen part small.
FREEZE_INTERVAL_S = 1.0

_last_freeze = float("-inf")


def loaded_data_arrived() -> None:
    """Data that stays has arrived: freeze what survives (at most once a second)."""
    global _last_freeze
    now = time.monotonic()
    if now - _last_freeze < FREEZE_INTERVAL_S:
        return
    _last_freeze = now
    gc.collect(1)
    gc.freeze()


# The old generation's threshold once full collections are ours to start: never reached.
NO_AUTOMATIC_FULL_COLLECTIONS = 1_000_000_000


def start_up_done() -> None:
    """The app has started (modules, the window, the charts): freeze all of it.

    Tens of thousands of objects (modules, classes, functions, the window's widgets)
    that live until the app quits. From now on full collections happen only in
    :func:`collect_while_quiet`.
    """
    global _last_freeze
    _last_freeze = time.monotonic()
    gc.collect()
    gc.freeze()
    young, middle, _old = gc.get_threshold()
    gc.set_threshold(young, middle, NO_AUTOMATIC_FULL_COLLECTIONS)


def collect_while_quiet() -> None:
    """A full collection, now (call when nothing loads: it takes a few milliseconds)."""
    gc.collect()
