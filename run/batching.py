"""
Batches: examples of similar length together (bucketing), padded to the longest row, and the causal-LM encoding of
a prompt and its continuation. Shared by train.py, students.py, generation.py and bench.py.
"""
import math

import numpy as np
import torch


def bucketed_batches(lengths, batch_size, seed, epoch, shuffle=True):
    """Batches of examples of similar length, so padding stays small: shuffle, sort inside chunks of 50 batches,
    cut into batches, shuffle the batches. Every example appears exactly once per epoch."""
    order = np.arange(len(lengths))
    if shuffle:
        rng = np.random.default_rng([seed, epoch])
        order = rng.permutation(len(lengths))
    chunk = batch_size * 50
    lengths = np.asarray(lengths)
    order = np.concatenate([c[np.argsort(-lengths[c], kind="stable")] for c in np.array_split(order, max(1, math.ceil(len(order) / chunk)))]) if len(order) else order
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    if shuffle:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


def collate(seqs, pad_token, device, left_pad=False):
    """Pad to the longest row. attention_mask is None when no row is padded (the fast causal SDPA path)."""
    T = max(len(s) for s in seqs)
    idx = torch.full((len(seqs), T), pad_token, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.long)
    for i, s in enumerate(seqs):
        sl = slice(T - len(s), T) if left_pad else slice(0, len(s))
        idx[i, sl] = torch.tensor(s, dtype=torch.long)
        mask[i, sl] = 1
    pin = device.type == "cuda"
    idx = (idx.pin_memory() if pin else idx).to(device, non_blocking=True)
    if all(len(s) == T for s in seqs):
        return idx, None
    return idx, (mask.pin_memory() if pin else mask).to(device, non_blocking=True)


def encode_lm(tok, prompt, continuation, max_len):
    """(ids, n_prompt_tokens): prompt and continuation encoded separately so the prompt can be masked."""
    p, c = tok.encode(prompt), tok.encode(continuation)
    return (p + c)[:max_len], len(p)


def lm_targets(batch_rows, T, device, loss_on):
    """Next-token targets aligned with the logits; -100 on padding and, with --loss-on continuation, the prompt."""
    targets = torch.full((len(batch_rows), T), -100, dtype=torch.long)
    for i, (ids, n_prompt) in enumerate(batch_rows):
        ids_t = torch.tensor(ids, dtype=torch.long)
        targets[i, : len(ids) - 1] = ids_t[1:]
        if loss_on == "continuation":
            targets[i, : max(0, n_prompt - 1)] = -100
    return targets.to(device, non_blocking=True)
