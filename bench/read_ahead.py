"""Reading the next window in a thread while the current one is processed, for the pipeline benchmark.

GDAL decodes with the GIL released, so reading one window and blending the previous one
overlap on two cores. Whether that pays depends on the machine; ``pipeline_bench.py
--prefetch`` measures it.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Optional, Sequence


class ReadAhead:
    """A scene reader for ``stream_row_blocks`` that reads each window one step ahead.

    ``windows`` is the order the windows will be asked for (the plan's); only the worker
    thread touches ``reader`` while this object is open. Use it as a context manager.
    """

    def __init__(self, reader, windows: Sequence):
        self._reader = reader
        self._windows = list(windows)
        self._next = 0
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="segearth-read")
        self._upcoming: Optional[Future] = self._submit(0)

    def _submit(self, index: int) -> Optional[Future]:
        if index >= len(self._windows):
            return None
        return self._pool.submit(self._reader.read, self._windows[index])

    def read(self, window):
        if self._next >= len(self._windows) or window != self._windows[self._next]:
            raise ValueError(f"windows must be read in the order given; got {window}")
        result = self._upcoming.result()
        self._next += 1
        self._upcoming = self._submit(self._next)
        return result

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> "ReadAhead":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
