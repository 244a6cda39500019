"""
Generation tasks (toxicity): the continuations of a split's prompts under a decoding rule of decode.py, by one model
(greedy or sampled), by the weak ensemble's members together (soft and hard votes), or by the weak model after and
before fine-tuning (ConG's contrastive decoding). Each is a supervisor whose continuations of w2s_train a strong
student learns from, and whose test continuations are scored for toxicity.
"""
import torch

from batching import bucketed_batches, collate


@torch.no_grad()
def generate_split(model, tok, rows, rt, cfg, max_len):
    """Continuations for the prompts of `rows`: greedy by default, or `samples` samples at the temperature and top-p
    given (honoured as given)."""
    model.eval()
    room = max_len - cfg.max_new_tokens
    prompts = [tok.encode(r["prompt"])[-room:] or [tok.pad_token] for r in rows]
    gen = torch.Generator(device=rt.device).manual_seed(cfg.seed)
    continuations = [[] for _ in rows]
    for batch in bucketed_batches([len(p) for p in prompts], cfg.batch_size * 2, 0, 0, shuffle=False):
        idx, mask = collate([prompts[i] for i in batch], tok.pad_token, rt.device, left_pad=True)
        if mask is None:
            mask = torch.ones_like(idx)
        for _ in range(cfg.samples):
            with rt.autocast:
                out = model.generate(idx, attention_mask=mask, max_new_tokens=cfg.max_new_tokens,
                                     temperature=cfg.temperature, top_p=cfg.top_p, eos_token=tok.eot_token,
                                     generator=gen)
            for j, i in enumerate(batch):
                new = [t for t in out[j, idx.shape[1]:].tolist() if t != tok.eot_token]
                continuations[i].append(tok.decode(new))
    return {"ids": [r["id"] for r in rows], "labels": [r["label"] for r in rows],
            "prompts": [r["prompt"] for r in rows], "prompt_toxicity": [r.get("prompt_toxicity") for r in rows],
            "continuations": continuations}
