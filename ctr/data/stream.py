"""Streams a split from its Parquet row groups: each rank reads only its share, in bounded memory.

::

    the split's row groups, footers read once at start (SplitLayout): file 0's groups, file 1's, ...
        │ cut into V contiguous row ranges, one per *stream* (V = --loader-streams, default the
        │ world size W; a multiple of W). Stream v owns S·b_v + r_v rows: its slot b_v of each of
        │ the S full global batches and its part r_v of the last one (StreamPlan)
        ▼
    stream v in epoch e: its pieces (its row groups, cut to its range) in an order drawn from
        │ (seed, e, v); consecutive pieces of up to C rows (--shuffle-buffer) form a window,
        │ whose rows are permuted by (seed, e, v, window)
        ▼
    rank r reads streams [r·V/W, (r+1)·V/W) in a background thread: step s's b_v rows of each
        │ stream, concatenated ──▶ a queue of PREFETCH local batches; while a window is being
        │ used, the next one is read a row group per step, so no step waits for a whole window
        ▼
    StreamLoader.epoch(e, k), main thread: local batch ──▶ Batch. The torch embedding backend
        all-gathers the ids too (its replicated tables sync their touched rows by them; one
        collective per step, ctr.distributed.gather); TorchRec's sharded lookups receive every
        id of their rows anyway and count them there (ctr.distributed.counts): no gather

**The global batch does not depend on the world size.** Step s's global batch is stream 0's
slot, then stream 1's, ..., then stream V-1's, and each stream's order is a function of
(seed, epoch, stream, layout) only. So a run with V streams sees the same global batches in the
same row order on any number of ranks dividing V: 2 ranks equal 1 rank with
``--loader-streams 2`` (``tests/test_stream.py``), and a checkpoint resumes on such a world
size.

**Exact resume.** Step k's position in stream v is k·b_v. ``epoch(e, k)`` finds the window that
holds it (window sizes are known from the footers), reads that window and goes on: the batches
are bit for bit those of an uninterrupted run. The checkpoint records the rows consumed and the
layout's fingerprint (file names and row-group sizes); a resume over a rewritten split is refused.

**Tail.** As in the memory loader: every row is read exactly once per epoch across the ranks.
Without ``drop_last`` the last step holds the ``N mod B`` remaining rows (stream v gives r_v of
them, possibly none); with ``drop_last`` each stream drops its r_v last rows of the epoch's
order (other rows each epoch). Every rank yields the same number of steps.

**Memory bound** per rank: for each of its V/W streams two windows (the one in use and the next,
each at most max(C, one row group) rows) plus PREFETCH local batches, at
``DatasetSchema.row_bytes`` per row (160 B for Criteo): about 2·C·160 B = 320 MB per stream at the
default C = 1Mi rows, whatever the split's size. The two windows' buffers are reused from window
to window and epoch to epoch (:class:`BufferPool`), so the RSS stays flat across epochs too. A row
group on the boundary of two streams' ranges is read by both (each keeps its part).

**Bad input** is an error naming the file, never a skipped part: at start, a missing or
unreadable file, a missing or non-numeric column, row counts that differ from ``meta.json``
(:class:`SplitLayout`); during the epoch, a row group that cannot be read, has another row count
than at start (a file truncated or replaced after training started) or holds ids outside the
vocabulary. The error reaches the main thread at the next batch.

Example::

    layout = SplitLayout(read_schema("data/criteo"), "train")
    loader = StreamLoader(layout, batch=8192, seed=0, streams=8, rank=r, world_size=8,
                          gather=global_batch_ids)
    for batch in loader.epoch(0): ...
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import json
import queue
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from ctr.data.dataset import LABEL, DatasetError, DatasetSchema
from ctr.data.loader import Batch, BatchSource, _check_same
from ctr.data.source import DEFAULT_SHUFFLE_BUFFER, EVAL_SPLITS, RunData, stored_splits

if TYPE_CHECKING:
    from ctr.distributed.env import DistEnv

PREFETCH = 3            # local batches the reader thread keeps ready
Gather = Callable[[torch.Tensor, Sequence[int]], torch.Tensor]   # (local ids, rows per rank) -> global


@dataclass(frozen=True)
class Group:
    """One row group of the split: which file, its index there, its rows, its first row."""

    file: int
    index: int
    rows: int
    start: int      # offset of its first row in the split's natural order


@dataclass(frozen=True)
class Piece:
    """Rows ``[lo, hi)`` of one row group: a stream's unit of reading."""

    group: int
    lo: int
    hi: int

    @property
    def rows(self) -> int:
        return self.hi - self.lo


class SplitLayout:
    """One split's row groups from the Parquet footers, checked against ``meta.json``; reads pieces.

    Raises :class:`DatasetError` naming the file for a missing or unreadable file, a missing or
    non-numeric column, or a row count that differs from ``meta.json``."""

    def __init__(self, ds: DatasetSchema, split: str):
        ds.require_label()
        self.dataset, self.split = ds, ds.resolve_split(split)
        self.files = ds.split_files(split)
        self.sparse, self.dense = list(ds.sparse_fields), list(ds.dense_fields)
        self.columns = [LABEL] + self.dense + self.sparse
        self.vocab = np.array([ds.vocab_sizes[f] for f in self.sparse], dtype=np.int64)
        groups: list[Group] = []
        start = 0
        for i, path in enumerate(self.files):
            md, schema = _footer(path)
            self._check_columns(path, schema)
            for g in range(md.num_row_groups):
                n = md.row_group(g).num_rows
                groups.append(Group(i, g, n, start))
                start += n
        if start != ds.rows(split):
            raise DatasetError(f"{ds.path}: split {self.split!r} has {start:,} rows in its Parquet "
                               f"files, meta.json says {ds.rows(split):,}; the dataset is damaged, "
                               "rebuild it with `ctr-preprocess`")
        self.groups, self.rows = groups, start
        self._starts = [g.start for g in groups]
        shape = [(str(p.relative_to(ds.path)) if p.is_relative_to(ds.path) else p.name,
                  [g.rows for g in groups if g.file == i]) for i, p in enumerate(self.files)]
        self.fingerprint = hashlib.sha256(json.dumps(shape).encode()).hexdigest()[:16]

    def _check_columns(self, path: Path, schema: pa.Schema) -> None:
        names = set(schema.names)
        missing = [c for c in self.columns if c not in names]
        if missing:
            raise DatasetError(f"{path}: columns missing: {missing} (the split's other files and "
                               "meta.json have them); the dataset is damaged, rebuild it")
        for c in self.columns:
            t = schema.field(c).type
            ok = pa.types.is_integer(t) if c in self.sparse else (pa.types.is_floating(t) or pa.types.is_integer(t))
            if not ok:
                raise DatasetError(f"{path}: column {c!r} is {t}, expected "
                                   f"{'integer ids' if c in self.sparse else 'numbers'}")

    def pieces(self, lo: int, hi: int) -> list[Piece]:
        """The pieces covering rows ``[lo, hi)`` of the natural order."""
        out: list[Piece] = []
        g = max(0, bisect.bisect_right(self._starts, lo) - 1)
        while lo < hi and g < len(self.groups):
            grp = self.groups[g]
            a, b = max(lo, grp.start) - grp.start, min(hi, grp.start + grp.rows) - grp.start
            if b > a:
                out.append(Piece(g, a, b))
            g += 1
        return out

    def read_into(self, piece: Piece, ids: np.ndarray, dense: np.ndarray, labels: np.ndarray) -> None:
        """Reads ``piece`` into the given row slices (``len(...) == piece.rows``). Raises
        :class:`DatasetError` naming the file when it cannot be read as it was at start."""
        grp = self.groups[piece.group]
        path = self.files[grp.file]
        where = f"{path}: row group {grp.index}"
        try:
            with open(path, "rb") as f:
                pf = pq.ParquetFile(f)
                md = pf.metadata
                if grp.index >= md.num_row_groups or md.row_group(grp.index).num_rows != grp.rows:
                    have = md.row_group(grp.index).num_rows if grp.index < md.num_row_groups else None
                    raise DatasetError(f"{where}: the file changed since the run started (row group "
                                       f"{'missing' if have is None else f'of {have} rows'}, was "
                                       f"{grp.rows}); stopping rather than training on part of the data")
                self._check_columns(path, pf.schema_arrow)
                t = pf.read_row_group(grp.index, columns=self.columns).slice(piece.lo, piece.rows)
        except (OSError, pa.ArrowException) as e:
            raise DatasetError(f"{where}: cannot be read ({type(e).__name__}: {e}); the file is damaged "
                               "or changed since the run started; stopping rather than training on "
                               "part of the data") from e
        labels[:] = t.column(LABEL).to_numpy()
        for j, c in enumerate(self.dense):
            dense[:, j] = t.column(c).to_numpy()
        for j, c in enumerate(self.sparse):
            ids[:, j] = t.column(c).to_numpy()
        if piece.rows:
            bad = (ids.min(axis=0) < 0) | (ids.max(axis=0) >= self.vocab)
            if bad.any():
                raise DatasetError(f"{where}: ids outside the vocabulary in fields "
                                   f"{[c for c, b in zip(self.sparse, bad) if b]}")


def _footer(path: Path) -> tuple[pq.FileMetaData, pa.Schema]:
    try:
        with open(path, "rb") as f:
            pf = pq.ParquetFile(f)
            return pf.metadata, pf.schema_arrow
    except (OSError, pa.ArrowException) as e:
        raise DatasetError(f"{path}: cannot read this Parquet file ({type(e).__name__}: {e}); the "
                           "dataset is damaged, rebuild it with `ctr-preprocess`") from e


def split_sizes(n: int, k: int) -> list[int]:
    """``n`` rows over ``k`` parts as :func:`torch.tensor_split` cuts them (first parts larger)."""
    return [n // k + (1 if i < n % k else 0) for i in range(k)]


@dataclass(frozen=True)
class StreamPlan:
    """How many rows each stream gives at each step, and where its range starts."""

    rows: int
    batch: int
    streams: int
    drop_last: bool
    full_steps: int              # S = rows // batch
    slot: tuple[int, ...]        # b_v: stream v's rows in a full global batch
    tail: tuple[int, ...]        # r_v: its rows of the last, partial one
    start: tuple[int, ...]       # its range's first row in the split's natural order

    @classmethod
    def make(cls, rows: int, batch: int, streams: int, drop_last: bool) -> "StreamPlan":
        full = rows // batch
        slot, tail = split_sizes(batch, streams), split_sizes(rows - full * batch, streams)
        start = np.concatenate([[0], np.cumsum([full * b + r for b, r in zip(slot, tail)])[:-1]])
        return cls(rows, batch, streams, drop_last, full, tuple(slot), tuple(tail),
                   tuple(int(x) for x in start))

    @property
    def steps(self) -> int:
        return self.full_steps + (1 if sum(self.tail) and not self.drop_last else 0)

    def stream_rows(self, v: int) -> int:
        return self.full_steps * self.slot[v] + self.tail[v]

    def size(self, v: int, step: int) -> int:
        return self.slot[v] if step < self.full_steps else self.tail[v]

    def offset(self, v: int, step: int) -> int:
        """Rows of stream v's epoch order consumed before ``step``."""
        return min(step, self.full_steps) * self.slot[v] + (self.tail[v] if step > self.full_steps else 0)

    def global_size(self, step: int) -> int:
        return self.batch if step < self.full_steps else sum(self.tail)


def _rng(*key: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([k % 2**63 for k in key])))


# One window's storage: ids [n, F], dense [n, D], labels [n], and its permutation [n]
Buffers = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


class BufferPool:
    """Window storage of one stream, reused from window to window and epoch to epoch: the
    steady state allocates nothing large. (Allocating each window afresh made the RSS creep by
    ~50 MB an epoch: glibc raises its mmap threshold after the first large free, and the
    windows then fragment the heap.)"""

    def __init__(self, layout: SplitLayout, rows: int):
        self.layout, self.rows = layout, rows
        self.free: list[Buffers] = []
        self.made = 0
        self._lock = threading.Lock()

    def get(self, rows: int) -> Buffers:
        with self._lock:
            while self.free:
                b = self.free.pop()
                if len(b[2]) >= rows:
                    return b
            self.made += 1
        n = max(rows, self.rows)
        return (np.empty((n, len(self.layout.sparse)), dtype=np.int32),
                np.empty((n, len(self.layout.dense)), dtype=np.float32),
                np.empty(n, dtype=np.float32), np.empty(n, dtype=np.int64))

    def put(self, b: Buffers) -> None:
        with self._lock:
            self.free.append(b)


class _Window:
    """Consecutive pieces of one stream, read into one block of rows, used in a permuted order
    drawn from ``rng`` (None: in order)."""

    def __init__(self, layout: SplitLayout, pieces: list[Piece], rng: np.random.Generator | None,
                 buffers: Buffers):
        self.layout, self.todo, self.buffers = layout, list(pieces), buffers
        self.rows = sum(p.rows for p in pieces)
        self.ids, self.dense, self.labels, perm = (a[:self.rows] for a in buffers)
        self.filled = 0
        self.perm = None
        if rng is not None:                 # rng.permutation(rows), in place
            perm[:] = np.arange(self.rows) if self.rows > len(_ARANGE) else _ARANGE[:self.rows]
            rng.shuffle(perm)
            self.perm = torch.from_numpy(perm)

    @property
    def complete(self) -> bool:
        return not self.todo

    def read_one(self) -> None:
        p = self.todo.pop(0)
        sl = slice(self.filled, self.filled + p.rows)
        self.layout.read_into(p, self.ids[sl], self.dense[sl], self.labels[sl])
        self.filled += p.rows

    def finish(self) -> "_Window":
        while self.todo:
            self.read_one()
        return self

    def take(self, pos: int, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Rows ``pos .. pos+n`` of the window's order, as copies (the buffers are reused)."""
        arrays = (self.ids, self.dense, self.labels)
        if self.perm is None:
            return tuple(torch.from_numpy(a[pos:pos + n].copy()) for a in arrays)  # type: ignore[return-value]
        idx = self.perm[pos:pos + n]
        return tuple(torch.from_numpy(a).index_select(0, idx) for a in arrays)  # type: ignore[return-value]


_ARANGE = np.arange(1 << 21)   # read-only source of the permutations' identity (no per-window arange)


class _StreamOrder:
    """Stream v's rows in one epoch: its pieces in the epoch's order, grouped into windows."""

    def __init__(self, layout: SplitLayout, pieces: list[Piece], capacity: int,
                 key: tuple[int, int, int] | None):
        self.layout, self.key = layout, key
        if key is not None:
            pieces = [pieces[i] for i in _rng(*key, 0).permutation(len(pieces))]
        self.windows: list[list[Piece]] = []
        rows = 0
        for p in pieces:
            if not self.windows or rows + p.rows > capacity:
                self.windows.append([])
                rows = 0
            self.windows[-1].append(p)
            rows += p.rows
        sizes = [sum(p.rows for p in w) for w in self.windows]
        self.starts = [0] + list(np.cumsum(sizes)[:-1]) if sizes else []

    def window(self, w: int, pool: BufferPool) -> _Window:
        pieces = self.windows[w]
        rng = _rng(*self.key, 1, w) if self.key is not None else None
        return _Window(self.layout, pieces, rng, pool.get(sum(p.rows for p in pieces)))


class _Cursor:
    """Reads one stream's epoch order from a row offset on; its windows' storage comes from and
    goes back to the stream's :class:`BufferPool` (two buffers in turn)."""

    def __init__(self, order: _StreamOrder, offset: int, pool: BufferPool):
        self.order, self.pool = order, pool
        self.w = bisect.bisect_right(order.starts, offset) - 1
        self.cur = order.window(self.w, pool).finish() if self.w >= 0 else None
        self.pos = offset - order.starts[self.w] if self.w >= 0 else 0
        self.next: _Window | None = None

    def _window(self, w: int) -> _Window:
        return self.order.window(w, self.pool)

    def release(self) -> None:
        for win in (self.cur, self.next):
            if win is not None:
                self.pool.put(win.buffers)
        self.cur = self.next = None

    def take(self, n: int) -> tuple[torch.Tensor, ...]:
        parts = []
        while n > 0:
            assert self.cur is not None
            if self.pos == self.cur.rows:   # retire this window; its buffers serve the one after next
                self.pool.put(self.cur.buffers)
                self.cur = (self.next if self.next is not None else self._window(self.w + 1)).finish()
                self.w, self.pos, self.next = self.w + 1, 0, None
            k = min(n, self.cur.rows - self.pos)
            parts.append(self.cur.take(self.pos, k))
            self.pos, n = self.pos + k, n - k
        if not parts:
            lay = self.order.layout
            return (torch.empty((0, len(lay.sparse)), dtype=torch.int32),
                    torch.empty((0, len(lay.dense))), torch.empty(0))
        return parts[0] if len(parts) == 1 else tuple(torch.cat(c) for c in zip(*parts))

    def read_ahead(self) -> None:
        """One row group of the next window, so it is ready when this one runs out."""
        if self.w + 1 < len(self.order.windows):
            if self.next is None:
                self.next = self._window(self.w + 1)
            if not self.next.complete:
                self.next.read_one()

    def resident_rows(self) -> int:
        return sum(len(win.buffers[2]) for win in (self.cur, self.next) if win is not None)


class StreamLoader:
    """This rank's batches of one split, streamed from its share of the row groups (see the
    module docstring). ``gather``: turns the local ids into the global batch's (given the rows of
    every rank), :func:`ctr.distributed.gather.global_batch_ids` in a torch-backend run; None for
    evaluation and TorchRec runs, whose batches then carry no global ids (an empty tensor)."""

    def __init__(self, layout: SplitLayout, batch: int, *, seed: int = 0, shuffle: bool = True,
                 drop_last: bool = False, streams: int = 1, rank: int = 0, world_size: int = 1,
                 shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER, gather: Gather | None = None,
                 whole_groups: bool = True, prefetch: int = PREFETCH):
        if streams % world_size:
            raise ValueError(f"{streams} streams is not a multiple of the {world_size} ranks")
        if batch < streams:
            raise ValueError(f"batch size {batch} is smaller than the {streams} streams")
        if whole_groups and len(layout.groups) < streams:
            ds = layout.dataset
            raise DatasetError(
                f"{ds.path}: split {layout.split!r} has {len(layout.groups)} row group(s), fewer than "
                f"the {streams} streams ({world_size} rank(s)): every stream must read row groups of "
                f"its own. Rewrite it with smaller row groups (ctr-preprocess ... --row-group-rows "
                f"{max(1, layout.rows // (4 * streams)):,}) or use --loader memory")
        self.layout, self.batch_size, self.seed, self.shuffle = layout, batch, seed, shuffle
        self.drop_last, self.rank, self.world_size, self.streams = drop_last, rank, world_size, streams
        self.shuffle_buffer, self.gather, self.prefetch = shuffle_buffer, gather, prefetch
        self.plan = StreamPlan.make(layout.rows, batch, streams, drop_last)
        per = streams // world_size
        self.rank_streams = [list(range(r * per, (r + 1) * per)) for r in range(world_size)]
        self.my_streams = self.rank_streams[rank]
        self.pieces = {v: layout.pieces(self.plan.start[v], self.plan.start[v] + self.plan.stream_rows(v))
                       for v in self.my_streams}
        self.peak_resident_rows = 0    # most window rows held at once (the memory bound's test)
        self._pools = {v: BufferPool(layout, self._window_rows(v)) for v in self.my_streams}

    @property
    def num_rows(self) -> int:
        return self.layout.rows

    def __len__(self) -> int:
        return self.plan.steps

    def files(self) -> list[Path]:
        """The files this rank reads."""
        idx = sorted({self.layout.groups[p.group].file for ps in self.pieces.values() for p in ps})
        return [self.layout.files[i] for i in idx]

    def _window_rows(self, v: int) -> int:
        """The most rows one window of stream v holds: the buffers' size."""
        biggest = max((p.rows for p in self.pieces[v]), default=0)
        window = max(self.shuffle_buffer, biggest) if self.shuffle else biggest
        return min(window, sum(p.rows for p in self.pieces[v]))

    def resident_bound_rows(self) -> int:
        """Rows this rank holds at most: two windows per stream and the prefetched batches."""
        local = sum(self.plan.slot[v] for v in self.my_streams)
        return sum(2 * self._window_rows(v) for v in self.my_streams) + (self.prefetch + 2) * local

    def rank_sizes(self, step: int) -> list[int]:
        return [sum(self.plan.size(v, step) for v in vs) for vs in self.rank_streams]

    def order(self, epoch: int, v: int) -> _StreamOrder:
        key = (self.seed, epoch, v) if self.shuffle else None
        return _StreamOrder(self.layout, self.pieces[v], self.shuffle_buffer if self.shuffle else 0, key)

    def position(self, epoch: int, step: int) -> dict[str, Any]:
        """What the checkpoint records: the rows of every stream consumed in this epoch, and what
        fixes the order (streams, window, the layout's fingerprint)."""
        return {"loader": "stream", "epoch": epoch, "step": step, "rows": self.layout.rows,
                "batch": self.batch_size, "streams": self.streams, "shuffle_buffer": self.shuffle_buffer,
                "layout": self.layout.fingerprint,
                "consumed": [self.plan.offset(v, step) for v in range(self.streams)]}

    def check_position(self, saved: dict[str, Any]) -> None:
        now = self.position(int(saved.get("epoch", 0)), int(saved.get("step", 0)))
        _check_same(saved, now, ("loader", "rows", "batch", "streams", "shuffle_buffer", "layout", "consumed"))

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[Batch]:
        if start_step >= len(self):
            return
        q: queue.Queue[Any] = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()
        reader = threading.Thread(target=self._produce, args=(epoch, start_step, q, stop), daemon=True,
                                  name=f"ctr-stream-rank{self.rank}")
        reader.start()
        keys = self.layout.sparse
        try:
            for step in range(start_step, len(self)):
                item = _get(q, reader)
                if isinstance(item, BaseException):
                    raise item
                ids, dense, labels = item
                if self.gather is not None:
                    global_ids = self.gather(ids, self.rank_sizes(step))
                else:
                    global_ids = torch.empty((0, len(keys)), dtype=torch.int32)
                yield Batch(dense, ids, labels, global_ids, self.plan.global_size(step), list(keys))
        finally:
            stop.set()
            while reader.is_alive():
                try:
                    q.get_nowait()
                except queue.Empty:
                    reader.join(0.05)

    def _produce(self, epoch: int, start_step: int, q: queue.Queue, stop: threading.Event) -> None:
        """The reader thread: builds this rank's local batches from ``start_step`` on."""
        def put(item: Any) -> bool:
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        cursors: list[tuple[int, _Cursor]] = []
        try:
            for v in self.my_streams:
                cursors.append((v, _Cursor(self.order(epoch, v), self.plan.offset(v, start_step),
                                           self._pools[v])))
            for step in range(start_step, len(self)):
                parts = [c.take(self.plan.size(v, step)) for v, c in cursors]
                batch = parts[0] if len(parts) == 1 else tuple(torch.cat(x) for x in zip(*parts))
                for _, c in cursors:
                    c.read_ahead()
                self.peak_resident_rows = max(self.peak_resident_rows,
                                              sum(c.resident_rows() for _, c in cursors))
                if not put(batch):
                    return
        except BaseException as e:  # noqa: BLE001 - handed to the main thread, raised there
            put(e)
        finally:
            for _, c in cursors:
                c.release()


def _get(q: queue.Queue, reader: threading.Thread) -> Any:
    while True:
        try:
            return q.get(timeout=1.0)
        except queue.Empty:
            if not reader.is_alive() and q.empty():
                raise RuntimeError("the streaming loader's reader thread ended early") from None


def eval_loader(layout: SplitLayout, batch: int, env: DistEnv) -> StreamLoader:
    """A split read once in order, one stream per rank, a row group at a time; no global ids."""
    return StreamLoader(layout, max(batch, env.world_size), shuffle=False, drop_last=False,
                        streams=env.world_size, rank=env.rank, world_size=env.world_size,
                        gather=None, whole_groups=False)


def open_stream_data(ds: DatasetSchema, batch: int, seed: int, drop_last: bool, env: DistEnv,
                     positive_rate: float, streams: int, shuffle_buffer: int,
                     gather_ids: bool = True) -> RunData:
    """The ``stream`` loader of a run: the train split streamed, with the ids all-gathered each
    step when ``gather_ids`` (the torch backend's need: :func:`ctr.distributed.counts.
    needs_global_ids`; else the batches' ``global_ids`` are empty); valid and test streamed in
    order for evaluation. Every file's footer is checked now."""
    gather: Gather | None = None
    if gather_ids:
        from ctr.distributed.gather import global_batch_ids
        gather = functools.partial(global_batch_ids, device=env.device if env.backend == "nccl" else None)
    train = StreamLoader(SplitLayout(ds, "train"), batch, seed=seed, shuffle=True, drop_last=drop_last,
                         streams=streams, rank=env.rank, world_size=env.world_size,
                         shuffle_buffer=shuffle_buffer, gather=gather)
    layouts = {name: SplitLayout(ds, name) for name in stored_splits(ds, EVAL_SPLITS)}

    def evaluation(split: str, eval_batch: int) -> BatchSource:
        layout = layouts.get(ds.resolve_split(split)) or SplitLayout(ds, split)
        return eval_loader(layout, eval_batch, env)

    groups = len({p.group for ps in train.pieces.values() for p in ps})
    bound = train.resident_bound_rows() * ds.row_bytes / 2**20
    note = (f"this rank reads {groups} of {len(train.layout.groups)} row groups "
            f"({len(train.files())} file(s)) as {len(train.my_streams)} of {streams} stream(s); "
            f"shuffle window {shuffle_buffer:,} rows; at most ~{bound:,.0f} MB of rows held")
    return RunData("stream", train, evaluation, positive_rate, note)
