"""WebDataset shards: image–caption pairs packed into `.tar` files, the format img2dataset writes.

One sample is a group of tar members that share a key:

    000123.jpg    the image, raw encoded bytes (png, jpg, jpeg, webp or bmp)
    000123.txt    captions, one per line
    000123.json   optional metadata (img2dataset puts the URL, size and licence here)

`write_shards` packs records into `prefix-000000.tar`, `prefix-000001.tar`, …; `ShardDataset`
streams them back as image tensors, split by node (DDP rank) and by DataLoader worker so that
nobody reads a shard twice in an epoch.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import itertools
import json
import os
import tarfile
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import braceexpand
import torch
from torch.utils.data import IterableDataset, get_worker_info
from webdataset import TarWriter
from webdataset.tariterators import group_by_keys, url_opener

from imagetext.files import atomic_path
from imagetext.images import IMAGE_SUFFIXES, UNREADABLE_IMAGE_ERRORS, ResizeCrop, open_rgb
from imagetext.progress import ProgressBar
from imagetext.seeding import keyed_generator

IMAGE_EXTENSIONS = tuple(suffix.lstrip(".") for suffix in IMAGE_SUFFIXES)
CAPTION_CHOICES = ("random", "first")
# The most bytes a member of a shard may hold, by kind, checked from its header before it is read (a
# GNU-sparse member of a few KB on disk can expand to gigabytes).
MEMBER_CAPS = {"image": 64 << 20, "txt": 1 << 20, "json": 1 << 20}
# A fixed member time makes the same records give byte-identical shards.
TAR_MTIME = 0.0


@dataclass
class ShardRecord:
    """One image–caption pair as it goes into a shard: `key.<image_ext>`, `key.txt` and maybe `key.json`."""

    key: str
    image: bytes
    image_ext: str
    captions: list[str]
    meta: dict | None = None

    def __post_init__(self):
        self.image_ext = self.image_ext.lstrip(".").lower()
        if self.image_ext not in IMAGE_EXTENSIONS:
            raise ValueError(
                f"record {self.key!r}: image_ext must be one of {IMAGE_EXTENSIONS}, got {self.image_ext!r}"
            )
        # webdataset groups members by the name up to the first dot, so a dot in the key would split it.
        if not self.key or "." in self.key or self.key.startswith("__"):
            raise ValueError(f"record key {self.key!r} must be non-empty, contain no '.', and not start with '__'")
        if not self.captions or any(not caption.strip() or "\n" in caption for caption in self.captions):
            raise ValueError(f"record {self.key!r}: give at least one caption, each a non-empty single line")

    def to_sample(self) -> dict[str, str | bytes]:
        """The dict TarWriter stores: extension -> bytes, plus the key."""
        sample: dict[str, str | bytes] = {
            "__key__": self.key,
            self.image_ext: self.image,
            "txt": "\n".join(self.captions).encode("utf-8"),
        }
        if self.meta is not None:
            sample["json"] = json.dumps(self.meta, ensure_ascii=False).encode("utf-8")
        return sample


def write_shards(
    records: Iterable[ShardRecord], out_dir: Path, shard_size: int, prefix: str = "shard", source: str | None = None
) -> list[Path]:
    """Write records into `out_dir/{prefix}-000000.tar`, … with at most `shard_size` records each.

    Each shard is written under a temporary name and renamed when complete, so an interrupted run
    leaves only whole shards. A lock on the folder refuses a second run into it while one writes (two
    runs would mix their shards). While a set is unfinished, `.{prefix}-progress.json` holds the
    `source` (a description of the records), the shard size and the last key of each whole shard: the
    same command run again skips the records of those shards (checking the last key of each) and
    goes on. A folder holding other shards is refused: stale shards would silently join the new set.
    """
    if isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size < 1:
        raise ValueError(f"shard_size must be a positive number of records per shard, got {shard_size!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    progress_path = out_dir / f".{prefix}-progress.json"
    with folder_lock(out_dir / f".{prefix}.lock", f"another run is writing shards into {out_dir}"):
        plan = {"source": source, "shard_size": shard_size}
        last_keys = resumable_shards(out_dir, prefix, progress_path, plan)
        total = len(records) if hasattr(records, "__len__") else None
        remaining = iter(ProgressBar(records, total=total, desc=f"writing shards to {out_dir}", unit="pair"))
        written = [out_dir / shard_name(prefix, index) for index in range(len(last_keys))]
        for index, last_key in enumerate(last_keys):  # what the interrupted run wrote: the same records?
            skipped = collections.deque(itertools.islice(remaining, shard_size), maxlen=1)
            record = skipped[0] if skipped else None
            if record is None or record.key != last_key:
                raise ValueError(
                    f"{written[index]} ends with record {last_key!r} but the source now gives "
                    f"{record.key if record else 'nothing'!r} there: the source changed; write into an empty folder"
                )
        for index in itertools.count(len(last_keys)):
            # islice is lazy: a shard's records are read from the source only while that shard is open.
            shard_records = itertools.islice(remaining, shard_size)
            first = next(shard_records, None)
            if first is None:
                break
            path = out_dir / shard_name(prefix, index)
            with atomic_path(path) as temporary, TarWriter(str(temporary), encoder=False, mtime=TAR_MTIME) as tar:
                for record in itertools.chain([first], shard_records):
                    tar.write(record.to_sample())
            written.append(path)
            last_keys.append(record.key)
            with atomic_path(progress_path) as temporary:
                temporary.write_text(json.dumps({**plan, "last_keys": last_keys}))
        if not written:
            raise ValueError(f"no records to write into {out_dir}: the source is empty")
        progress_path.unlink(missing_ok=True)  # the set is complete
    return written


def shard_name(prefix: str, index: int) -> str:
    return f"{prefix}-{index:06d}.tar"


def resumable_shards(out_dir: Path, prefix: str, progress_path: Path, plan: dict) -> list[str]:
    """The last keys of the whole shards an interrupted run with this `plan` left in `out_dir` (none for
    a folder without shards); an error for shards of another or a finished run."""
    existing = sorted(path.name for path in out_dir.glob(f"{prefix}-*.tar"))
    if not existing:
        return []
    try:
        progress = json.loads(progress_path.read_text())
    except (OSError, ValueError):
        progress = None
    last_keys = progress.get("last_keys") if isinstance(progress, dict) else None
    if (
        plan["source"] is None
        or not isinstance(last_keys, list)
        or {key: progress.get(key) for key in plan} != plan
        or existing != [shard_name(prefix, index) for index in range(len(last_keys))]
    ):
        raise FileExistsError(
            f"{out_dir} already holds shards ({existing[0]}, …) of a finished or another run: "
            "use an empty folder or another prefix"
        )
    return list(last_keys)


@contextlib.contextmanager
def folder_lock(path: Path, busy: str) -> Iterator[None]:
    """Hold an exclusive lock on the file `path` for the block; `busy` is the error when another process
    holds it. The lock goes with the process, so a killed writer leaves no stale lock."""
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if not path.exists() or not os.path.samefile(path, handle.fileno()):
                raise BlockingIOError  # locked the file a finishing writer had just removed
        except BlockingIOError:
            raise RuntimeError(f"{busy}; wait for it to end or use another folder") from None
        try:
            yield
        finally:
            path.unlink(missing_ok=True)
            fcntl.flock(handle, fcntl.LOCK_UN)


def member_cap(name: str) -> int | None:
    """The most bytes a shard member called `name` may hold, or None for a member no sample uses."""
    extension = name.rsplit(".", 1)[-1].lower() if "." in name.rsplit("/", 1)[-1] else ""
    kind = "image" if extension in IMAGE_EXTENSIONS else extension
    return MEMBER_CAPS.get(kind)


def capped_members(stream, shard: str) -> Iterator[dict]:
    """The regular members of a tar stream that samples use, as {"fname", "data", "__url__"}, each read
    only when its header's size is within its cap; the others are passed over unread."""
    with tarfile.open(fileobj=stream, mode="r|*") as tar:
        for member in tar:
            cap = member_cap(member.name)
            if not member.isreg() or cap is None:
                continue
            if member.size > cap:  # its sample then lacks the member, and is skipped and counted
                warnings.warn(
                    f"{shard}: {member.name} holds {member.size} bytes, over the {cap}-byte cap; skipped", stacklevel=2
                )
                continue
            yield {"fname": member.name, "data": tar.extractfile(member).read(), "__url__": shard}
            tar.members = []  # a stream of many members: keep no index of them


def expand_shard_spec(spec: str | Path | Sequence[str | Path]) -> list[str]:
    """Shard paths from a spec: a folder (its `*.tar`, sorted), a brace pattern, a path, or a list of those.

    `data/shard-{000000..000009}.tar` expands to ten paths. Every path must exist.
    """
    if isinstance(spec, (str, Path)):
        spec_path = Path(spec)
        if spec_path.is_dir():
            shards = [str(path) for path in sorted(spec_path.glob("*.tar"))]
        else:
            shards = list(braceexpand.braceexpand(str(spec)))
    else:
        shards = [shard for item in spec for shard in expand_shard_spec(item)]
    if not shards:
        raise FileNotFoundError(
            f"no .tar shards found for {spec!r}: give a folder of .tar files, a brace pattern or paths"
        )
    missing = [shard for shard in shards if not Path(shard).is_file()]
    if missing:
        raise FileNotFoundError(
            f"shard spec {spec!r}: {len(missing)} of {len(shards)} shards do not exist, e.g. {missing[0]}"
        )
    return shards


class ShardDataset(IterableDataset):
    """Stream image–caption samples from webdataset shards, each shard read by one process only.

    Shards are split first by node (`shards[rank::world_size]`), then by DataLoader worker (`workers`,
    for the warning when there are fewer shards than streams). In DDP a rank with fewer samples than
    the others finishes its epoch early and the others hang at the next collective, so use a number of
    shards divisible by world_size × workers, with equal shard sizes.

    Each item is `{"image": [3, S, S] in [-1, 1], "caption", "key", "skipped"}`. `skipped` lists what
    this worker passed over since its previous item: keys of samples with an unreadable image or no
    caption, or `"<shard>: <error>"` for a shard that could not be read to its end. Nothing here raises
    mid-epoch; a collate function can sum `skipped` to report it. Skips after a worker's last item
    are reported as a warning instead.

    With `shuffle_shards` the shard order is a permutation drawn by keyed_generator(seed, epoch), the
    same on every rank; call `set_epoch` before each epoch (it reaches workers unless they are persistent). The
    random caption and crop of a sample are drawn from a generator keyed by (seed, epoch, shard, place
    in the shard), so they do not depend on what a worker read before.

    Resuming mid-epoch: each of a rank's `workers` reads one stream (`node_shards()[stream::workers]`),
    and a DataLoader takes their batches in turn. Items carry `stream` and `position` (how many samples
    of the stream were read up to and including this one, unreadable ones too); `resume(positions,
    first_stream)` makes the next iteration skip each stream's first `positions[stream]` samples unread
    and hand stream `first_stream` to worker 0, so the batches come in the order an uninterrupted
    epoch would have given them.
    """

    def __init__(
        self,
        spec: str | Path | Sequence[str | Path],
        image_size: int,
        random_crop: bool = False,
        caption_choice: str = "random",
        rank: int = 0,
        world_size: int = 1,
        shuffle_shards: bool = False,
        seed: int = 0,
        workers: int = 1,
    ):
        super().__init__()
        if caption_choice not in CAPTION_CHOICES:
            raise ValueError(f"caption_choice must be one of {CAPTION_CHOICES}, got {caption_choice!r}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        self.shards = expand_shard_spec(spec)
        streams = world_size * workers
        if len(self.shards) < streams:
            warnings.warn(
                f"{len(self.shards)} shards for {world_size} ranks x {workers} loader workers = {streams} streams: "
                f"some streams get no shard, and a rank with less data than the others makes DDP hang; "
                f"write at least {streams} shards (a multiple of {streams}, of equal size)",
                stacklevel=2,
            )
        self.resize_crop = ResizeCrop(image_size, random_crop)
        self.caption_choice = caption_choice
        self.rank = rank
        self.world_size = world_size
        self.shuffle_shards = shuffle_shards
        self.seed = seed
        self.epoch = 0
        self.shard_index = {shard: index for index, shard in enumerate(self.shards)}  # keys of the draws
        self.skip: dict[int, int] = {}  # stream -> samples to pass over, for a resumed epoch
        self.first_stream = 0

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.skip, self.first_stream = {}, 0  # a new epoch is read whole
        self.epoch = epoch

    def resume(self, positions: dict[int, int], first_stream: int) -> None:
        """Go on with the current epoch where its streams stood (see the class docstring)."""
        self.skip, self.first_stream = dict(positions), first_stream

    def node_shards(self) -> list[str]:
        """This rank's shards for the current epoch, before the split between workers."""
        shards = self.shards
        if self.shuffle_shards:
            generator = keyed_generator(self.seed, self.epoch)
            shards = [shards[i] for i in torch.randperm(len(shards), generator=generator).tolist()]
        return shards[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[dict]:
        worker = get_worker_info()
        worker_id, workers = (worker.id, worker.num_workers) if worker is not None else (0, 1)
        stream = (worker_id + self.first_stream) % workers
        position, to_skip = 0, self.skip.get(stream, 0)
        skipped: list[str] = []
        for shard in self.node_shards()[stream::workers]:
            shard_index = self.shard_index[shard]
            for place, sample in enumerate(self.read_shard(shard, skipped)):
                position += 1
                if position <= to_skip:
                    continue
                decoded = self.decode(sample, keyed_generator(self.seed, self.epoch, shard_index, place))
                if decoded is None:
                    skipped.append(sample["__key__"])
                    continue
                image, caption = decoded
                yield {
                    "image": image,
                    "caption": caption,
                    "key": sample["__key__"],
                    "skipped": skipped,
                    "stream": stream,
                    "position": position,
                }
                skipped = []
        if skipped:
            warnings.warn(
                f"skipped {len(skipped)} unreadable samples at the end of a worker's shards, e.g. {skipped[0]}",
                stacklevel=2,
            )

    @staticmethod
    def read_shard(shard: str, skipped: list[str]) -> Iterator[dict]:
        """Raw samples (extension -> bytes) of one shard. Only the members a sample uses are read, each
        only when the size its header gives is within MEMBER_CAPS (a sparse or huge member is skipped
        and counted unread); a broken or truncated tar ends the shard early."""
        failed = False

        def note_failure(error: Exception) -> bool:
            # called twice for one broken tar when opening and reading both fail
            nonlocal failed
            if not failed:
                skipped.append(f"{shard}: {type(error).__name__}: {error.args[0] if error.args else error}")
                failed = True
            return True  # go on with whatever can still be read

        def members() -> Iterator[dict]:
            for source in url_opener([{"url": shard}], handler=note_failure):
                try:
                    yield from capped_members(source["stream"], shard)
                except (tarfile.TarError, OSError, EOFError) as error:
                    note_failure(error)

        yield from group_by_keys(members(), handler=note_failure)

    def decode(self, sample: dict, generator: torch.Generator) -> tuple[torch.Tensor, str] | None:
        """(image tensor, chosen caption), or None when the image or the captions are missing or unreadable."""
        image_ext = next((ext for ext in IMAGE_EXTENSIONS if ext in sample), None)
        if image_ext is None or "txt" not in sample:
            return None
        lines = sample["txt"].decode("utf-8", errors="replace").splitlines()
        captions = [line.strip() for line in lines if line.strip()]
        if not captions:
            return None
        try:
            image = self.resize_crop(open_rgb(sample[image_ext]), generator)
        except UNREADABLE_IMAGE_ERRORS:
            return None
        if self.caption_choice == "first":
            return image, captions[0]
        return image, captions[int(torch.randint(len(captions), (), generator=generator))]
