"""Training data for distillation: one small protocol, three sources, and safetensors caches.

A source is a map-style dataset: `len(source)` samples, `source[i]` a dict of tensors without a batch dim:
  `latents` [C, F, H, W] clean x0 (noised by the loop)  -- or --  `noisy` [C, F, H, W] + `sigma` [] (a given x_t),
  `context` [L, 4096] umT5 embedding, optional `negative_context` [L, 4096], `image_latents`, `image_clip`,
  and in a teacher-target cache `v_teacher` [C, F, H, W], `v_task`, `feat.<teacher block>` [N, dim].
Sources: `SyntheticSource` (tests, demos), `CachedSource` (a directory written by `ShardWriter`: real latents,
teacher trajectories, or teacher targets). A cache is `manifest.json` + `shard-#####.safetensors`; never pickle.
"""

from __future__ import annotations

import bisect
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Iterable, Iterator

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..errors import DestinationExistsError, FormatError, WanliteError
from ..formats.io import clean_stale, inside, swap_into_place

FORMAT = "wanlite-data"
KINDS = ("latents", "prompts", "trajectory", "targets", "ode", "synthetic")  # prompts: embeddings only (data-free)
RAGGED = ("context", "negative_context")  # stored without their zero padding, re-padded on read


class SyntheticSource(torch.utils.data.Dataset):
    """Random clean latents and prompt embeddings, reproducible per index (tests and quick demos)."""

    kind = "synthetic"

    def __init__(
        self,
        n: int = 64,
        latent_shape=(16, 1, 8, 8),
        text_tokens: int = 8,
        text_len: int = 16,
        text_dim: int = 4096,
        seed: int = 0,
        negative: bool = True,
    ):
        self.n, self.shape, self.tokens, self.text_len, self.text_dim = (
            n,
            tuple(latent_shape),
            text_tokens,
            text_len,
            text_dim,
        )
        self.seed, self.negative = seed, negative

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < self.n:
            raise IndexError(i)
        g = torch.Generator().manual_seed(self.seed * 100_003 + i)
        context = torch.zeros(self.text_len, self.text_dim)
        context[: self.tokens] = torch.randn(self.tokens, self.text_dim, generator=g)
        item = {"latents": torch.randn(self.shape, generator=g), "context": context}
        if self.negative:  # one "empty prompt": the same single token for every sample
            neg = torch.zeros(self.text_len, self.text_dim)
            neg[0] = torch.randn(self.text_dim, generator=torch.Generator().manual_seed(self.seed - 1))
            item["negative_context"] = neg
        return item

    def __repr__(self) -> str:
        return f"SyntheticSource({self.n} samples, latents {self.shape}, context [{self.text_len}, {self.text_dim}])"


# ------------------------------------------------------------------ safetensors caches
class ShardWriter:
    """Writes samples to a cache directory, `shard_size` per safetensors file, atomically (a temp dir renamed
    on `close`). `wanlite encode` makes one from videos and captions (see `train.encode`); by hand:

        with ShardWriter("data/my-clips", kind="latents") as w:
            for video, prompt in clips:
                w.add(latents=vae_encode(video)[0], context=umt5(prompt)[0], negative_context=umt5("")[0])

    `append=True` writes straight into `out` instead, continuing the cache there (or starting it): each shard is
    renamed into place and the manifest rewritten after it, so a killed run loses at most the shard being written.
    `add(record=...)` stores a small JSON record per sample in its shard's manifest entry (`encode`: the source).
    """

    def __init__(
        self,
        out,
        kind: str = "latents",
        shard_size: int = 64,
        meta: dict | None = None,
        overwrite: bool = False,
        append: bool = False,
    ):
        if kind not in KINDS:
            raise WanliteError(f"ShardWriter kind={kind!r}; expected one of {KINDS}.")
        self.out, self.kind, self.shard_size, self.meta = Path(out), kind, shard_size, dict(meta or {})
        self.pending: list[dict] = []
        self.records: list = []
        self.shards: list[dict] = []
        self.shapes: dict[str, tuple] = {}
        self.count = 0
        self.append = append
        if append:
            self.tmp = self.out
            self.out.mkdir(parents=True, exist_ok=True)
            if (self.out / "manifest.json").is_file():
                old = CachedSource(self.out).manifest
                if old["kind"] != kind:
                    raise WanliteError(f"{self.out} holds a {old['kind']!r} cache; cannot append {kind!r} samples.")
                self.shards, self.count = old["shards"], old["count"]
                self.shapes = {k: tuple(v) for k, v in old["shapes"].items()}
            return
        if self.out.exists() and not overwrite:
            raise DestinationExistsError(f"{self.out} already exists; choose another directory or pass overwrite=True.")
        if self.out.exists() and not _is_cache(self.out):  # overwrite replaces a cache, never anything else
            raise DestinationExistsError(
                f"{self.out} exists and is not a wanlite data cache (no manifest.json of format {FORMAT!r}, or "
                "other files beside its shards); overwrite replaces only a cache. Fix: choose another directory."
            )
        self.out.parent.mkdir(parents=True, exist_ok=True)
        clean_stale(self.out.parent)
        self.tmp = self.out.with_name(f".{self.out.name}.wanlite-tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        self.tmp.mkdir()

    def add(self, record=None, **tensors: torch.Tensor) -> None:
        """Add one sample (tensors without batch dim). Every sample must have the same keys and shapes."""
        item = {k: v.detach().cpu().contiguous() for k, v in tensors.items() if v is not None}
        shapes = {k: tuple(v.shape) for k, v in item.items()}
        if not self.shapes:
            self.shapes = shapes
        elif shapes != self.shapes:
            raise WanliteError(
                f"sample {self.count} has tensors {shapes}; this cache holds {self.shapes}. A cache "
                "holds one resolution and one set of keys: write one cache per resolution."
            )
        self.pending.append(item)
        self.records.append(record)
        self.count += 1
        if len(self.pending) == self.shard_size:
            self._flush()

    def add_batch(self, **tensors: torch.Tensor) -> None:
        """Add B samples given as [B, ...] tensors."""
        n = next(iter(tensors.values())).shape[0]
        for i in range(n):
            self.add(**{k: v[i] for k, v in tensors.items() if v is not None})

    def _flush(self) -> None:
        if not self.pending:
            return
        data = {}
        for key in self.pending[0]:
            rows = [item[key] for item in self.pending]
            if key in RAGGED:  # drop the trailing zero padding: a 512-token umT5 context is mostly zeros
                lengths = [int(r.abs().sum(-1).nonzero().max()) + 1 if r.abs().sum() > 0 else 0 for r in rows]
                data[key] = torch.cat([r[:n] for r, n in zip(rows, lengths)]) if sum(lengths) else rows[0][:1]
                data[f"{key}.offsets"] = torch.tensor([0] + lengths).cumsum(0)
            else:
                data[key] = torch.stack(rows)
        name = f"shard-{len(self.shards):05d}.safetensors"
        part = self.tmp / f".{name}.part"
        save_file(data, str(part), metadata={"format": FORMAT, "kind": self.kind})
        os.replace(part, self.tmp / name)
        shard = {"file": name, "count": len(self.pending)}
        if any(r is not None for r in self.records):
            shard["records"] = self.records
        self.shards.append(shard)
        self.pending, self.records = [], []
        if self.append:
            self._write_manifest()

    def _write_manifest(self) -> None:
        manifest = {
            "format": FORMAT,
            "version": 1,
            "kind": self.kind,
            "count": self.count,
            "shards": self.shards,
            "shapes": {k: list(v) for k, v in self.shapes.items()},
            "meta": self.meta,
        }
        part = self.tmp / ".manifest.json.part"
        part.write_text(json.dumps(manifest, indent=1, ensure_ascii=False))
        os.replace(part, self.tmp / "manifest.json")

    def close(self) -> Path:
        """Write the last shard and the manifest, then move the cache into place."""
        self._flush()
        self._write_manifest()
        if not self.append:
            swap_into_place(self.tmp, self.out)
        return self.out

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, *rest) -> None:
        if exc_type is None:
            self.close()
        elif not self.append:  # appending: the shards written so far stay (the manifest lists only those)
            shutil.rmtree(self.tmp, ignore_errors=True)


SKIPPED = "skipped.jsonl"  # `wanlite encode`'s list of inputs it skipped, beside the shards


def _is_cache(folder: Path) -> bool:
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
    except (OSError, ValueError):
        return False
    names = {p.name for p in folder.iterdir()}
    shards = {s.get("file") for s in manifest.get("shards", []) if isinstance(s, dict)}
    return manifest.get("format") == FORMAT and names <= shards | {"manifest.json", SKIPPED}


class CachedSource(torch.utils.data.Dataset):
    """A cache directory read lazily, one sample at a time (memory-mapped safetensors slices)."""

    def __init__(self, path):
        self.path = Path(path)
        manifest_path = self.path / "manifest.json"
        if not manifest_path.is_file():
            raise FormatError(
                f"{self.path}: no manifest.json; expected a wanlite data cache written by "
                "wanlite.data.ShardWriter (or train.caches.write_trajectories / write_teacher_targets)."
            )
        fix = "Fix: write the cache again (ShardWriter, write_trajectories or write_teacher_targets)."
        try:
            self.manifest = json.loads(manifest_path.read_text())
            if self.manifest.get("format") != FORMAT:
                raise FormatError(f"{manifest_path}: format={self.manifest.get('format')!r}, expected {FORMAT!r}.")
            self.kind, self.meta, self.shapes = (
                self.manifest["kind"],
                self.manifest.get("meta", {}),
                self.manifest["shapes"],
            )
            self.starts, self.files = [0], []
            for shard in self.manifest["shards"]:
                self.starts.append(self.starts[-1] + int(shard["count"]))
                self.files.append(inside(self.path, shard["file"], manifest_path))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            raise FormatError(
                f"{manifest_path}: not a readable cache manifest ({type(err).__name__}: {err}). {fix}"
            ) from None
        self._open: dict = {}

    def __len__(self) -> int:
        return self.starts[-1]

    def _shard(self, s: int):
        key = (os.getpid(), s)  # handles are per process: DataLoader workers open their own
        if key not in self._open:
            try:
                self._open[key] = safe_open(str(self.files[s]), framework="pt")
            except Exception as err:  # safetensors' own error type: a missing, truncated or foreign shard
                raise FormatError(
                    f"{self.files[s]}: unreadable cache shard ({err}). Fix: write the cache again."
                ) from None
        return self._open[key]

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < len(self):
            raise IndexError(i)
        s = bisect.bisect_right(self.starts, i) - 1
        j, f = i - self.starts[s], self._shard(s)
        item = {}
        for key in self.shapes:
            if key in RAGGED:
                offsets = f.get_tensor(f"{key}.offsets")
                rows = f.get_slice(key)[int(offsets[j]) : int(offsets[j + 1])]
                padded = torch.zeros(self.shapes[key], dtype=rows.dtype)
                padded[: rows.shape[0]] = rows
                item[key] = padded
            else:
                item[key] = f.get_slice(key)[j]
        return item

    def __getstate__(self):
        return {**self.__dict__, "_open": {}}

    def __repr__(self) -> str:
        return f"CachedSource({self.path}, kind={self.kind}, {len(self)} samples, keys {sorted(self.shapes)})"


def open_source(data, **synthetic) -> torch.utils.data.Dataset:
    """A source from a config value: a dataset object as is, "synthetic", or a cache directory."""
    if isinstance(data, torch.utils.data.Dataset):
        return data
    if data == "synthetic":
        return SyntheticSource(**synthetic)
    return CachedSource(data)


# ------------------------------------------------------------------ batching
def split(n: int, holdout: int, seed: int) -> tuple[list[int], list[int]]:
    """(train indices, held-out indices): a seeded random holdout, so validation never sees training samples."""
    if holdout >= n:
        raise WanliteError(f"val_samples={holdout} leaves no training data from {n} samples; lower val_samples.")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 7919)).tolist()
    return sorted(perm[holdout:]), sorted(perm[:holdout])


def collate(items: list[dict]) -> dict:
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}


class Batches:
    """This process's batches from micro-batch `start` on: global micro-batch k takes positions
    [k*G, (k+1)*G) of a permutation redrawn (seeded) each epoch, G = batch_size * world; rank r takes
    its slice. The order depends only on (seed, k), so resuming and changing process count keep it."""

    def __init__(
        self,
        source,
        indices: list[int],
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world: int = 1,
        num_workers: int = 0,
    ):
        self.source, self.indices, self.batch_size = source, indices, batch_size
        self.seed, self.rank, self.world, self.num_workers = seed, rank, world, num_workers
        self.global_batch = batch_size * world
        if len(indices) < self.global_batch:
            raise WanliteError(
                f"{len(indices)} training samples cannot fill one global batch of {self.global_batch} "
                f"(batch_size {batch_size} x {world} processes); add data or lower batch_size."
            )
        self.per_epoch = len(indices) // self.global_batch

    def keys(self, k: int) -> list[int]:
        """Global draw indices of this rank's samples in micro-batch k (they key each sample's noise)."""
        first = k * self.global_batch + self.rank * self.batch_size
        return list(range(first, first + self.batch_size))

    def _rank_indices(self, k: int, perm_cache: dict) -> list[int]:
        epoch, pos = divmod(k, self.per_epoch)
        if epoch not in perm_cache:
            perm_cache.clear()
            perm_cache[epoch] = torch.randperm(
                len(self.indices), generator=torch.Generator().manual_seed(self.seed + epoch)
            )
        lo = pos * self.global_batch + self.rank * self.batch_size
        return [self.indices[i] for i in perm_cache[epoch][lo : lo + self.batch_size].tolist()]

    def iterate(self, start: int, stop: int) -> Iterator[tuple[int, dict]]:
        """(micro-batch index, batch) for k in [start, stop)."""
        perm_cache: dict = {}
        sampler = [self._rank_indices(k, perm_cache) for k in range(start, stop)]
        loader = torch.utils.data.DataLoader(
            self.source,
            batch_sampler=sampler,
            collate_fn=collate,
            num_workers=self.num_workers,
            pin_memory=torch.cuda.is_available(),
        )
        yield from zip(range(start, stop), loader)


def fixed_batch(source, indices: Iterable[int]) -> dict:
    """The held-out samples as one batch."""
    return collate([source[i] for i in indices])
