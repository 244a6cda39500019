"""
The Llama family in one small file, read top to bottom like model.py: config, RMSNorm, rotary embeddings, grouped-query
attention, SwiGLU MLP, block, model, then loading and saving checkpoints in the Hugging Face Hub layout. One model
covers SmolLM2 and Llama 3.x (model_type "llama", Llama 3's rope scaling included), Qwen2.5 ("qwen2": biases on q, k,
v) and Qwen3 ("qwen3": RMSNorm of each head's q and k, an explicit head_dim). Its interface is model.GPT's, so
training, generation and the votes use it unchanged; padding works the same way (positions are cumsum(mask) - 1, so
left or right padding never changes the outputs of real tokens).

Numerics follow transformers: RMSNorm in float32 then cast back, rotate_half RoPE with cos/sin in the input's dtype,
attention scaled by 1/sqrt(head_dim), so fp32 logits equal transformers' to ~1e-6 (tests/test_llama.py).
"""
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch.utils.checkpoint import checkpoint

from core import hub
from model import CheckpointError, DecoderLM, positions_and_mask, read_config

MODEL_TYPES = ("llama", "qwen2", "qwen3")


@dataclass
class LlamaConfig:
    vocab_size: int = 49152
    block_size: int = 8192            # max_position_embeddings
    n_layer: int = 30
    n_head: int = 9
    n_kv_head: int = 3                # grouped-query attention: each k/v head serves n_head // n_kv_head query heads
    n_embd: int = 576
    intermediate_size: int = 1536     # SwiGLU width
    head_dim: int = 0                 # 0 = n_embd // n_head (Qwen3 sets its own)
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None  # Llama 3's "llama3" type: factor, low_freq_factor, high_freq_factor,
    #                                   original_max_position_embeddings
    attention_bias: bool = False      # biases on q, k, v (Qwen2 always)
    o_proj_bias: bool = False         # and on the output projection (Llama/Qwen3 attention_bias=true, never Qwen2)
    qk_norm: bool = False             # Qwen3: RMSNorm over each head's q and k, before RoPE
    tie_word_embeddings: bool = True
    model_type: str = "llama"         # the Hub's model_type, written back by save_pretrained
    bos_token_id: int | None = None   # kept only to write config.json back as it was read
    eos_token_id: int | list | None = None
    pad_token_id: int | None = None
    n_classes: int = 0                # >0 adds a classification head `score` (Linear n_embd->n_classes, no bias)
    dropout: float = 0.0              # attention dropout (Llama has no other)
    grad_checkpoint: bool = False     # activation checkpointing per block (training only)

    def __post_init__(self):
        self.head_dim = self.head_dim or self.n_embd // self.n_head


class RMSNorm(nn.Module):

    def __init__(self, dim, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        # in float32 whatever the input, then back, then the weight: transformers' order, so bf16 rounds alike
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


def rope_frequencies(config):
    """RoPE inverse frequencies (head_dim // 2,), with Llama 3's long-context scaling when the config has it: long
    wavelengths are slowed down by `factor`, short ones kept, the band between interpolated smoothly."""
    dim = config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    s = config.rope_scaling
    if not s:
        return inv_freq
    old = s["original_max_position_embeddings"]
    low_wavelen, high_wavelen = old / s["low_freq_factor"], old / s["high_freq_factor"]
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_wavelen, inv_freq / s["factor"], inv_freq)
    smooth = (old / wavelen - s["low_freq_factor"]) / (s["high_freq_factor"] - s["low_freq_factor"])
    smoothed = (1 - smooth) * scaled / s["factor"] + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return torch.where(medium, smoothed, scaled)


def rotary(inv_freq, pos, dtype):
    """cos, sin (B or 1, 1, T, head_dim) of positions pos (B or 1, T), in float32 and then cast, as transformers."""
    freqs = pos[..., None].float() * inv_freq
    emb = torch.cat((freqs, freqs), dim=-1)[:, None]
    return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rotary(x, cos, sin):
    """transformers' rotate_half convention: channel i pairs with channel i + head_dim/2 (not interleaved pairs)."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


class Attention(nn.Module):

    def __init__(self, config):
        super().__init__()
        c = config
        if c.n_head % c.n_kv_head:
            raise ValueError(f"n_head {c.n_head} is not divisible by n_kv_head {c.n_kv_head}")
        self.n_head, self.n_kv_head, self.head_dim, self.dropout = c.n_head, c.n_kv_head, c.head_dim, c.dropout
        self.q_proj = nn.Linear(c.n_embd, c.n_head * c.head_dim, bias=c.attention_bias)
        self.k_proj = nn.Linear(c.n_embd, c.n_kv_head * c.head_dim, bias=c.attention_bias)
        self.v_proj = nn.Linear(c.n_embd, c.n_kv_head * c.head_dim, bias=c.attention_bias)
        self.o_proj = nn.Linear(c.n_head * c.head_dim, c.n_embd, bias=c.o_proj_bias)
        if c.qk_norm:
            self.q_norm = RMSNorm(c.head_dim, c.rms_norm_eps)
            self.k_norm = RMSNorm(c.head_dim, c.rms_norm_eps)

    def forward(self, x, rope, mask, past=None):
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_head, self.head_dim)
        k = self.k_proj(x).view(B, T, self.n_kv_head, self.head_dim)
        v = self.v_proj(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
        if hasattr(self, "q_norm"):
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rotary(q.transpose(1, 2), *rope), apply_rotary(k.transpose(1, 2), *rope)  # (B, nh, T, hd)
        if past is not None:  # generation: keys and values of earlier tokens come from the cache
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        # the cache keeps the n_kv_head heads. Without a mask SDPA reads them in place (enable_gqa, as transformers:
        # the same outputs to the bit, no repeat to copy forward and sum back); with one it gets them repeated, since
        # its enable_gqa path has no fused kernel with an attention mask on CUDA and would fall back to the math one
        groups, dropout = self.n_head // self.n_kv_head, self.dropout if self.training else 0.0
        if mask is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout, enable_gqa=True)
        else:
            y = F.scaled_dot_product_attention(q, k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1),
                                               attn_mask=mask, dropout_p=dropout)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, -1)), (k, v)


class MLP(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.gate_proj = nn.Linear(config.n_embd, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.n_embd, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.n_embd, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))  # SwiGLU


class Block(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.attn_norm = RMSNorm(config.n_embd, config.rms_norm_eps)
        self.attn = Attention(config)
        self.mlp_norm = RMSNorm(config.n_embd, config.rms_norm_eps)
        self.mlp = MLP(config)

    def forward(self, x, rope, mask, past=None):
        a, kv = self.attn(self.attn_norm(x), rope, mask, past)
        x = x + a
        return x + self.mlp(self.mlp_norm(x)), kv


class Llama(DecoderLM):

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.n_embd)
        self.blocks = nn.ModuleList([Block(config) for _ in range(config.n_layer)])
        self.norm = RMSNorm(config.n_embd, config.rms_norm_eps)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.score = nn.Linear(config.n_embd, config.n_classes, bias=False) if config.n_classes > 0 else None
        # not saved: derived from the config, and always float32 (see _apply)
        self.register_buffer("inv_freq", rope_frequencies(config), persistent=False)
        if not self.lm_head.weight.is_meta:  # for_checkpoint builds on meta: the checkpoint fills the weights
            for name, p in self.named_parameters():  # transformers' init: normal(0, 0.02), zero biases, unit norms
                if name.endswith("bias"):
                    nn.init.zeros_(p)
                elif p.dim() == 2:
                    nn.init.normal_(p, mean=0.0, std=0.02)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.embed.weight

    def _apply(self, fn, *args, **kwargs):
        # .to(torch.bfloat16) and .half() would round the frequencies, and RoPE at position 10^4 with them: recompute
        # them in float32 on the new device after any move or cast
        super()._apply(fn, *args, **kwargs)
        self.inv_freq = rope_frequencies(self.config).to(self.inv_freq.device)
        return self

    def num_params(self):
        return sum(p.numel() for p in self.parameters())  # parameters() yields a tied embed/lm_head once

    def flops_per_token(self, seq_len):
        """Training FLOPs per token (forward + backward), PaLM appendix B style, as GPT's: an untied embedding table
        is a lookup, not a matmul."""
        c = self.config
        n = self.num_params() - (0 if c.tie_word_embeddings else self.embed.weight.numel())
        return 6 * n + 12 * c.n_layer * c.n_head * c.head_dim * seq_len

    def _run(self, idx, attention_mask=None, cache=None, blocks=slice(None), x=None):
        """Final hidden states (B, T, n_embd), and with `cache` (a list: empty at first, then what the previous call
        returned) the per-layer (k, v) so far. With a non-empty cache, `idx` holds only the new tokens while
        `attention_mask` covers earlier and new tokens. `blocks` runs a slice of the blocks only (--train-layers:
        the frozen bottom once, the trained top at every step): one that starts after block 0 takes that block's
        input `x` (B, T, n_embd) instead of `idx`, and one that stops before the end returns its last block's
        output, without the final norm."""
        B, T = idx.shape if x is None else x.shape[:2]
        device = idx.device if x is None else x.device
        pos, mask = positions_and_mask(B, T, attention_mask, cache, device, self.config.block_size)
        pos = pos if pos.dim() == 2 else pos[None]
        start, stop, _ = blocks.indices(len(self.blocks))
        if start == 0:
            x = self.embed(idx)
        rope = rotary(self.inv_freq, pos, x.dtype)
        new_cache = None if cache is None else []  # only kept when asked for: checkpointing would hold them all
        for i in range(start, stop):
            past = cache[i] if cache else None
            if self.config.grad_checkpoint and self.training and torch.is_grad_enabled():
                x, kv = checkpoint(self.blocks[i], x, rope, mask, past, use_reentrant=False)
            else:
                x, kv = self.blocks[i](x, rope, mask, past)
            if new_cache is not None:
                new_cache.append(kv)
        return (self.norm(x) if stop == len(self.blocks) else x), new_cache

    def final_norm(self, x):
        return self.norm(x)

    def truncate(self, depth):
        """Keep the first `depth` blocks and the final norm: a shallower pretrained model from the same weights
        (`model@depth`), whose hidden states are the full model's after block `depth`, normed."""
        if not 1 <= depth <= self.config.n_layer:
            raise CheckpointError(f"depth {depth} is outside 1..{self.config.n_layer}, the blocks this model has")
        self.blocks = self.blocks[:depth]
        self.config.n_layer = depth
        return self

    # ------------------------------------------------------------------------------------------------------------
    # Checkpoints in the Hugging Face layout

    @classmethod
    def from_pretrained(cls, name_or_path, revision=None, n_classes=0):
        """A Llama-family model from a local directory or the Hub (config.json + model.safetensors, or a sharded
        model.safetensors.index.json and its shards); "random:<shape>" builds a random-init model of that shape
        (the current torch seed decides the weights)."""
        if str(name_or_path).startswith("random:"):
            return cls(random_config(str(name_or_path), n_classes))
        config_file, weight_files, source = _checkpoint_files(str(name_or_path), revision)
        hf = read_config(config_file)
        _config_from_hf(hf, config_file, n_classes)  # a bad config is refused before any weights are read
        state = {}
        for f in weight_files:
            try:
                state.update(load_file(f))
            except (SafetensorError, OSError) as e:
                raise CheckpointError(f"cannot read weights {f} (corrupt or truncated safetensors file?): {e}") from None
        return from_hf_state(hf, state, n_classes, source, config_file)

    def _load_hf_state(self, state, source):
        tied = self.config.tie_word_embeddings
        ours = {k: v for k, v in self.state_dict().items() if not (tied and k == "lm_head.weight")}
        lm_head, loaded, unexpected = None, {}, []
        for key, tensor in state.items():
            name = _our_name(key)
            if key.endswith("rotary_emb.inv_freq"):
                continue  # the RoPE buffers some older conversions saved; ours come from the config
            if name == "lm_head.weight" and tied:
                lm_head = tensor
            elif name in ("score.weight", "score.bias"):
                # a classification head is reused when its shape fits, otherwise the fresh one stays
                if self.score is not None and tensor.shape == self.score.weight.shape[:tensor.dim()]:
                    loaded[name] = tensor
            elif name in ours:
                loaded[name] = tensor
            else:
                unexpected.append(key)
        if self.score is not None and "score.weight" not in loaded:
            loaded.pop("score.bias", None)
            loaded["score.weight"] = ours["score.weight"]
        if "score.bias" in loaded:  # a fitted probe's head (probe.py) has a bias, a fine-tuned one does not
            self.score.bias = nn.Parameter(torch.zeros_like(loaded["score.bias"]))
            ours["score.bias"] = self.score.bias
        missing = sorted(_hf_name(k) for k in set(ours) - set(loaded))
        if missing or unexpected:
            raise CheckpointError(f"checkpoint {source} does not match the model: missing tensors {missing}, "
                                  f"unexpected tensors {sorted(unexpected)}")
        bad = [f"{_hf_name(k)}: checkpoint {tuple(v.shape)} vs model {tuple(ours[k].shape)}"
               for k, v in loaded.items() if v.shape != ours[k].shape]
        if bad:
            raise CheckpointError(f"checkpoint {source} has tensors of the wrong shape: {'; '.join(bad)}")
        if lm_head is not None and not torch.equal(lm_head, loaded["embed.weight"]):
            raise CheckpointError(f"checkpoint {source} has tie_word_embeddings true but an lm_head.weight that "
                                  "differs from the token embedding")
        self.load_state_dict(loaded, strict=False)  # strict by the checks above; a tied lm_head is embed

    def save_pretrained(self, directory):
        """config.json + model.safetensors in the Hub layout, loadable here and by transformers."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "config.json").write_text(json.dumps(_hf_config(self.config), indent=2) + "\n")
        state = {_hf_name(name): t.detach().cpu().contiguous() for name, t in self.state_dict().items()
                 if not (name == "lm_head.weight" and self.config.tie_word_embeddings)}
        save_file(state, directory / "model.safetensors", metadata={"format": "pt"})


# ----------------------------------------------------------------------------------------------------------------
# The frozen trunk at the speed of the hardware (features.py under bf16 autocast): the numerics of autocast over fp32
# weights (residual stream, norms and RoPE in fp32, every matmul and attention in bf16), but with the weights held in
# bf16 once instead of cast at every call, q/k/v and gate/up each one matmul, grouped-query attention without
# repeated key/value heads, and texts of any lengths packed end to end so that each matmul has many rows.

def frozen_weights(model, stop, dtype):
    """Per block below `stop`: (qkv weight, qkv bias or None, o_proj weight and bias, gate|up weight, down weight)
    in `dtype`, cached on the model and rebuilt when any of its parameters changes (in-place updates bump their
    _version) or is replaced."""
    params = [p for block in model.blocks[:stop] for p in block.parameters()]
    key = (dtype, stop, tuple(p.data_ptr() for p in params), tuple(p._version for p in params))
    cached = model.__dict__.get("_frozen")
    if cached is None or cached[0] != key:
        def cat(*layers):
            return None if layers[0].bias is None else torch.cat([m.bias for m in layers]).to(dtype)
        weights = []
        for b in model.blocks[:stop]:
            a, m = b.attn, b.mlp
            weights.append((torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]).to(dtype),
                            cat(a.q_proj, a.k_proj, a.v_proj), a.o_proj.weight.to(dtype),
                            None if a.o_proj.bias is None else a.o_proj.bias.to(dtype),
                            torch.cat([m.gate_proj.weight, m.up_proj.weight]).to(dtype), m.down_proj.weight.to(dtype)))
        model.__dict__["_frozen"] = cached = (key, weights)  # not a submodule or buffer: never saved or moved
    return cached[1]


@torch.no_grad()
def packed_trunk(model, seqs, stop, dtype=torch.bfloat16, every_depth=False):
    """The first `stop` blocks of `model` over token rows `seqs` (of any lengths, best sorted by length) packed into
    one (tokens, n_embd) row: each text attends to itself only, at its own positions. Returns per text the input of
    block `stop` at every token (L_i, n_embd); with every_depth, per depth 1..stop the final-normed hidden state of
    each text's last token (n_embd,). Float32 out, as under autocast."""
    c, weights = model.config, frozen_weights(model, stop, dtype)
    lengths = [len(s) for s in seqs]
    device = model.embed.weight.device
    ids = torch.tensor([t for s in seqs for t in s], dtype=torch.long, device=device)
    pos = torch.cat([torch.arange(n) for n in lengths]).to(device)
    cos, sin = (r[0].transpose(0, 1) for r in rotary(model.inv_freq, pos[None], torch.float32))  # (T, 1, hd)
    runs, start = [], 0  # texts of one length next to each other share one attention call
    for n in lengths:
        if runs and runs[-1][2] == n:
            runs[-1][1] += 1
        else:
            runs.append([start, 1, n])
        start += n
    last = torch.tensor(lengths, device=device).cumsum(0) - 1
    x, depths = model.embed(ids), []
    for i in range(stop):
        x = _packed_block(model.blocks[i], weights[i], c, x, cos, sin, runs, dtype)
        if every_depth:
            depths.append(model.norm(x[last]))
    if every_depth:
        return [list(d) for d in depths]
    return list(x.split(lengths))


def _packed_block(block, w, c, x, cos, sin, runs, dtype):
    qkv_w, qkv_b, o_w, o_b, gate_up_w, down_w = w
    T, nq, nkv, hd = x.shape[0], c.n_head * c.head_dim, c.n_kv_head * c.head_dim, c.head_dim
    qkv = F.linear(block.attn_norm(x).to(dtype), qkv_w, qkv_b)
    qk, v = qkv[:, :nq + nkv].view(T, c.n_head + c.n_kv_head, hd), qkv[:, nq + nkv:].view(T, c.n_kv_head, hd)
    if hasattr(block.attn, "q_norm"):  # on the bf16 projections, as under autocast
        qk = torch.cat([block.attn.q_norm(qk[:, :c.n_head]), block.attn.k_norm(qk[:, c.n_head:])], dim=1)
    q, k = apply_rotary(qk.float(), cos, sin).to(dtype).split([c.n_head, c.n_kv_head], dim=1)  # q and k at once
    y = torch.empty(T, nq, dtype=dtype, device=x.device)
    for start, count, n in runs:
        span = slice(start, start + count * n)
        q_, k_, v_ = (t[span].view(count, n, -1, hd).transpose(1, 2) for t in (q, k, v))
        y_ = F.scaled_dot_product_attention(q_, k_, v_, is_causal=True, enable_gqa=True)
        y[span] = y_.transpose(1, 2).reshape(count * n, nq)
    x = x + F.linear(y, o_w, o_b)
    gate, up = F.linear(block.mlp_norm(x).to(dtype), gate_up_w).chunk(2, dim=-1)
    return x + F.linear(F.silu(gate) * up, down_w)


def from_hf_state(hf_config, state, n_classes=0, source="checkpoint", config_file=None):
    """A Llama from a config.json-like dict and transformers-named tensors (what a Hub checkpoint or the GGUF reader
    gives), loaded strictly: a missing, unexpected or misshapen tensor is a CheckpointError naming `source`. A
    sequence-classification checkpoint (score.weight, no lm_head.weight) gets its LM head tied to the embedding."""
    hf = dict(hf_config)
    if "lm_head.weight" not in state and "score.weight" in state:
        hf["tie_word_embeddings"] = True
    model = Llama.for_checkpoint(_config_from_hf(hf, config_file or source, n_classes))
    model._load_hf_state(state, source)
    return model


# The one key-mapping table: transformers name -> ours, for whole dotted components (blocks.N.attn.q_proj.weight is
# model.layers.N.self_attn.q_proj.weight); q_proj, k_proj, v_proj, o_proj, q_norm, k_norm, mlp.* keep their names.
_HF_NAMES = {"model.embed_tokens": "embed", "model.layers": "blocks", "model.norm": "norm", "self_attn": "attn",
             "input_layernorm": "attn_norm", "post_attention_layernorm": "mlp_norm"}
_OUR_NAMES = {ours: hf for hf, ours in _HF_NAMES.items()}


def _rename(key, table):
    pattern = r"(?:^|(?<=\.))(" + "|".join(map(re.escape, sorted(table, key=len, reverse=True))) + r")(?=\.)"
    return re.sub(pattern, lambda m: table[m[1]], key)


def _our_name(key):
    return _rename(key, _HF_NAMES) if key.startswith("model.") else key


def _hf_name(name):
    return _rename(name, _OUR_NAMES)


def check_checkpoint(name_or_path, revision=None):
    """(config file, weights files) of a checkpoint, after reading its config and the headers of its weights (not the
    weights): a missing, garbage or truncated file is refused in a moment, before a run starts any work."""
    config_file, weight_files, _ = _checkpoint_files(str(name_or_path), revision)
    _config_from_hf(read_config(config_file), config_file, 0)
    for f in weight_files:
        try:
            with safe_open(f, "pt"):  # checks the header and that the file holds every tensor it lists
                pass
        except (SafetensorError, OSError) as e:
            raise CheckpointError(f"cannot read weights {f} (corrupt or truncated safetensors file?): {e}") from None
    return config_file, weight_files


INDEX = "model.safetensors.index.json"


def _shards(index_file, resolve):
    """The shard files of a sharded checkpoint's index, each resolved to a path by resolve(filename)."""
    try:
        weight_map = json.loads(Path(index_file).read_text(encoding="utf-8"))["weight_map"]
        names = sorted(set(weight_map.values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise CheckpointError(f"cannot read checkpoint index {index_file}: {e!r}") from None
    if not names or not all(isinstance(n, str) and "/" not in n and n not in ("", ".", "..") for n in names):
        raise CheckpointError(f"checkpoint index {index_file} names no shards or a shard outside its directory")
    return [resolve(n) for n in names]


def _checkpoint_files(name_or_path, revision):
    """(config.json, [weight files], what error messages call the weights: the one file or the index)."""
    local = Path(name_or_path).expanduser()
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise CheckpointError(f"{local} has no config.json (a checkpoint is config.json + model.safetensors)")
        if (local / "model.safetensors").is_file():
            return local / "config.json", [local / "model.safetensors"], local / "model.safetensors"
        if (local / INDEX).is_file():
            shards = _shards(local / INDEX, lambda n: local / n)
            missing = [s.name for s in shards if not s.is_file()]
            if missing:
                raise CheckpointError(f"{local / INDEX} lists shards that are not there: {missing}")
            return local / "config.json", shards, local / INDEX
        raise CheckpointError(f"{local} has no model.safetensors or {INDEX} (a checkpoint is config.json + weights)")
    if name_or_path.startswith((".", "/", "~")) or local.exists() or name_or_path.count("/") > 1:
        raise CheckpointError(f"{name_or_path} is not a model directory (expected config.json + model.safetensors)")
    instead = "a local directory holding config.json and model.safetensors"

    def fetch(filename):
        return hub.hub_file(name_or_path, filename, revision=revision, instead=instead)
    config_file = fetch("config.json")
    try:
        weights = fetch("model.safetensors")
        return config_file, [weights], weights
    except (hub.OfflineError, FileNotFoundError) as single_error:
        try:  # a large model is sharded: only the index and its shards are in the repo (or the cache)
            index = fetch(INDEX)
        except (hub.OfflineError, FileNotFoundError):
            raise single_error from None
    return config_file, _shards(index, fetch), index


# Random-init models by shape, for smoke runs and timing without weights: "random:smollm2-135m". The figures are those
# of each model's config.json on the Hub (HuggingFaceTB/SmolLM2-*, meta-llama/Llama-3.2-1B, Qwen/Qwen2.5-0.5B,
# Qwen/Qwen3-0.6B), written from memory of those files, not read from them here (the Hub is unreachable).
SHAPES = {
    "smollm2-135m": dict(n_layer=30, n_embd=576, n_head=9, n_kv_head=3, intermediate_size=1536, rope_theta=100000.0,
                         vocab_size=49152, block_size=8192, rms_norm_eps=1e-5),
    "smollm2-360m": dict(n_layer=32, n_embd=960, n_head=15, n_kv_head=5, intermediate_size=2560, rope_theta=100000.0,
                         vocab_size=49152, block_size=8192, rms_norm_eps=1e-5),
    "smollm2-1.7b": dict(n_layer=24, n_embd=2048, n_head=32, n_kv_head=32, intermediate_size=8192, rope_theta=130000.0,
                         vocab_size=49152, block_size=8192, rms_norm_eps=1e-5),
    "llama3.2-1b": dict(n_layer=16, n_embd=2048, n_head=32, n_kv_head=8, head_dim=64, intermediate_size=8192,
                        rope_theta=500000.0, vocab_size=128256, block_size=131072, rms_norm_eps=1e-5,
                        rope_scaling=dict(factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                          original_max_position_embeddings=8192)),
    "qwen2.5-0.5b": dict(n_layer=24, n_embd=896, n_head=14, n_kv_head=2, intermediate_size=4864, rope_theta=1000000.0,
                         vocab_size=151936, block_size=32768, rms_norm_eps=1e-6, attention_bias=True,
                         model_type="qwen2"),
    "qwen3-0.6b": dict(n_layer=28, n_embd=1024, n_head=16, n_kv_head=8, head_dim=128, intermediate_size=3072,
                       rope_theta=1000000.0, vocab_size=151936, block_size=40960, rms_norm_eps=1e-6, qk_norm=True,
                       model_type="qwen3"),
}
# where each shape's tokenizer lives (the Hub repo of the real model)
SHAPE_REPOS = {"smollm2-135m": "HuggingFaceTB/SmolLM2-135M", "smollm2-360m": "HuggingFaceTB/SmolLM2-360M",
               "smollm2-1.7b": "HuggingFaceTB/SmolLM2-1.7B", "llama3.2-1b": "meta-llama/Llama-3.2-1B",
               "qwen2.5-0.5b": "Qwen/Qwen2.5-0.5B", "qwen3-0.6b": "Qwen/Qwen3-0.6B"}


def random_shape_names():
    return list(SHAPES)


def random_config(spec, n_classes=0):
    """The config of "random:<shape>[:anything]" (the part after a second colon is the caller's, e.g. a tokenizer)."""
    shape = spec.removeprefix("random:").partition(":")[0]
    if shape not in SHAPES:
        raise CheckpointError(f"unknown random model shape {shape!r}: use random:<{'|'.join(SHAPES)}>")
    return LlamaConfig(**SHAPES[shape], n_classes=n_classes)


def _rope_from_hf(hf, where):
    """(rope_theta, llama3 scaling or None) from either spelling: Hub files' rope_theta + rope_scaling, or
    transformers 5's rope_parameters."""
    params = hf.get("rope_parameters") or {**(hf.get("rope_scaling") or {}),
                                           "rope_theta": hf.get("rope_theta", 10000.0)}
    kind = params.get("rope_type", params.get("type", "default"))
    if kind not in ("default", "llama3"):
        raise CheckpointError(f"{where}: rope type {kind!r} is not supported (only default and 'llama3')")
    if params.get("partial_rotary_factor", 1.0) != 1.0:
        raise CheckpointError(f"{where}: partial_rotary_factor {params['partial_rotary_factor']} is not supported")
    keys = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
    if kind == "llama3" and not all(k in params for k in keys):
        raise CheckpointError(f"{where}: llama3 rope scaling needs {', '.join(keys)}")
    return float(params.get("rope_theta", hf.get("rope_theta", 10000.0))), (
        {k: params[k] for k in keys} if kind == "llama3" else None)


def _config_from_hf(hf, where, n_classes):
    model_type = hf.get("model_type")
    if model_type not in MODEL_TYPES:
        raise CheckpointError(f"{where}: model_type {model_type!r} is not supported "
                              f"(only {', '.join(map(repr, MODEL_TYPES))})")
    unsupported = [f"{k}={hf[k]!r}" for k, ok in (("hidden_act", "silu"), ("mlp_bias", False),
                                                   ("use_sliding_window", False)) if k in hf and hf[k] != ok]
    if unsupported:
        raise CheckpointError(f"{where}: {', '.join(unsupported)} is not supported")
    theta, scaling = _rope_from_hf(hf, where)
    bias = True if model_type == "qwen2" else bool(hf.get("attention_bias", False))
    try:
        return LlamaConfig(
            vocab_size=hf["vocab_size"], block_size=hf["max_position_embeddings"], n_layer=hf["num_hidden_layers"],
            n_head=hf["num_attention_heads"], n_kv_head=hf.get("num_key_value_heads") or hf["num_attention_heads"],
            n_embd=hf["hidden_size"], intermediate_size=hf["intermediate_size"], head_dim=hf.get("head_dim") or 0,
            rms_norm_eps=hf.get("rms_norm_eps", 1e-6), rope_theta=theta, rope_scaling=scaling,
            attention_bias=bias, o_proj_bias=bias and model_type != "qwen2", qk_norm=model_type == "qwen3",
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)), model_type=model_type,
            bos_token_id=hf.get("bos_token_id"), eos_token_id=hf.get("eos_token_id"),
            pad_token_id=hf.get("pad_token_id"), n_classes=n_classes)
    except KeyError as e:
        raise CheckpointError(f"{where}: missing field {e}") from None


def _hf_config(c):
    """config.json of a config, in the Hub's own spelling: rope_theta + rope_scaling, which transformers 4 and 5
    both read."""
    expected = {"llama": (False, c.attention_bias), "qwen2": (False, False), "qwen3": (True, c.attention_bias)}
    if c.model_type not in expected or (c.qk_norm, c.o_proj_bias) != expected[c.model_type] or (
            c.model_type == "qwen2" and not c.attention_bias):
        raise ValueError(f"this model's attention (qk_norm={c.qk_norm}, attention_bias={c.attention_bias}, "
                         f"o_proj_bias={c.o_proj_bias}) is not what model_type {c.model_type!r} has")
    arch = {"llama": "Llama", "qwen2": "Qwen2", "qwen3": "Qwen3"}[c.model_type]
    hf = {"model_type": c.model_type,
          "architectures": [arch + ("ForSequenceClassification" if c.n_classes else "ForCausalLM")],
          "vocab_size": c.vocab_size, "max_position_embeddings": c.block_size, "hidden_size": c.n_embd,
          "intermediate_size": c.intermediate_size, "num_hidden_layers": c.n_layer, "num_attention_heads": c.n_head,
          "num_key_value_heads": c.n_kv_head, "head_dim": c.head_dim, "hidden_act": "silu",
          "rms_norm_eps": c.rms_norm_eps, "rope_theta": c.rope_theta,
          "rope_scaling": {"rope_type": "llama3", **c.rope_scaling} if c.rope_scaling else None,
          "tie_word_embeddings": c.tie_word_embeddings, "attention_dropout": c.dropout,
          "bos_token_id": c.bos_token_id, "eos_token_id": c.eos_token_id, "pad_token_id": c.pad_token_id}
    if c.model_type != "qwen2":
        hf["attention_bias"] = c.attention_bias
    if c.model_type != "llama":
        hf["use_sliding_window"] = False
    if c.n_classes:
        hf["num_labels"] = c.n_classes
    return hf
