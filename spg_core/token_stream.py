"""Token batches streamed from a store's shards, for token sets larger than memory.

As saev reads its activation shards: whole shards are read sequentially (the fast way to
read a disk or a shared file system), a window of `window_shards` shards is shuffled at
token level, and cut into batches `[B, D]`; the rest of a window is carried into the next.
A background thread reads, shuffles, pins and copies the next batches to the device while
the caller computes on the current one, so the device waits for the disk only when the
disk is slower than the training step.

`ordered_batches` is the same prefetching for `sae_train`'s exact batch order over tokens
held in host memory (too large for the device).

Under torchrun each rank streams its own shards (shard i on rank i % world), so the ranks
together read every token once per epoch. The order depends on (seed, epoch) only.
"""

from __future__ import annotations

import math
import os
import queue
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch

from . import distributed
from .errors import SPGError
from .store import TokenStore

_DONE = object()


class ShardStream:
    """Shuffled `[B, D]` token batches of `store` (read in its dtype; `dtype` on `device`), one epoch at a time.

    shards: positions in the store's shard list to read (default: this rank's, `distributed.owned`).
    The last batch of an epoch may be shorter; every token of the chosen shards appears once.

    Shards are read with plain file reads into one reused window buffer, never memory-mapped
    pages (a mapping's touched pages count as resident memory), so the host holds one window
    `[window_shards * rows_per_shard + B, D]` and the queued batches, whatever the store's size.
    Each shard's size and modification time are recorded when the stream opens; a shard that
    changes afterwards stops the reader with an SPGError (a store rebuilt under a training).
    """

    def __init__(
        self,
        store: TokenStore,
        batch_tokens: int,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        seed: int = 0,
        window_shards: int = 4,
        prefetch: int = 4,
        shards: list[int] | None = None,
    ):
        self.store, self.batch_tokens = store, batch_tokens
        self.device, self.dtype = torch.device(device), dtype
        self.seed, self.window_shards, self.prefetch = seed, max(1, window_shards), max(1, prefetch)
        self.shards = distributed.owned(len(store.manifest["shards"])) if shards is None else list(shards)
        self._memmaps = [toks for _, toks in store.iter_shards()]  # for their file, offset and shape only
        self._stamps = [_stamp(m.filename) for m in self._memmaps]

    @property
    def num_tokens(self) -> int:
        """Tokens one epoch yields."""
        return sum(self.shard_rows(i) for i in self.shards)

    def shard_rows(self, i: int) -> int:
        """Tokens of shard position `i`."""
        return int(self._memmaps[i].shape[0]) * self.store.num_patches

    @property
    def window_rows(self) -> int:
        """Rows of the window buffer: the largest `window_shards` shards plus a carried-over batch."""
        largest = sorted((self.shard_rows(i) for i in self.shards), reverse=True)[: self.window_shards]
        return sum(largest) + self.batch_tokens

    def read_rows(self, i: int, lo: int, hi: int, out: np.ndarray) -> None:
        """Token rows `[lo, hi)` of shard position `i` into `out` `[hi - lo, D]`, once the shard is
        checked to be the one the stream opened."""
        mm = self._memmaps[i]
        if _stamp(mm.filename) != self._stamps[i]:
            raise SPGError(
                f"token shard {Path(mm.filename).name} changed while training read the store "
                "(another extraction rebuilt or resumed it)",
                path=str(mm.filename),
                fix="let the other command finish, then re-run this training (it resumes from its last epoch)",
            )
        row_bytes = self.store.dim * mm.dtype.itemsize
        view = memoryview(out).cast("B")
        with open(mm.filename, "rb") as fh:
            fh.seek(mm.offset + lo * row_bytes)
            done = 0
            while done < len(view):
                got = fh.readinto(view[done:])
                if not got:
                    raise SPGError("token shard is shorter than its header says", path=str(mm.filename))
                done += got

    def _batches(self, epoch: int) -> Iterator[np.ndarray]:
        """The epoch's batches as host arrays `[B, D]` in the store's dtype (runs in the reader thread)."""
        rng = np.random.default_rng([self.seed, epoch])
        order = [self.shards[i] for i in rng.permutation(len(self.shards))]
        buf = np.empty((self.window_rows, self.store.dim), self._memmaps[0].dtype if self._memmaps else np.float16)
        rows = 0  # the carried-over remainder of the last window sits in buf[:rows]
        for lo in range(0, len(order), self.window_shards):
            for i in order[lo : lo + self.window_shards]:
                n = self.shard_rows(i)
                self.read_rows(i, 0, n, buf[rows : rows + n])
                rows += n
            perm = rng.permutation(rows)
            full = rows // self.batch_tokens * self.batch_tokens
            for start in range(0, full, self.batch_tokens):
                yield buf[perm[start : start + self.batch_tokens]]  # a copy: buf is refilled meanwhile
            rest = buf[perm[full:rows]]
            rows = len(rest)
            buf[:rows] = rest
        if rows:
            yield buf[:rows].copy()

    def epoch(self, epoch: int = 0) -> Iterator[torch.Tensor]:
        """Iterate the batches of `epoch` on the device; the reader thread stays `prefetch` batches ahead."""
        return prefetched((torch.from_numpy(b) for b in self._batches(epoch)), self.device, self.dtype, self.prefetch)

    def chunks(self, chunk_rows: int) -> Iterator[torch.Tensor]:
        """The chosen shards' tokens in store order, `[<= chunk_rows, D]` host tensors in the store's dtype,
        read through one reused buffer (each chunk is valid until the next is read)."""
        buf = np.empty((chunk_rows, self.store.dim), self._memmaps[0].dtype if self._memmaps else np.float16)
        for i in self.shards:
            n = self.shard_rows(i)
            for lo in range(0, n, chunk_rows):
                hi = min(n, lo + chunk_rows)
                self.read_rows(i, lo, hi, buf[: hi - lo])
                yield torch.from_numpy(buf[: hi - lo])


def _stamp(path: str) -> tuple[int, int]:
    """(size, modification time in ns) of a file: what changes when a shard is rewritten."""
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns


def ordered_batches(
    tokens: torch.Tensor, order: torch.Tensor, batch_rows: int, device: torch.device, *, prefetch: int = 2
) -> Iterator[tuple[torch.Tensor, int]]:
    """This rank's slice of each global batch `order[s*B:(s+1)*B]` of `tokens` `[T, D]`, as float32
    `[b, D]` on `device`, with the global batch's row count: `sae_train`'s exact batch order.

    Tokens already on `device` are indexed in place. Tokens elsewhere (host memory, too large
    for the device) are gathered by a reader thread `prefetch` batches ahead and copied on a
    side stream, so the device computes while the next batches are gathered and copied.
    """
    steps = math.ceil(len(order) / batch_rows)

    def host_batches() -> Iterator[tuple[torch.Tensor, int]]:
        for s in range(steps):
            rows = order[s * batch_rows : (s + 1) * batch_rows]
            yield tokens[rows[distributed.batch_slice(len(rows))]], len(rows)

    resident = tokens.device.type == device.type and device.index in (None, tokens.device.index)
    if resident:
        return ((part.float(), n) for part, n in host_batches())
    parts = prefetched((part for part, _ in host_batches()), device, torch.float32, prefetch)
    return ((part, min(batch_rows, len(order) - s * batch_rows)) for s, part in enumerate(parts))


def prefetched(
    batches: Iterable[torch.Tensor], device: torch.device, dtype: torch.dtype, depth: int
) -> Iterator[torch.Tensor]:
    """`batches` (host tensors, produced by a reader thread) as `dtype` on `device`, `depth` ahead.

    On CUDA the copies run from pinned memory on a side stream, ordered before their use on
    the consumer's stream. Leaving the loop early stops the thread; its errors are raised here.
    """
    out: queue.Queue = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()
    on_cuda = device.type == "cuda"
    stream = torch.cuda.Stream(device) if on_cuda else None

    def put(item: tuple) -> bool:
        """Queue `item` unless the consumer has left; False when it has."""
        while not stop.is_set():
            try:
                out.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def read() -> None:
        try:
            for host in batches:
                if on_cuda:
                    with torch.cuda.stream(stream):
                        ready = host.pin_memory().to(device, non_blocking=True).to(dtype)
                    event = torch.cuda.Event()
                    event.record(stream)
                    item = (ready, event)
                else:
                    item = (host.to(device=device, dtype=dtype), None)
                if not put(item):
                    return
        except BaseException as exc:
            put((exc, None))
            return
        put((_DONE, None))

    reader = threading.Thread(target=read, name="spg-token-stream", daemon=True)
    reader.start()
    try:
        while True:
            item, event = out.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            if event is not None:  # the copy ran on the reader's stream: order it before use
                current = torch.cuda.current_stream(device)
                current.wait_event(event)
                item.record_stream(current)
            yield item
    finally:
        stop.set()
        reader.join(timeout=10)
