"""solens.attack with real model code on tiny random weights built here (no download): a
diffusers Stable Diffusion pipeline as generator and a transformers causal LM as prompt
writer."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from solens.attack.generators import DiffusersGenerator, make_generator
from solens.attack.prompts import LLMWriter, template_prompts
from solens.errors import InputError

diffusers = pytest.importorskip("diffusers")


@pytest.fixture(scope="module")
def pipeline_dir(tmp_path_factory):
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    tmp = tmp_path_factory.mktemp("sd")
    letters = [chr(c) for c in range(97, 123)]
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in [*letters, *(c + "</w>" for c in letters)]:
        vocab[c] = len(vocab)
    (tmp / "vocab.json").write_text(json.dumps(vocab))
    (tmp / "merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer(str(tmp / "vocab.json"), str(tmp / "merges.txt"), model_max_length=77)
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16), layers_per_block=1, sample_size=8, in_channels=4,
        out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=16,
        attention_head_dim=2, norm_num_groups=4)
    vae = AutoencoderKL(block_out_channels=(8,), in_channels=3, out_channels=3,
                        down_block_types=("DownEncoderBlock2D",),
                        up_block_types=("UpDecoderBlock2D",), latent_channels=4,
                        norm_num_groups=4, sample_size=8)
    text = CLIPTextModel(CLIPTextConfig(
        bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=16, intermediate_size=32,
        num_attention_heads=2, num_hidden_layers=1, vocab_size=len(vocab),
        max_position_embeddings=77))
    sched = DDIMScheduler(clip_sample=False, steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tok, unet=unet,
                                   scheduler=sched, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(tmp / "pipe")
    return tmp / "pipe"


def test_diffusers_generator_is_seeded(pipeline_dir) -> None:
    g = make_generator(str(pipeline_dir), size=16, steps=2)
    assert isinstance(g, DiffusersGenerator)
    a = g.generate(["a car with sea", "a cow in the sky"], seed=3)
    b = g.generate(["a car with sea", "a cow in the sky"], seed=3)
    c = g.generate(["a car with sea", "a cow in the sky"], seed=4)
    assert a[0].image.size == (16, 16) and a[0].spec is None
    assert all(np.array_equal(np.asarray(x.image), np.asarray(y.image))
               for x, y in zip(a, b, strict=True))
    assert not np.array_equal(np.asarray(a[0].image), np.asarray(c[0].image))
    # image i depends on (prompt_i, seed, i) only: the first image alone is the same
    one = g.generate(["a car with sea"], seed=3)
    assert np.array_equal(np.asarray(one[0].image), np.asarray(a[0].image))
    assert g.describe()["pipeline"] == "StableDiffusionPipeline"


def test_diffusers_generator_bad_paths(tmp_path) -> None:
    with pytest.raises(InputError, match="no such folder"):
        DiffusersGenerator(tmp_path / "missing")
    with pytest.raises(InputError, match=r"no model_index\.json"):
        DiffusersGenerator(tmp_path)


@pytest.fixture(scope="module")
def llm_dir(tmp_path_factory):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    tmp = tmp_path_factory.mktemp("llm") / "llm"
    words = ["<unk>", "<eos>", "a", "an", "the", "photo", "of", "with", "and", "car", "apple",
             "red", "sea", "sky", "caption", "write", "one", "short", "for", "that", "shows",
             "together", "answer", "only", ":", ".", ",", "cow", "ship"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<eos>")
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(words), n_positions=128, n_embd=16,
                                       n_layer=1, n_head=2, eos_token_id=1, bos_token_id=1))
    model.save_pretrained(tmp)
    fast.save_pretrained(tmp)
    return tmp


def test_llm_writer_prompts(llm_dir) -> None:
    w = LLMWriter(llm_dir, max_new_tokens=6)
    words, scores = ["sea", "sky", "red"], [1.0, 1.0, 1.0]
    a = w.prompts("car", words, scores, 3, seed=2)
    assert a == w.prompts("car", words, scores, 3, seed=2)  # greedy: reproducible
    base = template_prompts("car", words, scores, 3, seed=2)
    assert [p.words for p in a] == [p.words for p in base]
    assert all(isinstance(p.text, str) and p.text for p in a)
    text = w.instruction("apple", ["sea", "red"])
    assert "an apple together with sea and red" in text
    s = LLMWriter(llm_dir, max_new_tokens=6, temperature=1.0)
    assert s.write("car", ["sea"], 5) == s.write("car", ["sea"], 5)


def test_llm_writer_bad_folder(tmp_path) -> None:
    with pytest.raises(InputError, match="no such folder"):
        LLMWriter(tmp_path / "missing")
    with pytest.raises(InputError, match="not a transformers causal LM"):
        LLMWriter(tmp_path)
