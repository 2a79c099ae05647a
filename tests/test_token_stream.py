"""ShardStream: every token once per epoch, ranks' shares disjoint, deterministic order, a clean early stop."""

import threading

import pytest
import torch
from helpers.distributed_support import PatchBackbone, write_images

from spg_core import distributed
from spg_core.store import build_store
from spg_core.token_stream import ShardStream, ordered_batches, prefetched


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """10 images x 16 tokens in 4 shards of 3 (the last holds 1)."""
    tmp = tmp_path_factory.mktemp("stream")
    return build_store(
        write_images(tmp / "images"),
        PatchBackbone(),
        cache_dir=tmp / "c",
        shard_images=3,
        num_workers=0,
        progress=False,
    )


def _rows(batches):
    return torch.cat(list(batches)).to(torch.float16)


def _sorted(x):
    return x[torch.argsort(x[:, 0].float() * 1000 + x[:, 1].float())]


def test_an_epoch_yields_every_token_once_in_shuffled_batches(store):
    everything = store.all_tokens()
    stream = ShardStream(store, batch_tokens=7, window_shards=2, seed=3)
    batches = list(stream.epoch(0))
    assert [len(b) for b in batches[:-1]] == [7] * (len(batches) - 1) and 0 < len(batches[-1]) <= 7
    rows = _rows(batches)
    assert stream.num_tokens == len(rows) == len(everything) == 160
    assert torch.equal(_sorted(rows), _sorted(everything))
    assert not torch.equal(rows, everything)  # shuffled, not store order
    assert torch.equal(_rows(ShardStream(store, 7, window_shards=2, seed=3).epoch(0)), rows)  # deterministic
    assert not torch.equal(_rows(stream.epoch(1)), rows)  # a new order each epoch


def test_ranks_stream_disjoint_shards_that_cover_the_store(store):
    parts = [
        _rows(ShardStream(store, 16, shards=distributed.owned(4, distributed.World(r, 2))).epoch(0)) for r in range(2)
    ]
    assert [len(p) for p in parts] == [(3 + 3) * 16, (3 + 1) * 16]  # shards 0, 2 and 1, 3
    assert torch.equal(_sorted(torch.cat(parts)), _sorted(store.all_tokens()))


def test_leaving_early_stops_the_reader_thread(store):
    before = {t.ident for t in threading.enumerate() if t.name == "spg-token-stream"}
    it = ShardStream(store, batch_tokens=1, prefetch=1).epoch(0)
    next(it)
    it.close()
    alive = [t for t in threading.enumerate() if t.name == "spg-token-stream" and t.ident not in before]
    assert not alive


def test_ordered_batches_are_the_training_loop_batches():
    tokens = torch.randn(50, 4).half()
    order = torch.randperm(50, generator=torch.Generator().manual_seed(0))
    got = list(ordered_batches(tokens, order, 16, torch.device("cpu")))
    assert [n for _, n in got] == [16, 16, 16, 2]
    assert torch.equal(torch.cat([b for b, _ in got]), tokens[order].float())


def test_prefetched_keeps_order_raises_errors_and_stops():
    batches = [torch.full((2, 3), float(i)) for i in range(20)]
    got = list(prefetched(iter(batches), torch.device("cpu"), torch.float64, depth=3))
    assert [float(b[0, 0]) for b in got] == list(range(20)) and got[0].dtype == torch.float64

    def failing():
        yield batches[0]
        raise OSError("disk went away")

    with pytest.raises(OSError, match="disk went away"):
        list(prefetched(failing(), torch.device("cpu"), torch.float32, depth=2))
