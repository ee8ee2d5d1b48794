"""Caption BPE: a small byte-pair vocabulary learned from the training captions (HF `tokenizers`).

Captions are lowercased and split on whitespace and punctuation before BPE, so "A Red circle." and
"a red circle ." share their tokens. Word-initial pieces carry a `▁` prefix (SentencePiece's
metaspace), which lets `decode` put the spaces back. Every caption becomes `text_len` ids: its
tokens, `<eot>`, then `<pad>` up to `text_len`. The empty caption "" is `[<eot>, <pad>, …]`: the
unconditional prompt of classifier-free guidance.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from imagetext.files import atomic_path

PAD = "<pad>"
EOT = "<eot>"
UNK = "<unk>"  # characters never seen in training captions map here instead of vanishing
SPECIAL_TOKENS = [PAD, EOT, UNK]  # ids 0, 1, 2 in this order
FILE_NAME = "tokenizer.json"


class TextTokenizer:
    """Captions ↔ fixed-length id rows; wraps a `tokenizers.Tokenizer` built by `train_tokenizer`."""

    def __init__(self, tokenizer: Tokenizer):
        for token in (PAD, EOT):
            if tokenizer.token_to_id(token) is None:
                raise ValueError(f"tokenizer has no {token} token: build it with gpt_prior.tokenizer.train_tokenizer")
        if tokenizer.token_to_id(PAD) != 0:
            raise ValueError(
                f"tokenizer has {PAD} at id {tokenizer.token_to_id(PAD)}, expected 0: retrain it with train_tokenizer"
            )
        self.tokenizer = tokenizer

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    @property
    def pad_id(self) -> int:
        return self.tokenizer.token_to_id(PAD)

    @property
    def eot_id(self) -> int:
        return self.tokenizer.token_to_id(EOT)

    def encode_batch(self, captions: Sequence[str], text_len: int) -> torch.Tensor:
        """LongTensor [B, text_len]: tokens, `<eot>`, `<pad>`…; longer captions lose their tail (one warning)."""
        if text_len < 1:
            raise ValueError(f"text_len must be >= 1 (room for {EOT}), got {text_len}")
        if isinstance(captions, str) or not all(isinstance(caption, str) for caption in captions):
            raise TypeError("captions must be a list of strings, e.g. ['a red circle']")
        rows = torch.full((len(captions), text_len), self.pad_id, dtype=torch.long)
        n_truncated = 0
        for row, encoding in zip(rows, self.tokenizer.encode_batch(list(captions), add_special_tokens=False)):
            ids = encoding.ids
            if len(ids) + 1 > text_len:
                n_truncated += 1
                ids = ids[: text_len - 1]
            row[: len(ids) + 1] = torch.tensor(ids + [self.eot_id])
        if n_truncated:
            warnings.warn(
                f"{n_truncated} of {len(captions)} captions were longer than text_len={text_len} tokens "
                f"(with {EOT}) and were truncated; raise text_len to keep them whole",
                stacklevel=2,
            )
        return rows

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        """The caption of one id row, without `<eot>` and padding (lowercased, as the model saw it)."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        ids = list(ids)
        if self.eot_id in ids:
            ids = ids[: ids.index(self.eot_id)]
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def to_json(self) -> str:
        """The whole tokenizer as one JSON string (what `save` writes), e.g. to embed in a checkpoint."""
        return self.tokenizer.to_str()

    @classmethod
    def from_json(cls, text: str) -> TextTokenizer:
        return cls(Tokenizer.from_str(text))

    def save(self, path: str | Path) -> Path:
        """Write `tokenizer.json` (`path` is a .json file, or a folder to put it in); returns the file written."""
        path = _json_path(path)
        with atomic_path(path) as temporary:
            temporary.write_text(self.to_json(), encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path) -> TextTokenizer:
        """Read a `tokenizer.json` written by `save` (`path` is the .json file, or the folder holding it)."""
        path = _json_path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"no tokenizer at {path}: train one with train_tokenizer or pass the run's tokenizer.json"
            )
        return cls.from_json(path.read_text(encoding="utf-8"))


def train_tokenizer(captions: Iterable[str], vocab_size: int) -> TextTokenizer:
    """Learn a lowercased BPE from `captions`, merging until it has `vocab_size` ids (specials included).

    The same captions always give the same tokenizer, byte for byte. A small caption set (the shapes
    grammar has a few dozen words) stops below `vocab_size` once every word is one token, and one
    with more distinct characters than `vocab_size` keeps them all and goes above it: size the model
    from `tokenizer.vocab_size`, not from the config.
    """
    if vocab_size <= len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size must exceed the {len(SPECIAL_TOKENS)} special tokens, got {vocab_size}")
    # Word boundaries are a `▁` character rather than the trainer's `end_of_word_suffix`: the trainer
    # numbers suffixed characters in hash-map order, so ids (and merges) would change from run to run
    # (huggingface/tokenizers#2066), while plain characters get their ids in sorted order.
    tokenizer = Tokenizer(models.BPE(unk_token=UNK))
    tokenizer.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Whitespace(),  # words and runs of punctuation
            pre_tokenizers.Metaspace(prepend_scheme="always"),  # "circle" → "▁circle"
        ]
    )
    tokenizer.decoder = decoders.Metaspace(prepend_scheme="always")
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False)
    tokenizer.train_from_iterator(captions, trainer)
    return TextTokenizer(tokenizer)


def _json_path(path: str | Path) -> Path:
    path = Path(path)
    return path if path.suffix == ".json" else path / FILE_NAME
