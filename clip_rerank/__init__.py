"""The CLIP stage: load any CLIP as a `Scorer` (open_clip name, pretrained tag, local weights, or a
checkpoint trained here), rerank images by a prompt, CLIP score and FD-CLIP; `clip-rerank fit` trains one.

    scorer = clip_rerank.load("runs/clip/shapes/logs/version_0/checkpoints/last.ckpt")
    indices, scores = scorer.rerank("a small red circle above a large blue square", images, keep=4)
"""

from clip_rerank.load import load, save
from clip_rerank.metrics import clip_score, fd_clip
from clip_rerank.scorer import Scorer

__all__ = ["Scorer", "clip_score", "fd_clip", "load", "save"]
