"""The GPT prior: text BPE + a GPT over text tokens and VQGAN codes (DALL·E 1's stage 2), and its sampler."""

from gpt_prior.checkpoint import load, save
from gpt_prior.model import GPT, GPTConfig
from gpt_prior.sample import SamplingSettings, sample
from gpt_prior.tokenizer import TextTokenizer, train_tokenizer

__all__ = ["GPT", "GPTConfig", "SamplingSettings", "TextTokenizer", "load", "sample", "save", "train_tokenizer"]
