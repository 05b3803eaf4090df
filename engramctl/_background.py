"""The one background producer thread: iterate a slow iterator on a daemon thread, a few ahead.

Used by the corpus reader/tokenizer (:func:`engramctl.corpus.tokenize.tokenized_batches`) and the
row pager (:meth:`engramctl.model.serve.paging.RowSource.iterate`): the producer's work (reading and
tokenizing, hashing and gathering rows) overlaps the consumer's (counting, the model step).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def background_iter(items: Iterable[T], *, ahead: int = 1, name: str) -> Iterator[T]:
    """Yield the items of ``items``, produced on a daemon thread named ``name``.

    The thread runs at most ``ahead`` items ahead of the consumer (plus the one it is producing);
    an exception raised while producing is raised here, at the item where it happened. Closing
    the generator (or leaving a ``for`` loop early) stops the thread after its current item and
    waits for it, so nothing keeps running behind the caller's back.
    """
    ready: queue.Queue = queue.Queue(maxsize=max(1, ahead))
    stop = threading.Event()
    done = object()

    def produce():
        try:
            for item in items:
                if stop.is_set():
                    return
                ready.put(item)  # the consumer drains the queue when it stops early
            ready.put(done)
        except BaseException as exc:  # handed to the consumer, raised there
            ready.put(exc)

    thread = threading.Thread(target=produce, name=name, daemon=True)
    thread.start()
    try:
        while True:
            item = ready.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                ready.get(timeout=0.05)
            except queue.Empty:
                pass
        thread.join()
