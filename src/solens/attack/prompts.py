"""Prompts that show class ``c1`` together with mined words.

Template prompts (the default): each prompt draws ``n_words`` distinct words from the
mined list, with probability proportional to their scores, and fills a template drawn
uniformly ("a photo of a {c1} with {w1} and {w2}"). The draw for prompt ``i`` uses its
own generator seeded by ``(seed, i)``, so prompts are reproducible one by one.

With a local instruction-tuned language model (``LLMWriter``, any causal LM that
transformers loads from a folder), the same words are handed to the model with an
instruction and its completion is the prompt (METHOD §5.5 uses an LLM).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from solens.errors import InputError
from solens.synth.captions import with_article
from solens.synth.world import synonyms

TEMPLATES: tuple[str, ...] = (
    "a photo of {a} with {words}",
    "a picture of {a} and {words}",
    "{a} with {words}",
    "an image of {a}, {words}",
)
"""Prompt templates: ``{a}`` = c1 with its article, ``{words}`` = the words joined by
commas and "and"."""

INSTRUCTION = (
    "Write one short caption for a photo that shows {a} together with {words}. "
    "Answer with the caption only."
)


@dataclass(frozen=True)
class Prompt:
    """A prompt and the mined words it was built from."""

    text: str
    words: tuple[str, ...]


def join_words(words: Sequence[str]) -> str:
    """``["sea"]`` -> ``"sea"``; ``["sea", "red"]`` -> ``"sea and red"``;
    three -> ``"sea, red and sky"``."""
    w = list(words)
    return w[0] if len(w) == 1 else ", ".join(w[:-1]) + " and " + w[-1]


def draw_words(words: Sequence[str], scores: Sequence[float], k: int,
               rng: np.random.Generator) -> list[str]:
    """``min(k, len(words))`` distinct words drawn with probability proportional to their
    (positive) scores, in the order drawn."""
    if not words:
        return []
    p = np.clip(np.asarray(scores, np.float64), 0, None)
    p = p / p.sum() if p.sum() > 0 else np.full(len(words), 1 / len(words))
    k = min(k, int((p > 0).sum()))
    pick = rng.choice(len(words), k, replace=False, p=p)
    return [words[int(i)] for i in pick]


def template_prompts(c1: str, words: Sequence[str], scores: Sequence[float], n: int,
                     seed: int, n_words: int = 2,
                     templates: Sequence[str] = TEMPLATES) -> list[Prompt]:
    """``n`` prompts showing ``c1`` with ``n_words`` of ``words`` each (module doc); a
    prompt without words is ``"a photo of {a}"``."""
    out = []
    for i in range(n):
        rng = np.random.default_rng([int(seed), i])
        ws = draw_words(words, scores, n_words, rng)
        t = templates[int(rng.integers(len(templates)))]
        text = t.format(a=with_article(c1), words=join_words(ws)) if ws else (
            f"a photo of {with_article(c1)}")
        out.append(Prompt(text, tuple(ws)))
    return out


def c2_words(c2: str) -> list[str]:
    """The block list that always applies: c2's name and, for a world class, its
    synonyms."""
    return sorted(synonyms(c2) | {c2})


class LLMWriter:
    """Prompts written by a local causal language model (transformers), from a folder
    with its weights and tokenizer. Generation is greedy unless ``temperature > 0``
    (then sampled with ``torch.manual_seed(seed + i)``); at most ``max_new_tokens``."""

    def __init__(self, path: str | Path, *, max_new_tokens: int = 40, temperature: float = 0.0,
                 device: str = "cpu") -> None:
        p = Path(path).expanduser()
        if not p.is_dir():
            raise InputError(f"--llm {path}: no such folder (a local transformers model: "
                             "config, weights and tokenizer)")
        from transformers import AutoModelForCausalLM, AutoTokenizer  # heavy package

        try:
            self.tokenizer: Any = AutoTokenizer.from_pretrained(str(p), local_files_only=True)
            loader: Any = AutoModelForCausalLM
            self.model: Any = loader.from_pretrained(str(p), local_files_only=True)
            self.model = self.model.to(device).eval()
        except (OSError, ValueError) as e:
            raise InputError(f"--llm {path}: not a transformers causal LM "
                             f"({str(e).splitlines()[0]})") from None
        self.path = str(p.resolve())
        self.max_new_tokens = int(max_new_tokens)
        self.temperature = float(temperature)
        self.device = device

    def instruction(self, c1: str, words: Sequence[str]) -> str:
        """The text handed to the model (with its chat template when it has one)."""
        msg = INSTRUCTION.format(a=with_article(c1), words=join_words(words) or "nothing else")
        if getattr(self.tokenizer, "chat_template", None):
            return str(self.tokenizer.apply_chat_template(
                [{"role": "user", "content": msg}], tokenize=False, add_generation_prompt=True))
        return msg + "\nCaption:"

    @torch.no_grad()
    def write(self, c1: str, words: Sequence[str], seed: int) -> str:
        """One caption (first line of the completion, stripped; the template prompt when
        the model writes nothing)."""
        enc = self.tokenizer(self.instruction(c1, words), return_tensors="pt").to(self.device)
        kw: dict[str, Any] = {"max_new_tokens": self.max_new_tokens, "do_sample": False}
        if self.temperature > 0:
            torch.manual_seed(int(seed))
            kw.update(do_sample=True, temperature=self.temperature)
        pad = self.tokenizer.pad_token_id
        if pad is None:
            pad = self.tokenizer.eos_token_id
        out = self.model.generate(**enc, pad_token_id=pad, **kw)
        text = self.tokenizer.decode(out[0, enc["input_ids"].shape[1]:],
                                     skip_special_tokens=True)
        line = next((s.strip() for s in str(text).splitlines() if s.strip()), "")
        return line or f"a photo of {with_article(c1)} with {join_words(words)}"

    def prompts(self, c1: str, words: Sequence[str], scores: Sequence[float], n: int,
                seed: int, n_words: int = 2) -> list[Prompt]:
        """``n`` prompts: the same word draws as ``template_prompts``, written by the
        model."""
        base = template_prompts(c1, words, scores, n, seed, n_words)
        return [Prompt(self.write(c1, p.words, seed * 100_003 + i), p.words)
                for i, p in enumerate(base)]


__all__ = ["INSTRUCTION", "TEMPLATES", "LLMWriter", "Prompt", "c2_words", "draw_words",
           "join_words", "template_prompts"]
