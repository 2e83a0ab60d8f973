"""Evaluation of a causal LM on held-out causal-LM tokens (`CausalTokenizedData`).

`evaluate_causal_lm` returns, over a fixed seeded subset of the split:

* `loss`: mean cross-entropy per scored token (response tokens and their EOS; every token but
  the first for plain text), summed over the split and divided by the token count, so long and
  short examples weigh by their tokens; `perplexity` = exp(loss);
* `token_accuracy`: how often the argmax next token equals the target on those same tokens
  (teacher forcing);
* `exact_match` (only when the data has short answers, `tokens.short_answers`): greedy decoding
  from the prompt produces the response tokens and then EOS. Each example decodes at most
  len(answer) + 2 tokens; the output is cut at its first EOS and must equal the answer. It is
  compared on token ids, so no tokenizer is needed and no detokenization quirk can help or hurt;
* `accuracy`: `exact_match` where it applies, else `token_accuracy` -- the one number
  time-to-accuracy is measured on;
* `examples` and `tokens`: what was scored.

Decoding groups the examples by prompt length, so a batch has no padding at all: there is no
left-padding or position-id convention to get right per family, and the same loop serves LLaMA,
Qwen2, Mistral and GPT-2. It uses the model's KV cache.
"""

from __future__ import annotations

import inspect
import math
from collections import defaultdict

import numpy as np
import torch

from fedquad.datasets.batching import BatchConfig, iterate_batches
from fedquad.errors import FedquadError
from fedquad.tasks.base import eval_indices
from fedquad.tasks.causal_lm_tokens import IGNORE_INDEX, CausalTokenizedData

_MAX_LOGIT_ELEMENTS = 1 << 25  # logits per forward (x4 bytes): bounds eval memory for large vocabularies


@torch.no_grad()
def evaluate_causal_lm(adapted, tokens: CausalTokenizedData, *, batch_size: int = 64, max_examples: int | None = None,
                       seed: int = 0) -> dict[str, float]:
    """Loss, perplexity, token accuracy and (short answers) exact match of `adapted` as it is."""
    if not isinstance(tokens, CausalTokenizedData):
        raise FedquadError("causal-LM evaluation needs causal-LM tokens (prompt/response or text data); "
                           "got classification tokens")
    if batch_size < 1:
        raise FedquadError(f"batch_size must be >= 1, got {batch_size}")
    model = adapted.model
    was_training = model.training
    model.eval()
    idx = eval_indices(len(tokens), max_examples, seed)  # the same subset rule as classification
    try:
        loss_sum, correct, scored = _teacher_forced(model, adapted.device, tokens, idx, batch_size)
        out = {"loss": loss_sum / max(scored, 1), "token_accuracy": correct / max(scored, 1)}
        out["perplexity"] = math.exp(min(out["loss"], 700.0))
        if tokens.short_answers:
            out["exact_match"] = _exact_match(model, adapted.device, tokens, idx, batch_size)
            out["accuracy"] = out["exact_match"]
        else:
            out["accuracy"] = out["token_accuracy"]
    finally:
        model.train(was_training)
    out["examples"] = float(len(idx))
    out["tokens"] = float(scored)
    return out


def _rows_per_forward(batch_size: int, width: int, vocab: int) -> int:
    return max(1, min(batch_size, _MAX_LOGIT_ELEMENTS // max(width * vocab, 1)))


def _teacher_forced(model, device, tokens, idx, batch_size) -> tuple[float, int, int]:
    loss_sum, correct, scored = 0.0, 0, 0
    config = BatchConfig(batch_size=batch_size, shuffle=False)
    vocab = model.config.vocab_size if hasattr(model.config, "vocab_size") else 1
    for batch in iterate_batches(tokens, config, indices=idx):
        width = batch["input_ids"].shape[1]
        step = _rows_per_forward(batch_size, width, vocab)
        for start in range(0, batch["input_ids"].shape[0], step):
            part = {k: v[start:start + step].to(device) for k, v in batch.items()}
            logits = model(input_ids=part["input_ids"], attention_mask=part["attention_mask"]).logits
            logits = logits[:, :-1].float()
            target = part["labels"][:, 1:]
            keep = target != IGNORE_INDEX
            if not bool(keep.any()):
                continue
            picked = logits[keep]
            goal = target[keep]
            loss_sum += float(torch.nn.functional.cross_entropy(picked, goal, reduction="sum"))
            correct += int((picked.argmax(-1) == goal).sum())
            scored += int(keep.sum())
    return loss_sum, correct, scored


def _context(model) -> int | None:
    cfg = model.config
    return getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)


def _exact_match(model, device, tokens: CausalTokenizedData, idx: np.ndarray, batch_size: int) -> float:
    eos = tokens.eos_token_id
    groups: dict[int, list[int]] = defaultdict(list)
    for i in idx:
        groups[int(tokens.prompt_lengths[i])].append(int(i))
    ctx = _context(model)
    hits = 0
    for plen in sorted(groups):
        members = groups[plen]
        for start in range(0, len(members), batch_size):
            chunk = members[start:start + batch_size]
            answers = []
            for i in chunk:
                r = tokens.response_ids(i).tolist()
                answers.append(r[:-1] if r and r[-1] == eos else r)
            budgets = [len(a) + 2 for a in answers]
            steps = max(budgets)
            prompts = np.stack([tokens.ids[tokens.offsets[i]:tokens.offsets[i] + plen] for i in chunk])
            if ctx and plen + steps > ctx:  # keep the prompt's end: the context has room for the answer
                prompts = prompts[:, plen + steps - ctx:]
            generated = greedy_decode(model, torch.from_numpy(prompts.astype(np.int64)).to(device), steps)
            for row, (ans, budget) in enumerate(zip(answers, budgets)):
                out = generated[row, :budget].tolist()
                if eos in out:
                    out = out[:out.index(eos)]
                hits += out == ans
    return hits / max(len(idx), 1)


def _cache_argument(model) -> str:
    """transformers 5 renamed `past_key_values` to `cache` (the old name warns); use what the model takes."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def _returned_cache(out):
    cache = out.get("cache") if hasattr(out, "get") else None
    return cache if cache is not None else out.past_key_values


def greedy_decode(model, prompts: torch.Tensor, steps: int) -> torch.Tensor:
    """`steps` greedy tokens after each row of `prompts` (no padding: all rows the same length)."""
    name = _cache_argument(model)
    mask = torch.ones_like(prompts)
    out = model(input_ids=prompts, attention_mask=mask, use_cache=True)
    past = _returned_cache(out)
    token = out.logits[:, -1].argmax(-1)
    result = [token]
    for _ in range(steps - 1):
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        out = model(input_ids=token[:, None], attention_mask=mask, use_cache=True, **{name: past})
        past = _returned_cache(out)
        token = out.logits[:, -1].argmax(-1)
        result.append(token)
    return torch.stack(result, dim=1).cpu()
