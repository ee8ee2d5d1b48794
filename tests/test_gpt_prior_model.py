"""GPT prior: caption BPE, the text+image transformer, and sampling (KV cache, CFG, top-k/top-p)."""

import json
import math
import os
import subprocess
import sys
import warnings

import pytest
import torch
from torch import nn

from gpt_prior.model import ADAMW_BETAS, GPT, GPTConfig
from gpt_prior.sample import classifier_free_guidance, sample, top_k_filter, top_p_filter
from gpt_prior.tokenizer import TextTokenizer, train_tokenizer
from imagetext.shapes import scene_at

CAPTIONS = [
    "a small red circle above a large blue square",
    "a green triangle left of a red circle",
    "a large yellow square",
    "a blue circle below a small green triangle",
]
TEXT_LEN = 12


@pytest.fixture(scope="module")
def tokenizer() -> TextTokenizer:
    return train_tokenizer(CAPTIONS * 5, vocab_size=80)


def tiny_config(**overrides) -> GPTConfig:
    settings = dict(
        text_vocab_size=80, text_len=TEXT_LEN, image_vocab_size=16, image_grid=(4, 4), n_layer=2, n_head=2, n_embd=32
    )
    return GPTConfig(**{**settings, **overrides})


@pytest.fixture(scope="module")
def model() -> GPT:
    torch.manual_seed(0)
    return GPT(tiny_config()).eval()


@pytest.fixture(scope="module")
def prompts(tokenizer) -> torch.Tensor:
    return tokenizer.encode_batch(CAPTIONS[:2], TEXT_LEN)


@pytest.fixture(scope="module")
def empty(tokenizer) -> torch.Tensor:
    return tokenizer.encode_batch([""], TEXT_LEN)


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- tokenizer


def test_tokenizer_round_trips_lowercases_and_reserves_specials(tokenizer):
    assert tokenizer.pad_id == 0 and tokenizer.eot_id != 0
    ids = tokenizer.encode_batch(["A Large YELLOW square", CAPTIONS[0]], TEXT_LEN)
    assert ids.dtype == torch.long and ids.shape == (2, TEXT_LEN)
    assert tokenizer.decode(ids[0]) == "a large yellow square"
    assert tokenizer.decode(ids[1]) == CAPTIONS[0]
    n_tokens = int((ids[0] != tokenizer.pad_id).sum())
    assert ids[0, n_tokens - 1] == tokenizer.eot_id and (ids[0, n_tokens:] == tokenizer.pad_id).all()


def test_empty_caption_is_eot_then_padding(tokenizer):
    ids = tokenizer.encode_batch([""], TEXT_LEN)[0]
    assert ids[0] == tokenizer.eot_id and (ids[1:] == tokenizer.pad_id).all()


def test_tokenizer_saves_and_loads(tokenizer, tmp_path):
    written = tokenizer.save(tmp_path)
    assert written == tmp_path / "tokenizer.json"
    loaded = TextTokenizer.load(written)
    assert loaded.vocab_size == tokenizer.vocab_size and loaded.eot_id == tokenizer.eot_id
    assert torch.equal(loaded.encode_batch(CAPTIONS, TEXT_LEN), tokenizer.encode_batch(CAPTIONS, TEXT_LEN))
    with pytest.raises(FileNotFoundError, match="no tokenizer"):
        TextTokenizer.load(tmp_path / "missing.json")


TRAIN_IN_A_SUBPROCESS = """
import json, sys
from gpt_prior.tokenizer import train_tokenizer
captions = json.loads(sys.stdin.read())
sys.stdout.write(train_tokenizer(captions, vocab_size=200).to_json())
"""


@pytest.mark.slow  # the subprocess imports gpt_prior, hence Lightning: ~10 s on 2 busy cores
def test_tokenizer_training_is_reproducible():
    # The BPE trainer iterates hash maps (reseeded per map and per process): the same captions must
    # still give the same ids and merges, or a seeded run could not be repeated.
    captions = [scene_at(0, i, 32).caption for i in range(300)]
    captions += ["Un café crème, s'il vous plaît!", "naïve 😀 smile — 👍🏽", "x-ray: 3.5 × 2"]
    first = train_tokenizer(captions, vocab_size=200).to_json()
    assert train_tokenizer(captions, vocab_size=200).to_json() == first
    elsewhere = subprocess.run(
        [sys.executable, "-c", TRAIN_IN_A_SUBPROCESS],
        input=json.dumps(captions),
        capture_output=True,
        text=True,
        encoding="utf-8",
        env={**os.environ, "PYTHONHASHSEED": "12345"},
        check=True,
    )
    assert elsewhere.stdout == first


def test_long_captions_are_truncated_with_one_warning(tokenizer):
    text_len = 5
    long = [CAPTIONS[0], CAPTIONS[1], "a red circle"]  # 9 words, 8 words, 3 words (+ <eot>)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ids = tokenizer.encode_batch(long, text_len)
    assert len(caught) == 1
    assert "2 of 3 captions" in str(caught[0].message) and "text_len=5" in str(caught[0].message)
    assert (ids[:2, -1] == tokenizer.eot_id).all()  # a cut caption still ends with <eot>
    assert tokenizer.decode(ids[0]) == "a small red circle"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tokenizer.encode_batch(long, TEXT_LEN)  # everything fits: no warning


# ---------------------------------------------------------------- model


def test_forward_shapes_and_loss_weighting(model, prompts):
    codes = torch.randint(0, 16, (2, 4, 4), generator=seeded())
    out = model(prompts, codes)
    assert out.logits_text.shape == (2, TEXT_LEN - 1, 80)
    assert out.logits_img.shape == (2, 16, 16)  # image positions have image_vocab_size outputs only
    expected = (1 * out.loss_text + 7 * out.loss_img) / 8
    assert torch.allclose(out.loss, expected)
    flat = model(prompts, codes.flatten(1))
    assert torch.allclose(flat.loss, out.loss)


def test_padding_is_not_predicted(model, tokenizer):
    codes = torch.randint(0, 16, (1, 4, 4), generator=seeded())
    empty = tokenizer.encode_batch([""], TEXT_LEN)
    out = model(empty, codes)
    assert out.loss_text == 0  # every caption target is padding
    assert torch.allclose(out.loss, out.loss_img * 7 / 8)


def test_bad_codes_name_the_codebook_size(model, prompts):
    with pytest.raises(ValueError, match=r"\[0, 16\)"):
        model(prompts, torch.full((2, 4, 4), 16))
    with pytest.raises(ValueError, match="grid"):
        model(prompts, torch.zeros(2, 3, 3, dtype=torch.long))


def test_cache_in_chunks_matches_one_pass(model, prompts):
    tokens = torch.cat([prompts, torch.randint(0, 16, (2, 9), generator=seeded())], dim=1)
    whole = model.hidden_states(tokens)
    cache = model.new_cache()
    pieces = [model.hidden_states(tokens[:, a:b], cache) for a, b in [(0, 7), (7, 15), (15, 16), (16, 21)]]
    assert cache.length == tokens.shape[1]
    assert torch.allclose(torch.cat(pieces, dim=1), whole, atol=1e-5)


def test_weight_decay_only_on_linear_matrices():
    model = GPT(tiny_config(bias=True))
    decay, no_decay = model.param_groups(weight_decay=0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    linear_weights = {id(m.weight) for m in model.modules() if isinstance(m, nn.Linear)}
    assert {id(p) for p in decay["params"]} == linear_weights
    ids_no_decay = {id(p) for p in no_decay["params"]}
    assert id(model.text_embedding.weight) in ids_no_decay and id(model.image_row.weight) in ids_no_decay
    assert id(model.final_norm.weight) in ids_no_decay and id(model.blocks[0].mlp.up.bias) in ids_no_decay
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
    torch.optim.AdamW(model.param_groups(0.1), lr=1e-3, betas=ADAMW_BETAS)  # groups are what AdamW takes


def test_tiny_model_overfits_a_few_pairs(tokenizer):
    # 4 captions, each with its own random 4×4 grid over 16 codes. Uniform guessing costs ln 16 ≈ 2.77
    # per code. A model that ignored the caption could not know the first code of a grid (1 of 4 grids,
    # ≥ ln 4 on 1 of 16 positions ⇒ mean image loss ≥ ln(4)/16 ≈ 0.087): falling below 0.05 shows it
    # memorised the grids *and* reads the caption. (This run gets there in ~50 steps; 100 leaves slack.)
    torch.manual_seed(0)
    model = GPT(tiny_config(text_vocab_size=tokenizer.vocab_size, n_embd=64))
    text = tokenizer.encode_batch(CAPTIONS, TEXT_LEN)
    codes = torch.randint(0, 16, (4, 4, 4), generator=seeded(1))
    optimizer = torch.optim.AdamW(model.param_groups(0.0), lr=3e-3, betas=ADAMW_BETAS)
    first = model(text, codes)
    for _ in range(100):
        out = model(text, codes)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
    assert first.loss_img > 2.0
    assert out.loss_img < 0.05 < math.log(4) / 16
    assert out.loss_text < first.loss_text / 2


# ---------------------------------------------------------------- sampling


def test_cached_and_recomputed_sampling_agree(model, prompts):
    cached, cached_logits = sample(model, prompts, 3, generator=seeded(7), return_logits=True)
    full, full_logits = sample(model, prompts, 3, generator=seeded(7), use_cache=False, return_logits=True)
    assert cached.shape == (6, 4, 4) and cached.dtype == torch.long
    assert torch.allclose(cached_logits, full_logits, atol=1e-4)
    assert torch.equal(cached, full)


def test_same_seed_same_codes_other_seed_other_codes(model, prompts):
    first = sample(model, prompts, 4, generator=seeded(3), top_k=8)
    assert torch.equal(first, sample(model, prompts, 4, generator=seeded(3), top_k=8))
    assert not torch.equal(first, sample(model, prompts, 4, generator=seeded(4), top_k=8))


def test_returned_logits_are_the_models_for_each_prompt_row(model, prompts):
    # rows are prompt-major; the logits of each step are the teacher-forced logits of its own caption
    codes, logits = sample(model, prompts, 3, generator=seeded(), batch_size=4, return_logits=True)
    teacher = model(prompts.repeat_interleave(3, dim=0), codes).logits_img
    assert torch.allclose(logits, teacher, atol=1e-4)


def test_guidance_scale_one_equals_conditional_sampling(model, prompts, empty):
    plain, plain_logits = sample(model, prompts, 3, generator=seeded(5), return_logits=True)
    guided, guided_logits = sample(
        model, prompts, 3, generator=seeded(5), cfg_scale=1.0, empty_text_tokens=empty, return_logits=True
    )
    assert torch.allclose(guided_logits, plain_logits, atol=1e-5)
    assert torch.equal(guided, plain)


def test_guidance_mixes_intact_conditional_and_unconditional_streams(model, prompts, empty):
    # If a stream's caption were wiped or mixed up (DALLE-pytorch's in-place reset), the step logits
    # would not equal u + s·(c − u) of the teacher-forced conditional and unconditional passes.
    codes, logits = sample(
        model, prompts, 2, generator=seeded(), cfg_scale=3.0, empty_text_tokens=empty, return_logits=True
    )
    conditional = model(prompts.repeat_interleave(2, dim=0), codes).logits_img
    unconditional = model(empty.expand(4, -1), codes).logits_img
    assert torch.allclose(logits, unconditional + 3.0 * (conditional - unconditional), atol=1e-4)
    assert torch.allclose(
        classifier_free_guidance(conditional, unconditional, 3.0),
        unconditional + 3.0 * (conditional - unconditional),
        atol=1e-6,
    )
    with pytest.raises(ValueError, match="empty_text_tokens"):
        sample(model, prompts, 1, generator=seeded(), cfg_scale=3.0)


def test_image_positions_never_sample_text_ids(tokenizer):
    # a caption vocabulary much larger than the codebook: any leak of text ids would show up as codes >= 16
    torch.manual_seed(0)
    model = GPT(tiny_config(text_vocab_size=tokenizer.vocab_size)).eval()
    assert model.image_head.out_features == 16 and tokenizer.vocab_size > 16
    text = tokenizer.encode_batch(CAPTIONS, TEXT_LEN)
    codes = sample(model, text, 8, temperature=5.0, generator=seeded(), bf16=True)
    assert codes.shape == (32, 4, 4)
    assert codes.min() >= 0 and codes.max() < 16
    assert len(codes.unique()) > 8  # a hot temperature explores the codebook


def test_top_k_and_top_p_keep_the_right_tokens():
    probs = torch.tensor([[0.15, 0.5, 0.05, 0.2, 0.1], [0.1, 0.05, 0.2, 0.15, 0.5]])
    logits = probs.log()
    kept = lambda filtered: [torch.isfinite(row).nonzero().flatten().tolist() for row in filtered]  # noqa: E731
    assert kept(top_k_filter(logits, 2)) == [[1, 3], [2, 4]]
    assert kept(top_k_filter(logits, 10)) == [[0, 1, 2, 3, 4]] * 2
    # nucleus: the smallest set of most likely tokens with mass >= p
    assert kept(top_p_filter(logits, 0.45)) == [[1], [4]]
    assert kept(top_p_filter(logits, 0.6)) == [[1, 3], [2, 4]]  # 0.5 < 0.6 ≤ 0.7
    assert kept(top_p_filter(logits, 0.8)) == [[0, 1, 3], [2, 3, 4]]  # 0.7 < 0.8 ≤ 0.85
    filtered = top_p_filter(logits, 0.6)
    assert torch.equal(filtered[torch.isfinite(filtered)], logits[torch.isfinite(filtered)])  # kept logits untouched


def test_top_k_sampling_only_draws_the_top_k(model, prompts):
    codes, logits = sample(model, prompts, 4, top_k=3, temperature=2.0, generator=seeded(), return_logits=True)
    top3 = logits.topk(3, dim=-1).indices
    assert (top3 == codes.flatten(1).unsqueeze(-1)).any(-1).all()
