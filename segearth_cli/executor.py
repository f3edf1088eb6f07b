"""Pipelined execution of a window plan: reading, the model and blending overlap.

Reader threads, each with its own handle on the scene (GDAL decodes with the GIL
released), read windows ahead in plan order; the calling thread groups them into batches;
one thread per model replica (one per GPU) runs the batches and, where footprints are no
larger than canvases, maps the answers onto them (on the replica's GPU when it has one); a
writer thread blends the answers in plan order; a sink thread hands every finished row
block to the outputs, so blending and writing overlap too. Each hand-over is bounded, so
memory depends on the window size, the batch size and the number of replicas, never on
the scene; and answers are blended in plan order whatever finished first, so the outputs
are the same for any number of readers or replicas.

The reader threads can be started before the rest (:class:`ReadAhead`), so that a scene's
first windows are read while the model is still busy with the previous scene's last ones.

The first failure of any stage, or an interrupt (Ctrl-C) in the calling thread, stops
every stage and is raised in the calling thread once all threads have ended.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable, ContextManager, Iterator, Optional, Sequence

import numpy as np

from .stitch import RowBlock, Stitcher, footprint_probabilities, window_logits
from .windows import Window, WindowPlan

#: Reader threads when the caller does not say: one per core, up to this many.
MAX_DEFAULT_WORKERS = 8

#: ``clock(phase)``: a context manager that adds the time spent inside it to ``phase``.
Clock = Callable[[str], ContextManager]
#: ``on_window(window, ran_model)`` once the window was blended (or skipped), in plan order.
WindowCallback = Callable[[Window, bool], None]


def _untimed(phase: str) -> ContextManager:
    return nullcontext()


def default_workers() -> int:
    """Reader threads for this machine: one per core, at most :data:`MAX_DEFAULT_WORKERS`."""
    return max(1, min(MAX_DEFAULT_WORKERS, os.cpu_count() or 1))


def replicas_of(segmenter) -> tuple:
    """The model copies that answer for ``segmenter``: one per device it was loaded on."""
    return tuple(getattr(segmenter, "replicas", None) or (segmenter,))


@dataclass(frozen=True)
class ReadWindow:
    """A window as read: its canvas and validity, or ``valid`` None when no pixel is valid."""

    window: Window
    rgb: np.ndarray
    valid: Optional[np.ndarray]


@dataclass
class _Batch:
    """Consecutive windows of the plan with their validity (None: no valid pixel); ``canvases``
    stacks the canvases of those with valid pixels (None if none).

    ``answers``: per window with valid pixels, its canvas logits (M, S, S), or its
    probabilities over its footprint when the stitcher takes those.
    """

    windows: list[tuple[Window, Optional[np.ndarray]]]
    canvases: Optional[np.ndarray]
    answers: Optional[Sequence[np.ndarray]] = None
    done: bool = False

    def answered_windows(self) -> list[Window]:
        return [window for window, valid in self.windows if valid is not None]


class _Stopped(Exception):
    """Another stage failed: this one ends quietly; the failure is raised by the caller."""


class _Shared:
    """The one condition every stage waits on, and the first failure."""

    def __init__(self) -> None:
        self.condition = threading.Condition()
        self.failure: Optional[BaseException] = None

    def fail(self, exc: BaseException) -> None:
        with self.condition:
            if self.failure is None:
                self.failure = exc
            self.condition.notify_all()

    def wait_for(self, ready: Callable[[], bool]) -> None:
        """Wait (holding the condition) until ``ready()``; raise _Stopped once any stage failed."""
        while True:
            if self.failure is not None:
                raise _Stopped
            if ready():
                return
            self.condition.wait()

    def thread(self, work: Callable[[], None], name: str) -> threading.Thread:
        """A thread running ``work`` that reports its failure here instead of dying alone."""

        def guarded() -> None:
            try:
                work()
            except _Stopped:
                pass
            except BaseException as exc:  # noqa: BLE001 - handed to the calling thread
                self.fail(exc)

        # Daemon: a second Ctrl-C while the first one waits for the threads must still end the process.
        return threading.Thread(target=guarded, name=name, daemon=True)


class ReadAhead:
    """Reader threads reading a plan's windows in plan order, ahead of whoever takes them.

    :func:`run_plan` starts one itself, or is handed one started earlier (while another
    scene's windows are still in the model, say), so that its first batch is ready when the
    model is free. At most ``workers + batch_size`` windows are read ahead until
    :func:`run_plan` takes it over and sets its own depth. :meth:`close` stops the threads;
    call it when the reads are not handed on.
    """

    def __init__(self, reader, plan: WindowPlan, *, workers: Optional[int] = None, batch_size: int = 1,
                 clock: Optional[Clock] = None):
        workers = default_workers() if workers is None else int(workers)
        if workers < 1 or batch_size < 1:
            raise ValueError(f"workers ({workers}) and batch_size ({batch_size}) must be at least 1")
        self.plan = plan
        #: Times the reads (phase ``read``).
        self.clock = clock or _untimed
        #: The condition and first failure that the stages consuming these reads share.
        self.shared = _Shared()
        self._ahead = workers + batch_size
        self._claimed = 0  # windows handed to a reader thread
        self._taken = 0  # windows handed on in plan order
        self._closed = False
        self._results: dict[int, ReadWindow] = {}
        # Every handle is opened here, in the calling thread: opening swaps the process-wide
        # warning filters for a moment, which is safe only in the thread that records the run's
        # warnings (another scene's run may be recording them meanwhile).
        handles = []
        try:
            for _ in range(workers):
                handles.append(reader.twin())
        except BaseException:
            for handle in handles:
                handle.close()
            raise
        self._threads = [self.shared.thread(lambda h=handle: self._work(h), f"segearth-read-{n}")
                         for n, handle in enumerate(handles)]
        for thread in self._threads:
            thread.start()

    @property
    def workers(self) -> int:
        return len(self._threads)

    def read_ahead(self, windows: int) -> None:
        """Let the threads read up to ``windows`` beyond the consumer (never fewer than before)."""
        with self.shared.condition:
            self._ahead = max(self._ahead, windows)
            self.shared.condition.notify_all()

    def close(self) -> None:
        """Stop reading, wait for the threads, and drop what was read and not taken."""
        with self.shared.condition:
            self._closed = True
            self.shared.condition.notify_all()
        for thread in self._threads:
            thread.join()
        self._results.clear()

    def _work(self, handle) -> None:
        windows = self.plan.windows
        try:
            while True:
                with self.shared.condition:
                    self.shared.wait_for(
                        lambda: self._closed or self._claimed >= len(windows)
                        or self._claimed < self._taken + self._ahead)
                    if self._closed or self._claimed >= len(windows):
                        return
                    index = self._claimed
                    self._claimed += 1
                window = windows[index]
                with self.clock("read"):
                    rgb, valid = handle.read(window)
                    has_valid = bool(valid.any())
                with self.shared.condition:
                    self._results[index] = ReadWindow(window, rgb, valid if has_valid else None)
                    self.shared.condition.notify_all()
        finally:
            handle.close()

    def __iter__(self) -> Iterator[ReadWindow]:
        for index in range(len(self.plan)):
            with self.shared.condition:
                self.shared.wait_for(lambda: index in self._results)
                read = self._results.pop(index)
                self._taken += 1
                self.shared.condition.notify_all()
            yield read


def _batches(reads: Iterator[ReadWindow], batch_size: int) -> Iterator[list[ReadWindow]]:
    """Windows in plan order, cut after every ``batch_size`` with valid pixels.

    A window without a valid pixel that no pending window waits behind goes on alone, so
    its rows are released without waiting for the next model call.
    """
    pending: list[ReadWindow] = []
    with_pixels = 0
    for read in reads:
        pending.append(read)
        with_pixels += read.valid is not None
        if with_pixels >= batch_size or with_pixels == 0:
            yield pending
            pending, with_pixels = [], 0
    if pending:
        yield pending


class _Replicas:
    """One thread per model replica, each taking the oldest batch not yet taken."""

    def __init__(self, replicas: Sequence, questions: Sequence[str], input_size: int, footprints: bool,
                 shared: _Shared, clock: Clock):
        self._questions = list(questions)
        self._input_size = input_size
        self._footprints = footprints
        self._shared = shared
        self._clock = clock
        self._queue: deque[_Batch] = deque()
        self._closed = False
        self.threads = [shared.thread(lambda r=replica: self._work(r), f"segearth-model-{n}")
                        for n, replica in enumerate(replicas)]

    def submit(self, batch: _Batch) -> None:
        """Queue a batch; the caller holds the condition."""
        self._queue.append(batch)

    def close(self) -> None:
        """No batch will follow; the caller holds the condition."""
        self._closed = True

    def _work(self, replica) -> None:
        while True:
            with self._shared.condition:
                self._shared.wait_for(lambda: bool(self._queue) or self._closed)
                if not self._queue:
                    return
                batch = self._queue.popleft()
            answers = None
            if batch.canvases is not None:
                with self._clock("model"):
                    if self._footprints:
                        answers = footprint_probabilities(replica, batch.canvases, self._questions,
                                                          batch.answered_windows(), self._input_size)
                    else:
                        answers = window_logits(replica, batch.canvases, self._questions, self._input_size)
            with self._shared.condition:
                batch.answers = answers
                # Answered: the canvases are not needed while the batch waits for the blend.
                batch.canvases = None
                batch.done = True
                self._shared.condition.notify_all()


class _Sink:
    """Hands finished row blocks to ``write``, in order, in a thread of its own.

    Writing a block (the mask's thresholds, compression, polygons) costs about as much as
    blending the windows that finished it; in one thread the two add up, and that thread
    alone would set the pace of a run whose model waits on nothing else. One block waits
    at most while another is written, so two row blocks are held at a time.
    """

    def __init__(self, write: Callable[[RowBlock], None], shared: _Shared):
        self._write = write
        self._shared = shared
        self._waiting: Optional[RowBlock] = None
        self._closed = False
        self.thread = shared.thread(self._work, "segearth-sink")

    def wait_for_room(self) -> None:
        """Wait until a block can be put; called before the block is made, so no third one exists."""
        with self._shared.condition:
            self._shared.wait_for(lambda: self._waiting is None)

    def put(self, block: RowBlock) -> None:
        with self._shared.condition:
            self._shared.wait_for(lambda: self._waiting is None)
            self._waiting = block
            self._shared.condition.notify_all()

    def close(self) -> None:
        """No more blocks: the thread ends once the last one is written."""
        with self._shared.condition:
            self._closed = True
            self._shared.condition.notify_all()

    def _work(self) -> None:
        while True:
            with self._shared.condition:
                self._shared.wait_for(lambda: self._waiting is not None or self._closed)
                block, self._waiting = self._waiting, None
                self._shared.condition.notify_all()
            if block is None:
                return
            self._write(block)
            del block


class _Writer:
    """Blends finished batches in submission order and hands each finished row block to the sink."""

    def __init__(self, stitcher: Stitcher, sink: _Sink, on_window: Optional[WindowCallback],
                 shared: _Shared, clock: Clock):
        self._stitcher = stitcher
        # The answers' form is the plan's: probabilities over footprints, or canvas logits.
        self._add = stitcher.add_probabilities if stitcher.takes_probabilities else stitcher.add
        self._sink = sink
        self._on_window = on_window
        self._shared = shared
        self._clock = clock
        #: Batches submitted and not yet blended, oldest first.
        self.in_flight: deque[_Batch] = deque()
        self.submitted_all = False
        self.thread = shared.thread(self._work, "segearth-write")

    def _work(self) -> None:
        while True:
            with self._shared.condition:
                self._shared.wait_for(lambda: (bool(self.in_flight) and self.in_flight[0].done)
                                      or (self.submitted_all and not self.in_flight))
                if not self.in_flight:
                    break
                batch = self.in_flight[0]
            self._blend(batch)
            with self._shared.condition:
                self.in_flight.popleft()
                self._shared.condition.notify_all()
        self._emit(self._stitcher.finish())
        self._sink.close()

    def _blend(self, batch: _Batch) -> None:
        position = 0
        for window, valid in batch.windows:
            if valid is None:
                self._emit(self._stitcher.skip(window))
            else:
                self._emit(self._add(window, batch.answers[position], valid))
                position += 1
            if self._on_window is not None:
                self._on_window(window, valid is not None)

    def _emit(self, blocks: Iterator[RowBlock]) -> None:
        # One block at a time, made only once the sink has room: a grid row of windows can
        # release hundreds of megabytes of rows.
        while True:
            self._sink.wait_for_room()
            with self._clock("stitch"):
                block = next(blocks, None)
            if block is None:
                return
            self._sink.put(block)


def run_plan(
    reader,
    plan: WindowPlan,
    segmenter,
    questions: Sequence[str],
    write: Callable[[RowBlock], None],
    *,
    batch_size: int = 1,
    workers: Optional[int] = None,
    on_window: Optional[WindowCallback] = None,
    clock: Optional[Clock] = None,
    reads: Optional[ReadAhead] = None,
) -> None:
    """Read, segment and blend every window of ``plan``; ``write`` gets the RowBlocks in row order.

    ``reader`` is a scene reader with ``twin()`` (each reader thread reads through its own
    twin); ``segmenter`` answers with every replica it has (see :func:`replicas_of`).
    ``write`` is called from the sink thread, ``on_window`` from the writer (blending)
    thread. ``workers``: reader threads (None: :func:`default_workers`). ``reads``: a :class:`ReadAhead` already
    reading this very ``plan``, whose threads are used (``reader`` and ``workers`` are then
    ignored) and closed here. Returns once every row was written.
    """
    clock = clock or _untimed
    if batch_size < 1:
        raise ValueError(f"batch_size ({batch_size}) must be at least 1")
    if reads is None:
        reads = ReadAhead(reader, plan, workers=workers, batch_size=batch_size, clock=clock)
    try:
        if reads.plan is not plan:
            raise ValueError("the windows read ahead belong to another plan")
        _segment_and_blend(reads, segmenter, questions, write, batch_size, on_window, clock)
    finally:
        reads.close()


def _segment_and_blend(reads: ReadAhead, segmenter, questions: Sequence[str], write: Callable[[RowBlock], None],
                       batch_size: int, on_window: Optional[WindowCallback], clock: Clock) -> None:
    """Batch the reads as they come, run them through every replica, blend in plan order."""
    replicas = replicas_of(segmenter)
    # Enough windows ahead to fill the next batch of every replica while the current ones run.
    reads.read_ahead(reads.workers + batch_size * len(replicas))
    shared = reads.shared
    stitcher = Stitcher(reads.plan, len(questions))
    models = _Replicas(replicas, questions, reads.plan.input_size, stitcher.takes_probabilities, shared, clock)
    sink = _Sink(write, shared)
    writer = _Writer(stitcher, sink, on_window, shared, clock)
    # One batch in each replica, one answered and waiting, and the one being blended: the
    # spare keeps the model busy while the writer releases a grid row of windows. The next
    # ones wait as reads, which are smaller than answers and are stacked in no time.
    most_in_flight = len(replicas) + 2
    threads = [*models.threads, writer.thread, sink.thread]
    for thread in threads:
        thread.start()
    try:
        for batch_reads in _batches(iter(reads), batch_size):
            with_pixels = [read.rgb for read in batch_reads if read.valid is not None]
            batch = _Batch([(read.window, read.valid) for read in batch_reads],
                           np.stack(with_pixels) if with_pixels else None)
            # The stack is the only copy of the canvases from here on.
            del batch_reads, with_pixels
            with shared.condition:
                shared.wait_for(lambda: len(writer.in_flight) < most_in_flight)
                writer.in_flight.append(batch)
                models.submit(batch)
                shared.condition.notify_all()
        with shared.condition:
            writer.submitted_all = True
            models.close()
            shared.condition.notify_all()
        writer.thread.join()
        sink.thread.join()
    except _Stopped:
        pass
    except BaseException as exc:  # an interrupt included: every stage must stop before it propagates
        shared.fail(exc)
    finally:
        with shared.condition:
            models.close()
            shared.condition.notify_all()
        for thread in threads:
            thread.join()
    if shared.failure is not None:
        raise shared.failure
