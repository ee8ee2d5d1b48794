"""WebDataset shards: write -> read round trip, node and worker splits, spec expansion, bad data."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import time
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from webdataset import TarWriter

from imagetext.images import open_rgb, pil_to_tensor
from imagetext.shards import MEMBER_CAPS, ShardDataset, ShardRecord, expand_shard_spec, member_cap, write_shards


def encoded_image(seed: int, size: int = 16, ext: str = "png") -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG" if ext == "jpg" else "PNG")
    return buffer.getvalue()


def make_records(count: int, tag: str = "r") -> list[ShardRecord]:
    return [ShardRecord(f"{tag}{i:03d}", encoded_image(i), "png", [f"caption {i}"]) for i in range(count)]


def write_four_shards(tmp_path):
    """4 shards × 3 records; the key says which shard a record is in (s2_001 is record 1 of shard 2)."""
    records = [
        ShardRecord(f"s{s}_{i:03d}", encoded_image(10 * s + i), "png", [f"c{s}{i}"]) for s in range(4) for i in range(3)
    ]
    return write_shards(records, tmp_path / "shards", shard_size=3)


def test_round_trip_keeps_images_captions_and_meta(tmp_path):
    records = [
        ShardRecord("a", encoded_image(1), "png", ["a red circle", "a round red thing"], meta={"url": "x", "w": 16}),
        ShardRecord("b", encoded_image(2, ext="jpg"), "jpg", ["a blue square"]),
    ]
    paths = write_shards(records, tmp_path, shard_size=10)

    with tarfile.open(paths[0]) as tar:
        names = tar.getnames()
        meta = json.load(tar.extractfile("a.json"))
    assert sorted(names) == ["a.json", "a.png", "a.txt", "b.jpg", "b.txt"]
    assert meta == {"url": "x", "w": 16}

    samples = list(ShardDataset(paths, image_size=16, caption_choice="first"))
    assert [s["key"] for s in samples] == ["a", "b"]
    assert [s["caption"] for s in samples] == ["a red circle", "a blue square"]
    for sample, record in zip(samples, records):
        assert sample["skipped"] == []
        assert sample["image"].shape == (3, 16, 16)
        assert torch.equal(sample["image"], pil_to_tensor(open_rgb(record.image)))


def test_random_caption_draws_every_line(tmp_path):
    captions = ["one", "two", "three"]
    paths = write_shards([ShardRecord("k", encoded_image(0), "png", captions)], tmp_path, shard_size=1)
    dataset = ShardDataset(paths, image_size=16)
    drawn = set()
    for epoch in range(30):  # one draw per sample and epoch, keyed: the same epoch draws the same
        dataset.set_epoch(epoch)
        caption = next(iter(dataset))["caption"]
        assert next(iter(dataset))["caption"] == caption
        drawn.add(caption)
    assert drawn == set(captions)


def test_reads_img2dataset_layout(tmp_path):
    """img2dataset writes key.jpg + key.txt (one caption, no newline) + key.json."""
    path = tmp_path / "00000.tar"
    with TarWriter(str(path), encoder=False) as tar:
        tar.write(
            {
                "__key__": "000000000",
                "jpg": encoded_image(3, 24, "jpg"),
                "txt": b"a photo",
                "json": b'{"status": "success"}',
            }
        )
    (sample,) = list(ShardDataset(str(path), image_size=16))
    assert (sample["key"], sample["caption"], sample["image"].shape) == ("000000000", "a photo", (3, 16, 16))


def test_worker_split_reads_each_shard_in_one_worker(tmp_path):
    class WithWorkerId(IterableDataset):
        def __init__(self, dataset):
            self.dataset = dataset

        def __iter__(self):
            worker = get_worker_info().id
            for sample in self.dataset:
                yield {"key": sample["key"], "worker": worker}

    write_four_shards(tmp_path)
    loader = DataLoader(WithWorkerId(ShardDataset(tmp_path / "shards", image_size=16)), batch_size=None, num_workers=2)
    seen = list(loader)

    keys = [item["key"] for item in seen]
    assert sorted(keys) == sorted(f"s{s}_{i:03d}" for s in range(4) for i in range(3))
    shards_by_worker = {w: {item["key"][:2] for item in seen if item["worker"] == w} for w in (0, 1)}
    assert shards_by_worker[0] and shards_by_worker[1]
    assert not shards_by_worker[0] & shards_by_worker[1]


def test_rank_split_is_disjoint_and_complete(tmp_path):
    write_four_shards(tmp_path)
    spec = tmp_path / "shards"
    per_rank = [{s["key"] for s in ShardDataset(spec, image_size=16, rank=r, world_size=2)} for r in (0, 1)]
    assert len(per_rank[0]) == len(per_rank[1]) == 6
    assert not per_rank[0] & per_rank[1]
    assert len(per_rank[0] | per_rank[1]) == 12


def test_shard_shuffle_is_seeded_per_epoch_and_keeps_ranks_disjoint(tmp_path):
    paths = write_shards(make_records(8), tmp_path, shard_size=1)
    ranks = [ShardDataset(paths, image_size=16, rank=r, world_size=2, shuffle_shards=True, seed=3) for r in (0, 1)]
    orders = []
    for epoch in range(4):
        for dataset in ranks:
            dataset.set_epoch(epoch)
        first, second = (dataset.node_shards() for dataset in ranks)
        assert not set(first) & set(second) and len(set(first) | set(second)) == 8
        orders.append(first + second)
    assert len({tuple(order) for order in orders}) > 1
    ranks[0].set_epoch(2)
    assert ranks[0].node_shards() == orders[2][:4]


def test_folder_brace_and_list_specs_expand_alike(tmp_path):
    paths = [str(p) for p in write_four_shards(tmp_path)]
    assert expand_shard_spec(tmp_path / "shards") == paths
    assert expand_shard_spec(str(tmp_path / "shards" / "shard-{000000..000003}.tar")) == paths
    assert expand_shard_spec(paths) == paths


def test_bad_specs_say_which_spec(tmp_path):
    (tmp_path / "empty").mkdir()
    for spec in [tmp_path / "empty", tmp_path / "nothing-here", str(tmp_path / "s-{0..3}.tar")]:
        with pytest.raises(FileNotFoundError, match="nothing-here|empty|s-\\{0..3\\}"):
            expand_shard_spec(spec)


def test_corrupt_image_and_missing_caption_are_skipped_and_reported(tmp_path):
    path = tmp_path / "mixed.tar"
    truncated = encoded_image(5)[:40]
    with TarWriter(str(path), encoder=False) as tar:
        tar.write({"__key__": "good1", "png": encoded_image(1), "txt": b"fine"})
        tar.write({"__key__": "corrupt", "png": truncated, "txt": b"broken image"})
        tar.write({"__key__": "garbage", "jpg": b"not an image at all", "txt": b"junk"})
        tar.write({"__key__": "nocaption", "png": encoded_image(2)})
        tar.write({"__key__": "good2", "png": encoded_image(3), "txt": b"also fine"})
    samples = list(ShardDataset(str(path), image_size=16))
    assert [s["key"] for s in samples] == ["good1", "good2"]
    assert samples[0]["skipped"] == []
    assert samples[1]["skipped"] == ["corrupt", "garbage", "nocaption"]


def test_truncated_shard_is_reported_not_raised(tmp_path):
    (whole,) = write_shards(make_records(6), tmp_path / "a", shard_size=6)
    data = whole.read_bytes()
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "0.tar").write_bytes(data[: len(data) // 2])
    (tmp_path / "b" / "1.tar").write_bytes(data)
    samples = list(ShardDataset(tmp_path / "b", image_size=16))
    assert 6 < len(samples) < 12
    reports = [entry for s in samples for entry in s["skipped"] if entry.startswith(str(tmp_path / "b" / "0.tar"))]
    assert len(reports) == 1


def test_shards_are_complete_and_no_temporary_files_remain(tmp_path):
    paths = write_shards(make_records(7), tmp_path, shard_size=3, prefix="part")
    assert [p.name for p in paths] == ["part-000000.tar", "part-000001.tar", "part-000002.tar"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [p.name for p in paths]
    counts = [len(tarfile.open(p).getnames()) // 2 for p in paths]
    assert counts == [3, 3, 1]


def test_interrupted_write_leaves_only_finished_shards(tmp_path):
    def failing_source():
        yield from make_records(4)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_shards(failing_source(), tmp_path, shard_size=3)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".shard-progress.json", "shard-000000.tar"]
    assert len(tarfile.open(tmp_path / "shard-000000.tar").getnames()) == 6


def test_an_interrupted_write_resumes_where_it_stopped(tmp_path):
    """Run again with the same source, a write interrupted after 2 of 4 shards keeps them and writes the
    rest: the same bytes as one straight run; a changed source or another plan is refused."""
    records = make_records(11)
    straight = write_shards(records, tmp_path / "straight", shard_size=3, source="eleven")

    def interrupted_after(count):
        yield from records[:count]
        raise KeyboardInterrupt

    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        write_shards(interrupted_after(7), out, shard_size=3, source="eleven")
    assert sorted(p.name for p in out.glob("*.tar")) == ["shard-000000.tar", "shard-000001.tar"]
    with pytest.raises(FileExistsError, match="another run"):
        write_shards(records, out, shard_size=4, source="eleven")  # another shard size
    with pytest.raises(FileExistsError, match="another run"):
        write_shards(records, out, shard_size=3)  # no source to check against
    with pytest.raises(ValueError, match="the source changed"):
        write_shards(make_records(11, tag="x"), out, shard_size=3, source="eleven")
    resumed = write_shards(records, out, shard_size=3, source="eleven")
    assert [p.name for p in resumed] == [p.name for p in straight]
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(resumed, straight))
    assert sorted(p.name for p in out.iterdir()) == [p.name for p in straight]  # no progress file or lock left
    with pytest.raises(FileExistsError, match="finished or another run"):
        write_shards(records, out, shard_size=3, source="eleven")


def test_a_second_writer_into_the_same_folder_is_refused(tmp_path):
    """While one run writes shards into a folder (holding its lock), another is refused at once."""
    writing, go_on = tmp_path / "writing", tmp_path / "go-on"
    script = f"""
import pathlib, time
from imagetext.shards import ShardRecord, write_shards
from test_shards import make_records
def slow():
    yield from make_records(2)
    pathlib.Path({str(writing)!r}).touch()
    while not pathlib.Path({str(go_on)!r}).exists():
        time.sleep(0.05)
    yield from make_records(4)[2:]
write_shards(slow(), pathlib.Path({str(tmp_path / "out")!r}), shard_size=2, source="slow")
"""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.path.dirname(__file__), os.environ.get("PYTHONPATH", "")])}
    first = subprocess.Popen([sys.executable, "-c", script], env=env)
    try:
        for _ in range(600):
            if writing.exists() or first.poll() is not None:
                break
            time.sleep(0.05)
        assert writing.exists()
        with pytest.raises(RuntimeError, match="another run is writing shards into"):
            write_shards(make_records(4), tmp_path / "out", shard_size=2, source="slow")
    finally:
        go_on.touch()
        assert first.wait(timeout=60) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["shard-000000.tar", "shard-000001.tar"]


def test_bad_arguments_are_clear_errors(tmp_path):
    for shard_size in (0, -1, 2.5):
        with pytest.raises(ValueError, match="shard_size"):
            write_shards(make_records(1), tmp_path / "x", shard_size=shard_size)
    with pytest.raises(ValueError, match="empty"):
        write_shards([], tmp_path / "y", shard_size=2)
    write_shards(make_records(1), tmp_path / "z", shard_size=2)
    with pytest.raises(FileExistsError, match="already holds"):
        write_shards(make_records(1), tmp_path / "z", shard_size=2)
    with pytest.raises(ValueError, match="'a.b'"):
        ShardRecord("a.b", b"", "png", ["c"])
    with pytest.raises(ValueError, match="caption"):
        ShardRecord("a", b"", "png", [])


def test_fewer_shards_than_ranks_times_workers_warns_with_the_numbers(tmp_path):
    paths = write_shards(make_records(3), tmp_path, shard_size=1)
    with pytest.warns(UserWarning, match="3 shards for 2 ranks x 2 loader workers = 4 streams.*DDP hang"):
        ShardDataset(paths, image_size=16, rank=1, world_size=2, workers=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ShardDataset(paths, image_size=16, rank=1, world_size=3)


def test_a_sparse_member_is_skipped_from_its_header_without_being_read(tmp_path):
    """`tar --sparse` packs a 3 GB file of zeros into 10 KB; reading it whole would take gigabytes."""
    (tmp_path / "big.png").touch()
    os.truncate(tmp_path / "big.png", 3 << 30)
    (tmp_path / "big.txt").write_text("a huge image")
    (tmp_path / "ok.png").write_bytes(encoded_image(1))
    (tmp_path / "ok.txt").write_text("fine")
    shard = tmp_path / "b-000000.tar"
    subprocess.run(
        ["tar", "--sparse", "-cf", str(shard), "big.png", "big.txt", "ok.png", "ok.txt"], cwd=tmp_path, check=True
    )
    (tmp_path / "big.png").unlink()
    assert shard.stat().st_size < 100_000
    with pytest.warns(UserWarning, match=r"big.png holds 3221225472 bytes, over the 67108864-byte cap"):
        samples = list(ShardDataset(str(shard), image_size=16))
    assert [s["key"] for s in samples] == ["ok"] and samples[0]["skipped"] == ["big"]
    # the same read in a fresh process, for its own peak memory
    code = (
        "import resource, warnings; from imagetext.shards import ShardDataset; warnings.simplefilter('ignore'); "
        f"list(ShardDataset({str(shard)!r}, image_size=16)); print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
    )
    peak_kb = int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert peak_kb < 2 << 20  # KB: well under the 3 GB the member would take


def test_member_caps_by_kind():
    assert member_cap("a/b.PNG") == MEMBER_CAPS["image"] and member_cap("x.txt") == MEMBER_CAPS["txt"]
    assert member_cap("x.json") == MEMBER_CAPS["json"] and member_cap("x.npy") is None and member_cap("README") is None
