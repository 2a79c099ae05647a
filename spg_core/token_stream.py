"""Token batches streamed from a store's memory-mapped shards, for token sets larger than memory.

As saev reads its activation shards: whole shards are read sequentially (the fast way to
read a disk or a shared file system), a window of `window_shards` shards is shuffled at
token level, and cut into batches `[B, D]`. A background thread reads, shuffles, pins and
copies the next batches to the device while the caller computes on the current one, so the
device waits for the disk only when the disk is slower than the training step.

Under torchrun each rank streams its own shards (shard i on rank i % world), so the ranks
together read every token once per epoch. The order depends on (seed, epoch) only.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator

import numpy as np
import torch

from . import distributed
from .store import TokenStore

_DONE = object()


class ShardStream:
    """Shuffled `[B, D]` token batches of `store` (fp16 on disk; `dtype` on `device`), one epoch at a time.

    shards: positions in the store's shard list to read (default: this rank's, `distributed.owned`).
    The last batch of an epoch may be shorter; every token of the chosen shards appears once.
    """

    def __init__(self, store: TokenStore, batch_tokens: int, *, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32, seed: int = 0, window_shards: int = 4, prefetch: int = 4,
                 shards: list[int] | None = None):
        self.store, self.batch_tokens = store, batch_tokens
        self.device, self.dtype = torch.device(device), dtype
        self.seed, self.window_shards, self.prefetch = seed, max(1, window_shards), max(1, prefetch)
        self.shards = distributed.owned(len(store.manifest["shards"])) if shards is None else list(shards)
        self._memmaps = [toks for _, toks in store.iter_shards()]

    @property
    def num_tokens(self) -> int:
        """Tokens one epoch yields."""
        return sum(int(self._memmaps[i].shape[0]) for i in self.shards) * self.store.num_patches

    def _batches(self, epoch: int) -> Iterator[np.ndarray]:
        """The epoch's batches as host arrays `[B, D]` fp16 (runs in the reader thread)."""
        rng = np.random.default_rng([self.seed, epoch])
        order = [self.shards[i] for i in rng.permutation(len(self.shards))]
        carry = np.empty((0, self.store.dim), np.float16)
        for lo in range(0, len(order), self.window_shards):
            window = [np.asarray(self._memmaps[i]).reshape(-1, self.store.dim) for i in order[lo:lo + self.window_shards]]
            tokens = np.concatenate([carry, *window])
            tokens = tokens[rng.permutation(len(tokens))]
            full = len(tokens) // self.batch_tokens * self.batch_tokens
            for start in range(0, full, self.batch_tokens):
                yield tokens[start:start + self.batch_tokens]
            carry = tokens[full:]
        if len(carry):
            yield carry

    def epoch(self, epoch: int = 0) -> Iterator[torch.Tensor]:
        """Iterate the batches of `epoch` on the device; the reader thread stays `prefetch` batches ahead."""
        out: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()
        pin = self.device.type == "cuda"
        stream = torch.cuda.Stream(self.device) if pin else None

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
                for batch in self._batches(epoch):
                    host = torch.from_numpy(batch)
                    if pin:
                        with torch.cuda.stream(stream):
                            ready = host.pin_memory().to(self.device, non_blocking=True).to(self.dtype)
                        event = torch.cuda.Event()
                        event.record(stream)
                        item = (ready, event)
                    else:
                        item = (host.to(self.dtype), None)
                    if not put(item):
                        return
            except BaseException as exc:  # noqa: BLE001 (handed to the consumer and raised there)
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
                if event is not None:       # the copy ran on the reader's stream: order it before use
                    current = torch.cuda.current_stream(self.device)
                    current.wait_event(event)
                    item.record_stream(current)
                yield item
        finally:
            stop.set()
            reader.join(timeout=10)
