"""Deterministic, resumable, rank-sharded epoch sampler (replaces the official "magic prime", §8.3).

Each epoch is a seeded permutation of ALL samples (numpy SeedSequence of (seed, epoch)), so no tail is
ever skipped. Ranks take disjoint shards. With `even_shards=True` (the default, what DDP needs: every
rank must run the same number of steps) the permutation is padded by wrapping around to a multiple of
world_size, so at most world_size − 1 samples are seen twice in an epoch; with `even_shards=False`
every sample is seen exactly once and shard sizes differ by at most one.

Length grouping (pass `lengths` and the per-rank `batch_size`): the permutation is cut into windows of
`group_window` global batches; inside a window samples are sorted by length and cut into global
batches, the global batches are shuffled (the short remainder stays last, so batch boundaries stay
aligned), and each global batch is split into one contiguous micro-batch per rank.

Resume: `state_dict(consumed)` records (epoch, position in this rank's shard); after
`load_state_dict`, the next pass of that epoch continues with exactly the indices that were left.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler


class EpochSampler(Sampler[int]):
    def __init__(
        self,
        num_samples: int,
        *,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        even_shards: bool = True,
        lengths: Sequence[int] | None = None,
        batch_size: int = 1,
        group_window: int = 50,
    ):
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        if batch_size < 1 or group_window < 1:
            raise ValueError(f"batch_size and group_window must be >= 1, got {batch_size}, {group_window}")
        if lengths is not None and len(lengths) != num_samples:
            raise ValueError(f"lengths has {len(lengths)} entries for {num_samples} samples")
        self.num_samples, self.seed, self.rank, self.world_size = num_samples, seed, rank, world_size
        self.shuffle, self.even_shards = shuffle, even_shards
        self.lengths = None if lengths is None else np.asarray(lengths, dtype=np.int64)
        self.batch_size, self.group_window = batch_size, group_window
        self.epoch = 0
        self.start = 0  # position in this rank's shard where the next pass begins
        self._yielded = 0
        self._cache: tuple[int, np.ndarray] | None = None

    # -- order

    def _global_order(self, epoch: int) -> tuple[np.ndarray, np.random.Generator]:
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(self.num_samples) if self.shuffle else np.arange(self.num_samples)
        if self.even_shards:
            # np.resize repeats cyclically: the wrap-around pad, even when world_size > num_samples
            order = np.resize(order, -(-self.num_samples // self.world_size) * self.world_size)
        return order, rng

    def shard(self, epoch: int) -> np.ndarray:
        """This rank's full index order for `epoch`."""
        if self._cache is not None and self._cache[0] == epoch:
            return self._cache[1]
        order, rng = self._global_order(epoch)
        if self.lengths is None:
            shard = order[self.rank :: self.world_size]
        else:
            global_batch = self.batch_size * self.world_size
            window = global_batch * self.group_window
            batches = []
            for w in range(0, len(order), window):
                part = order[w : w + window]
                # stable sort, longest first, so equal lengths keep their random order
                part = part[np.argsort(-self.lengths[part], kind="stable")]
                batches += [part[b : b + global_batch] for b in range(0, len(part), global_batch)]
            full = [b for b in batches if len(b) == global_batch]
            rest = [b for b in batches if len(b) < global_batch]
            if self.shuffle:
                full = [full[i] for i in rng.permutation(len(full))]
            parts = [np.array_split(b, self.world_size)[self.rank] for b in full + rest]
            shard = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
        self._cache = (epoch, shard)
        return shard

    # -- iteration and resume

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch of the next pass. A resume point loaded for this same epoch is kept, so the
        usual `for e in range(start, n): sampler.set_epoch(e); for batch in loader: ...` resumes."""
        if epoch != self.epoch:
            self.epoch, self.start = epoch, 0

    def __iter__(self) -> Iterator[int]:
        shard = self.shard(self.epoch)
        self._yielded = 0
        for index in shard[self.start :]:
            self._yielded += 1
            yield int(index)

    def __len__(self) -> int:
        return len(self.shard(self.epoch)) - self.start

    def state_dict(self, consumed: int | None = None) -> dict:
        """Resume point. `consumed` = samples of this rank the training loop has used in the current
        pass; default: how many the sampler has handed out (DataLoader prefetch runs ahead of that)."""
        done = self._yielded if consumed is None else consumed
        if not 0 <= done <= len(self):
            raise ValueError(f"consumed={done} is outside this pass (0..{len(self)})")
        return {
            "epoch": self.epoch,
            "position": self.start + done,
            "seed": self.seed,
            "num_samples": self.num_samples,
            "world_size": self.world_size,
            "rank": self.rank,
        }

    def load_state_dict(self, state: dict) -> None:
        for key in ("seed", "num_samples", "world_size"):
            if state.get(key) != getattr(self, key):
                raise ValueError(
                    f"sampler state has {key}={state.get(key)!r} but this sampler has {getattr(self, key)!r}; "
                    "the saved order cannot be continued"
                )
        epoch, position = int(state["epoch"]), int(state["position"])
        if not 0 <= position <= len(self.shard(epoch)):
            raise ValueError(f"position {position} is outside epoch {epoch}'s shard of {len(self.shard(epoch))}")
        self.epoch, self.start, self._yielded = epoch, position, 0
