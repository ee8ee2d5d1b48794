import pytest
import pytorch_lightning as pl
import torch
from PIL import Image

from imagetext.datamodule import DataEpochHooks, ImageTextDataModule, collate_image_text
from imagetext.folder import ImageCaptionFolder
from imagetext.shapes import write_shapes_folder
from imagetext.shards import ShardRecord, write_shards


def test_shapes_source_batches_and_disjoint_validation():
    data = ImageTextDataModule(source="shapes", image_size=32, batch_size=4, n_train=12, n_val=6, seed=1)
    batch = next(iter(data.train_dataloader()))
    assert batch["image"].shape == (4, 3, 32, 32) and len(batch["caption"]) == 4
    assert batch["skipped"] == [] and len(batch["labels"]) == 4
    train_captions = [data.train_set[i]["caption"] for i in range(12)]
    val_images = torch.stack([data.val_set[i]["image"] for i in range(6)])
    assert len(data.val_set) == 6
    assert not any(torch.equal(data.train_set[i]["image"], v) for i in range(12) for v in val_images)
    again = ImageTextDataModule(source="shapes", n_train=12, n_val=6, seed=1)
    again.setup("fit")
    assert train_captions == [again.train_set[i]["caption"] for i in range(12)]


def test_folder_source_has_a_deterministic_split(tmp_path):
    write_shapes_folder(tmp_path / "f", n=20, image_size=16)
    splits = []
    for _ in range(2):
        data = ImageTextDataModule(
            source="folder", path=str(tmp_path / "f"), image_size=16, batch_size=5, val_fraction=0.2
        )
        data.setup("fit")
        splits.append(([path for path, _ in data.train_set.items], [path for path, _ in data.val_set.items]))
    (train, val), again = splits[0], splits[1]
    assert (train, val) == again
    assert len(val) == 4 and not set(train) & set(val) and len(set(train)) + len(val) == 20
    batch = next(iter(data.val_dataloader()))
    assert batch["image"].shape == (4, 3, 16, 16)


def test_folder_draws_are_keyed_by_seed_epoch_and_item(tmp_path):
    """A folder's random caption and crop of an item depend on (seed, epoch, item) only, not on which
    worker reads it or what it read before: what makes a mid-epoch resume exact."""
    root = tmp_path / "f"
    root.mkdir()
    for i in range(6):  # wide images: a 16 px square crop has 17 places to be
        noise = torch.randint(256, (16, 32, 3), generator=torch.Generator().manual_seed(i), dtype=torch.uint8)
        Image.fromarray(noise.numpy()).save(root / f"{i}.png")
        (root / f"{i}.txt").write_text("\n".join(f"caption {i} line {k}" for k in range(8)))
    data = ImageCaptionFolder(root, image_size=16, random_crop=True, seed=3)

    def epoch_items(dataset, epoch, order):
        dataset.set_epoch(epoch)
        items = {i: dataset[i] for i in order}
        return [(items[i]["caption"], items[i]["image"]) for i in range(len(dataset))]

    forward = epoch_items(data, 1, range(6))
    backward = epoch_items(ImageCaptionFolder(root, image_size=16, random_crop=True, seed=3), 1, reversed(range(6)))
    assert all(a[0] == b[0] and torch.equal(a[1], b[1]) for a, b in zip(forward, backward))
    other_epoch = epoch_items(data, 2, range(6))
    assert [caption for caption, _ in forward] != [caption for caption, _ in other_epoch]
    assert not all(torch.equal(a[1], b[1]) for a, b in zip(forward, other_epoch))


def test_wds_source_uses_the_last_shard_for_validation(tmp_path):
    def records():
        for i in range(9):
            buffer = tmp_path / "x.png"
            Image.new("RGB", (16, 16), (i * 20, 0, 0)).save(buffer)
            yield ShardRecord(f"k{i}", buffer.read_bytes(), "png", [f"caption {i}"])

    write_shards(records(), tmp_path / "shards", shard_size=3)
    data = ImageTextDataModule(source="wds", path=str(tmp_path / "shards"), image_size=16, batch_size=4)
    train = [c for batch in data.train_dataloader() for c in batch["caption"]]
    val = [c for batch in data.val_dataloader() for c in batch["caption"]]
    assert sorted(train) == [f"caption {i}" for i in range(6)]
    assert val == [f"caption {i}" for i in range(6, 9)]


def test_the_epoch_reaches_an_iterable_training_set():
    class Recorder(torch.utils.data.IterableDataset):
        epochs = []

        def set_epoch(self, epoch):
            self.epochs.append(epoch)

        def __iter__(self):
            yield {"image": torch.zeros(3, 4, 4), "caption": "x"}

    class Tiny(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(()))

        def training_step(self, batch, batch_idx):
            return (self.weight - batch["image"].mean()) ** 2

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    loader = torch.utils.data.DataLoader(Recorder(), batch_size=1, collate_fn=collate_image_text)
    trainer = pl.Trainer(
        max_epochs=3,
        callbacks=[DataEpochHooks()],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(Tiny(), loader)
    assert Recorder.epochs == [0, 1, 2]


def test_bad_configuration_is_a_clear_error():
    with pytest.raises(ValueError, match="needs data.path"):
        ImageTextDataModule(source="folder")
    with pytest.raises(ValueError, match="shapes, folder or wds"):
        ImageTextDataModule(source="lmdb")


def test_training_order_is_a_function_of_seed_and_epoch():
    from imagetext.datamodule import EpochShuffle

    sampler = EpochShuffle(50, seed=3)
    first = list(sampler)
    assert sorted(first) == list(range(50)) and first == list(EpochShuffle(50, seed=3))
    sampler.set_epoch(1)
    assert list(sampler) != first


def test_under_ddp_each_rank_reads_its_own_part_of_the_epoch():
    """3 ranks over 50 items: disjoint parts of the same order, as many for each (the 2 left over are
    read by nobody this epoch), and a rank resumed after 4 items goes on with the same ones."""
    from imagetext.datamodule import EpochShuffle

    parts = [list(EpochShuffle(50, seed=3, epoch=2, rank=rank, world_size=3)) for rank in range(3)]
    assert [len(part) for part in parts] == [16, 16, 16]
    assert len(set().union(*parts)) == 48
    order = list(EpochShuffle(50, seed=3, epoch=2))
    assert parts[1] == order[1:48:3]
    resumed = EpochShuffle(50, seed=3, epoch=2, skip=4, rank=1, world_size=3)
    assert list(resumed) == parts[1][4:] and len(resumed) == 16
