"""Training a CLIP on the project's image–caption pairs with Lightning.

    clip-rerank fit -c configs/clip_rerank/shapes.yaml

The model is any open_clip architecture, built through `clip_rerank.load` (one of the small JSON
configs in configs/clip_rerank/, any open_clip name, optionally with pretrained weights to fine-tune).
Images go through the same tensor preprocessing as at inference (`Scorer.preprocess`), so a trained
model scores exactly as it was trained. A step is open_clip's recipe at small scale: ClipLoss with
the learnable temperature (`logit_scale`, clamped to ln 100 after every step as open_clip does),
AdamW with weight decay on matrices only, linear warmup then cosine decay per batch.

Augmentation is a random crop of most of the image, resized back (a small zoom and shift).
Horizontal flips are off by default: they would make "to the left of" captions false. On shapes,
`hard_negatives` adds for each image a caption false by one attribute (NegCLIP's hard negatives).
Every draw comes from a generator seeded by (seed, global_step), so a resumed run draws what the
straight run drew.

Validation embeds every held-out pair and, at the end of the epoch, logs retrieval among all of them
(`retrieval_accuracy`) and, on shapes, zero-shot attribute accuracy (`attribute_hits`).
bf16 autocast is Lightning's `trainer.precision: bf16-mixed`.
"""

from __future__ import annotations

import math
from typing import Any

import open_clip
import pytorch_lightning as pl
import torch
import torch.distributed.nn.functional
import torch.nn.functional as F
from einops import rearrange

from clip_rerank.load import STAGE, load, metadata
from imagetext.seeding import keyed_generator
from imagetext.shapes_contrasts import (
    ATTRIBUTES,
    hard_negative_captions,
    one_attribute_swaps,
    order_swap_captions,
    scene_from_labels,
    with_reflected_pairs,
)
from imagetext.training import WarmupCosine, compile_in_place, fit_schedule_to_trainer

MAX_LOGIT_SCALE = math.log(100)  # open_clip's clamp: a temperature of at least 1/100
REFLECT_TO = ("opposite", "any")


def random_crop(images: torch.Tensor, generator: torch.Generator, min_side: float, flip: bool = False) -> torch.Tensor:
    """Each image [B,3,H,W] cropped to a random window min_side…1 times its size at a random place,
    resized back to H×W, and mirrored left–right with probability 1/2 when `flip`.

    One affine resampling per image; the crop lies inside the image, so no border is ever invented.
    The draws come from `generator` (a CPU generator, so any device gives the same crops).
    """
    batch = len(images)
    side = min_side + (1 - min_side) * torch.rand(batch, generator=generator)
    # grid_sample works in [-1, 1] coordinates: a crop of side s may be centred anywhere within ±(1 - s).
    center = rearrange(1 - side, "b -> b 1") * (2 * torch.rand(batch, 2, generator=generator) - 1)
    mirror = torch.ones(batch)
    if flip:
        mirror = torch.where(torch.rand(batch, generator=generator) < 0.5, -1.0, 1.0)
    theta = torch.zeros(batch, 2, 3)
    theta[:, 0, 0], theta[:, 1, 1] = side * mirror, side
    theta[:, :, 2] = center
    grid = F.affine_grid(theta.to(images.device, images.dtype), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def retrieval_accuracy(
    image_features: torch.Tensor, text_features: torch.Tensor, caption_ids: torch.Tensor, ks: tuple[int, ...] = (1, 5)
) -> dict[str, float]:
    """Image→text and text→image top-k retrieval among N pairs, counting identical captions as one.

    `image_features`, `text_features`: unit-length [N, D], row i of each from pair i; `caption_ids` [N]:
    equal ids mark identical captions (shapes repeats its 36 one-object captions often). Identical
    captions have identical embeddings, so telling their images apart is impossible and not asked:
    - image→text ranks the distinct captions; a hit when the image's own caption is among the top k;
    - text→image asks each pair's caption for all N images; a hit when an image carrying that same
      caption is among the top k (each of the N pairs is one query, as in ordinary retrieval).
    Ties go to the correct answer. Returns {"i2t_top1": …, "t2i_top1": …, "i2t_top5": …, …} in [0, 1].
    """
    distinct_ids, caption_row = torch.unique(caption_ids, return_inverse=True)
    first_pair = torch.full((len(distinct_ids),), len(caption_ids), device=caption_ids.device)
    first_pair = first_pair.scatter_reduce(
        0, caption_row, torch.arange(len(caption_ids), device=caption_ids.device), "amin"
    )
    similarity = image_features @ text_features[first_pair].T  # [N images, U distinct captions]

    own = similarity.gather(1, rearrange(caption_row, "n -> n 1"))
    i2t_rank = (similarity > own).sum(dim=1)  # distinct captions scored above the image's own

    carries = rearrange(caption_row, "n -> 1 n") == rearrange(
        torch.arange(len(distinct_ids), device=caption_ids.device), "u -> u 1"
    )
    per_caption = rearrange(similarity, "n u -> u n")
    best_carrier = per_caption.masked_fill(~carries, -math.inf).amax(dim=1, keepdim=True)
    t2i_rank = (per_caption.masked_fill(carries, -math.inf) > best_carrier).sum(dim=1)[caption_row]

    metrics = {}
    for k in ks:
        metrics[f"i2t_top{k}"] = (i2t_rank < k).float().mean().item()
        metrics[f"t2i_top{k}"] = (t2i_rank < k).float().mean().item()
    return metrics


def gather_rows(rows: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Every process's `rows` [n_r, D] in rank order, and where this process's own rows start.

    Gradients flow back to each process's own rows (torch.distributed.nn's all_gather sums what every
    process's loss sends them). Processes may hold different numbers of rows (reflected pairs and
    negatives depend on the batch), so rows are padded to the largest count for the gather.
    With one process, `rows` as they are.
    """
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return rows, 0
    world_size, rank = torch.distributed.get_world_size(), torch.distributed.get_rank()
    if world_size == 1:
        return rows, 0
    counts = [torch.zeros((), dtype=torch.long, device=rows.device) for _ in range(world_size)]
    torch.distributed.all_gather(counts, torch.tensor(len(rows), device=rows.device))
    counts = [int(count) for count in counts]
    padded = F.pad(rows, (0, 0, 0, max(counts) - len(rows)))
    gathered = torch.distributed.nn.functional.all_gather(padded)
    return torch.cat([part[:count] for part, count in zip(gathered, counts)]), sum(counts[:rank])


def clip_loss_with_negatives(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    negative_features: torch.Tensor,
    logit_scale: torch.Tensor,
) -> torch.Tensor:
    """ClipLoss where each image picks its caption among the batch's captions and extra negative captions
    [M, D] (NegCLIP); text→image is unchanged. With no negatives (M = 0) this is open_clip's ClipLoss.

    Under DDP the batch is the global batch: each process contrasts its own images and captions with
    the images and captions of every process (gathered with gradients), as open_clip's ClipLoss with
    `local_loss=True, gather_with_grad=True` does; its loss is the mean over its own rows, and DDP's
    mean of the processes' gradients is the gradient of the global loss. Negatives stay on their
    process (each image's own swaps are made from its own labels).
    """
    all_images, first = gather_rows(image_features)
    all_texts, _ = gather_rows(text_features)
    labels = torch.arange(first, first + len(image_features), device=image_features.device)
    logits_per_image = logit_scale * image_features @ torch.cat([all_texts, negative_features]).T
    logits_per_text = logit_scale * text_features @ all_images.T
    return (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)) / 2


def attribute_hits(image_features: torch.Tensor, labels: list[dict], encode_text) -> torch.Tensor:
    """Zero-shot attribute accuracy per image: [B, len(ATTRIBUTES)] of 1 (the true caption outscores every
    caption with that one attribute swapped), 0 (it does not) or NaN (the image has no such attribute).

    `image_features` [B, D] unit-length; `encode_text` maps a list of captions to unit-length [N, D].
    """
    scenes = [scene_from_labels(item) for item in labels]
    swaps = [one_attribute_swaps(scene) for scene in scenes]
    captions = sorted({s.caption for scene, swap in zip(scenes, swaps) for s in (scene, *sum(swap.values(), []))})
    row = {caption: i for i, caption in enumerate(captions)}
    similarity = image_features @ encode_text(captions).to(image_features.device).T  # [B, distinct captions]
    hits = torch.full((len(scenes), len(ATTRIBUTES)), math.nan)
    for i, (scene, swap) in enumerate(zip(scenes, swaps)):
        true_score = similarity[i, row[scene.caption]]
        for attribute, alternatives in swap.items():
            alternative_scores = similarity[i, [row[s.caption] for s in alternatives]]
            hits[i, ATTRIBUTES.index(attribute)] = float(bool(true_score > alternative_scores.max()))
    return hits


class CLIPModule(pl.LightningModule):
    """The LightningModule around an open_clip model (`self.model`) and its `Scorer` (`self.scorer`).

    Args:
        architecture: an open_clip architecture name (clip-tiny-32, ViT-B-32, …) or a model config .json.
        pretrained: weights to start from: an open_clip pretrained tag, a weights file, or a .ckpt of this
            stage (fine-tuning); None starts from random weights.
        learning_rate, weight_decay, betas, eps: AdamW's; weight decay applies to matrices only (not to
            biases, norms, the class embedding or the logit scale).
        warmup_steps: batches of linear warmup before the cosine decay to 0 at the last batch.
        crop_min_side: augmentation: the random crop's side is this fraction of the image side or more
            (1.0 = no crop).
        flip: augmentation: mirror half the images left–right (wrong for captions that say left/right).
        hard_negatives: shapes only: each image must also beat a caption of its own that is false by one
            attribute (`hard_negative_captions`). In-batch negatives almost never differ from the true
            caption by a relation alone, so without these the relation is learned slowly.
        order_negatives: shapes only: each two-object image must also beat its caption with the objects
            named the other way round (`order_swap_captions`).
        reflected_pairs: shapes only: every two-object scene of a batch also enters it laid out for another
            relation (`imagetext.shapes.reflect`: same objects, the layout mapped by a symmetry of the
            square), so the batch holds pairs of images and captions that differ in the relation alone,
            in both directions of the contrastive loss.
        reflect_to: the relation of those reflections: "opposite" (above <-> below, left <-> right: pairs
            only a model that binds each colour to its place tells apart) or "any" (one of the three other
            relations, drawn per scene and step, so also above <-> to the left of).
        seed: seed of the augmentation and the hard negatives; the draws of each batch are a function of
            (seed, global_step).
        compile: torch.compile the image and text transformers.
    """

    def __init__(
        self,
        architecture: str = "clip-tiny-32",
        pretrained: str | None = None,
        learning_rate: float = 1e-3,
        weight_decay: float = 0.1,
        betas: tuple[float, float] = (0.9, 0.98),
        eps: float = 1e-6,
        warmup_steps: int = 100,
        crop_min_side: float = 0.85,
        flip: bool = False,
        hard_negatives: bool = False,
        order_negatives: bool = False,
        reflected_pairs: bool = False,
        reflect_to: str = "opposite",
        seed: int = 0,
        compile: bool = False,
    ):
        super().__init__()
        if not 0 < crop_min_side <= 1:
            raise ValueError(f"model.crop_min_side must be in (0, 1], got {crop_min_side}; 1.0 turns cropping off")
        if reflect_to not in REFLECT_TO:
            raise ValueError(f"model.reflect_to must be one of {REFLECT_TO}, got {reflect_to!r}")
        if warmup_steps < 1:
            raise ValueError(f"model.warmup_steps must be at least 1, got {warmup_steps}")
        self.save_hyperparameters()
        self.scorer = load(architecture, pretrained=pretrained)
        self.model = self.scorer.model.train().requires_grad_(True)
        # Computed now, so an architecture open_clip cannot describe fails before training, not at the first save.
        self.checkpoint_metadata = metadata(self.model, self.scorer.architecture)
        self.loss = open_clip.ClipLoss()
        self._validation_outputs: dict[str, list[torch.Tensor]] = {}

    def configure_model(self) -> None:
        if self.hparams.compile:
            # open_clip's CustomTextCLIP keeps its text tower in `text`, CLIP in `transformer`
            text_tower = self.model.text if hasattr(self.model, "text") else self.model.transformer
            compile_in_place([self.model.visual, text_tower])

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[STAGE] = self.checkpoint_metadata  # makes `clip_rerank.load("last.ckpt")` work alone

    def configure_optimizers(self):
        h = self.hparams
        matrices = [p for p in self.model.parameters() if p.ndim >= 2]
        others = [p for p in self.model.parameters() if p.ndim < 2]
        groups = [{"params": matrices, "weight_decay": h.weight_decay}, {"params": others, "weight_decay": 0.0}]
        # The fused kernel updates the 49408-row token embedding about 10x faster than the per-tensor loop.
        fused = all(p.device.type in ("cpu", "cuda") for p in self.model.parameters())
        optimizer = torch.optim.AdamW(groups, lr=h.learning_rate, betas=tuple(h.betas), eps=h.eps, fused=fused)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(h.warmup_steps, 0.0))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def on_train_start(self) -> None:
        fit_schedule_to_trainer(self)

    def embed(self, images: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Unit-length image [B, D] and text [N, D] embeddings, with gradients (training) or without (validation)."""
        image_features = self.model.encode_image(self.scorer.preprocess(images), normalize=True)
        text_features = self.model.encode_text(tokens, normalize=True)
        return image_features, text_features

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        h = self.hparams
        generator = keyed_generator(h.seed, self.global_step)
        images, captions, labels = batch["image"], list(batch["caption"]), batch.get("labels")
        if (h.hard_negatives or h.order_negatives or h.reflected_pairs) and labels is None:
            raise ValueError(
                "model.hard_negatives, order_negatives and reflected_pairs need shapes labels in the batches; "
                "use data.source: shapes"
            )
        if h.reflected_pairs:
            images, captions, labels = with_reflected_pairs(
                images, captions, labels, generator if h.reflect_to == "any" else None
            )
        if h.crop_min_side < 1 or h.flip:
            images = random_crop(images, generator, h.crop_min_side, h.flip)
        if h.hard_negatives:
            captions += hard_negative_captions(labels, generator)
        if h.order_negatives:
            captions += order_swap_captions(labels)
        # one text pass for the captions and their negatives
        image_features, text_features = self.embed(images, self.scorer.tokenize(captions))
        batch_size = len(image_features)
        logit_scale = self.model.logit_scale.exp()
        loss = clip_loss_with_negatives(
            image_features, text_features[:batch_size], text_features[batch_size:], logit_scale
        )
        self.log_dict(
            {
                "train/loss": loss.detach(),
                "train/logit_scale": logit_scale.detach(),
                "train/lr": self.optimizers().param_groups[0]["lr"],
            },
            batch_size=batch_size,
        )
        self.log("loss", loss.detach(), prog_bar=True, logger=False, batch_size=batch_size)
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        with torch.no_grad():
            self.model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)

    def on_validation_epoch_start(self) -> None:
        self._validation_outputs = {"image": [], "text": [], "tokens": [], "attributes": []}

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        tokens = self.scorer.tokenize(batch["caption"])
        image_features, text_features = (features.float() for features in self.embed(batch["image"], tokens))
        loss = self.loss(image_features, text_features, self.model.logit_scale.exp())
        self.log("val/loss", loss, batch_size=len(image_features), sync_dist=True)
        outputs = self._validation_outputs
        outputs["image"].append(image_features)
        outputs["text"].append(text_features)
        outputs["tokens"].append(tokens)  # equal rows = identical captions
        if "labels" in batch:
            outputs["attributes"].append(
                attribute_hits(image_features, batch["labels"], self.encode_captions).to(self.device)
            )

    def encode_captions(self, captions: list[str]) -> torch.Tensor:
        """Unit-length float32 text embeddings [N, D] of `captions`."""
        return self.model.encode_text(self.scorer.tokenize(captions), normalize=True).float()

    def on_validation_epoch_end(self) -> None:
        """Retrieval among all held-out pairs (gathered from every process), and attribute accuracy."""
        gathered = {name: self._gather(parts) for name, parts in self._validation_outputs.items() if parts}
        if "image" not in gathered:
            return
        _, caption_ids = torch.unique(gathered["tokens"], dim=0, return_inverse=True)
        metrics = retrieval_accuracy(gathered["image"], gathered["text"], caption_ids)
        if "attributes" in gathered:
            accuracy = gathered["attributes"].nanmean(dim=0)
            metrics |= {
                f"zeroshot_{name}": value.item() for name, value in zip(ATTRIBUTES, accuracy) if not value.isnan()
            }
        self.log_dict({f"val/{name}": value for name, value in metrics.items()})
        self.log("t2i", metrics["t2i_top1"], prog_bar=True, logger=False)
        self._validation_outputs = {}

    def _gather(self, parts: list[torch.Tensor]) -> torch.Tensor:
        local = torch.cat(parts)
        if self.trainer.world_size == 1:
            return local
        return rearrange(self.all_gather(local), "world n ... -> (world n) ...")
