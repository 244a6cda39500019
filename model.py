"""
GPT-1 and GPT-2 in one small file, nanoGPT style: config, attention, MLP, block, model, then loading and saving
checkpoints in the Hugging Face Hub layout. Padding is handled everywhere through `attention_mask` (1 = real token,
0 = pad): positions are cumsum(mask) - 1, so left or right padding never changes the outputs of real tokens.
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
from core.cli import UserError
from models.decode import decode, sample


class CheckpointError(UserError, ValueError):
    """A model directory or file that cannot be loaded: the message names the file."""


@dataclass
class GPTConfig:
    block_size: int = 1024          # n_positions (GPT-1: 512)
    vocab_size: int = 50257         # GPT-1: 40478
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    layer_norm_epsilon: float = 1e-5
    pre_ln: bool = True             # GPT-2 pre-LayerNorm + final ln_f; GPT-1 post-LayerNorm, no final LN
    activation: str = "gelu_new"    # "gelu_new" (tanh approx; GPT-2 and GPT-1 alike) or "gelu" (exact erf)
    n_classes: int = 0              # >0 adds a classification head `score` (Linear n_embd->n_classes, no bias)
    dropout: float = 0.0
    grad_checkpoint: bool = False   # activation checkpointing per block (training only)


class CausalSelfAttention(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.n_head, self.dropout = config.n_head, config.dropout
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x, mask, past=None):
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        if past is not None:  # generation: keys and values of earlier tokens come from the cache
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        # mask None means no padding and no cache: plain causal attention, which lets SDPA use the flash kernel
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None,
                                           dropout_p=self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y)), (k, v)


class MLP(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd)
        self.approximate = "tanh" if config.activation == "gelu_new" else "none"
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate=self.approximate)))


class Block(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.pre_ln = config.pre_ln
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.mlp = MLP(config)

    def forward(self, x, mask, past=None):
        if self.pre_ln:  # GPT-2
            a, kv = self.attn(self.ln_1(x), mask, past)
            x = x + a
            return x + self.mlp(self.ln_2(x)), kv
        a, kv = self.attn(x, mask, past)  # GPT-1: LayerNorm after each residual sum
        x = self.ln_1(x + a)
        return self.ln_2(x + self.mlp(x)), kv


def positions_and_mask(B, T, attention_mask, cache, device, block_size):
    """Each new token's position and the attention mask (None: no padding and no cache, plain causal attention,
    which lets SDPA use the flash kernel), for both model families. Positions count real tokens only (cumsum of
    the mask - 1), so left or right padding never changes the outputs of real tokens."""
    past_len = cache[0][0].size(2) if cache else 0
    if past_len + T > block_size:
        raise ValueError(f"sequence length {past_len + T} exceeds block_size {block_size}")
    if attention_mask is None and not cache:
        return torch.arange(T, device=device), None
    if attention_mask is None:
        attention_mask = torch.ones(B, past_len + T, dtype=torch.long, device=device)
    if tuple(attention_mask.shape) != (B, past_len + T):
        raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)}, expected {(B, past_len + T)}")
    real = attention_mask.bool()
    pos = (real.long().cumsum(1) - 1).clamp(min=0)[:, past_len:]
    q = torch.arange(past_len, past_len + T, device=device)[:, None]
    k = torch.arange(past_len + T, device=device)[None, :]
    # causal AND key is real; every query also sees itself so that pad queries get no all-masked (NaN) row
    return pos, ((k <= q) & real[:, None, None, :]) | (k == q)  # (B, 1, T, past_len + T)


class DecoderLM(nn.Module):
    """What every model family offers train.py, the decoders and the votes, on top of its own _run (final hidden
    states and KV cache), lm_head and score: the LM logits and loss, the classification head on the last real
    token, generation (decode.py's loop with one model) and one decoding step."""

    def hidden(self, idx, attention_mask=None):
        return self._run(idx, attention_mask)[0]

    def forward(self, idx, attention_mask=None, targets=None):
        logits = self.lm_head(self.hidden(idx, attention_mask))
        loss = None
        if targets is not None:  # targets[:, t] is the token that should follow idx[:, t]; -100 = ignored
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.reshape(-1), ignore_index=-100)
        return logits, loss

    def classify(self, idx, attention_mask=None):
        """Class logits (B, n_classes) from the hidden state of each row's last real token."""
        if self.score is None:
            raise ValueError("classify needs a classification head: build the model with n_classes > 0")
        h = self.hidden(idx, attention_mask)
        if attention_mask is None:
            return self.score(h[:, -1])
        positions = torch.arange(idx.size(1), device=idx.device)
        last = torch.where(attention_mask.bool(), positions, -1).max(dim=1).values  # rightmost real token
        if (last < 0).any():
            raise ValueError(f"classify: rows {(last < 0).nonzero().flatten().tolist()} have no real tokens (attention_mask all 0)")
        return self.score(h[torch.arange(idx.size(0), device=idx.device), last])

    @torch.no_grad()
    def generate(self, idx, attention_mask=None, max_new_tokens=20, temperature=0.0, top_k=None, top_p=None,
                 eos_token=None, generator=None):
        """Continue left-padded prompts; returns prompt + new tokens (B, T + max_new_tokens). Rows that emitted
        eos_token keep emitting it; when all rows are done the rest is filled with eos_token. Temperature 0 is greedy.
        The one-model case of decode.py's loop, where the rules for several models (votes, contrastive) are too."""
        return decode([self], idx, attention_mask, sample(temperature, top_k, top_p, generator), max_new_tokens,
                      eos_token)

    @classmethod
    def for_checkpoint(cls, config):
        """The model a checkpoint is loaded into, built without random init: the checkpoint fills every weight but a
        new classification head, and drawing 135M random numbers only to overwrite them took longer than reading the
        file. The new head, normal(0, 0.02) as in the random init, is the one draw, so it depends on the seed alone.
        Loading must then fill every other weight (both families' _load_hf_state refuse a missing tensor)."""
        with torch.device("meta"):
            model = cls(config)
        names = {}
        for name, p in model.named_parameters(remove_duplicate=False):
            names.setdefault(id(p), []).append(name)
        model.to_empty(device="cpu")
        for first, *others in names.values():  # to_empty gives each name its own tensor: tie them again
            for name in others:
                module, _, attr = name.rpartition(".")
                setattr(model.get_submodule(module), attr, model.get_parameter(first))
        if model.score is not None:
            nn.init.normal_(model.score.weight, mean=0.0, std=0.02)
        return model

    def next_token_logits(self, idx, attention_mask, cache):
        """One decoding step, what decode.py needs of a model: float32 logits (B, vocab_size) of the token after each
        row, and the grown KV cache (start with []; after that `idx` holds only the new tokens, as in _run)."""
        h, cache = self._run(idx, attention_mask, cache)
        return self.lm_head(h[:, -1]).float(), cache



class GPT(DecoderLM):

    def __init__(self, config):
        super().__init__()
        if config.activation not in ("gelu_new", "gelu"):
            raise ValueError(f"activation must be 'gelu_new' or 'gelu', got {config.activation!r}")
        if config.n_embd % config.n_head:
            raise ValueError(f"n_embd {config.n_embd} is not divisible by n_head {config.n_head}")
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
        ))
        if config.pre_ln:
            self.transformer.ln_f = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight  # tied, as in GPT-1 and GPT-2
        self.score = nn.Linear(config.n_embd, config.n_classes, bias=False) if config.n_classes > 0 else None
        if not self.lm_head.weight.is_meta:  # for_checkpoint builds on meta: the checkpoint fills the weights
            for name, p in self.named_parameters():  # GPT-2 init, residual projections scaled down by depth
                if p.dim() == 2:
                    std = 0.02 / math.sqrt(2 * config.n_layer) if name.endswith("c_proj.weight") else 0.02
                    nn.init.normal_(p, mean=0.0, std=std)
                elif name.endswith("bias"):
                    nn.init.zeros_(p)

    def num_params(self):
        return sum(p.numel() for p in self.parameters())  # parameters() yields the tied wte/lm_head once

    def flops_per_token(self, seq_len):
        """Training FLOPs per token (forward + backward), PaLM appendix B style, as in nanoGPT's MFU estimate."""
        n = self.num_params() - self.transformer.wpe.weight.numel()
        return 6 * n + 12 * self.config.n_layer * self.config.n_embd * seq_len

    def _run(self, idx, attention_mask=None, cache=None, blocks=slice(None), x=None):
        """Final hidden states (B, T, n_embd), and with `cache` (a list: empty at first, then what the previous call
        returned) the per-layer (k, v) so far. With a non-empty cache, `idx` holds only the new tokens while
        `attention_mask` covers earlier and new tokens. `blocks` runs a slice of the blocks only (--train-layers:
        the frozen bottom once, the trained top at every step): one that starts after block 0 takes that block's
        input `x` (B, T, n_embd) instead of `idx`, and one that stops before the end returns its last block's
        output, without the final LayerNorm."""
        B, T = idx.shape if x is None else x.shape[:2]
        device = idx.device if x is None else x.device
        pos, mask = positions_and_mask(B, T, attention_mask, cache, device, self.config.block_size)
        start, stop, _ = blocks.indices(len(self.transformer.h))
        if start == 0:
            x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        new_cache = None if cache is None else []  # only kept when asked for: checkpointing would hold them all
        for i in range(start, stop):
            block, past = self.transformer.h[i], cache[i] if cache else None
            if self.config.grad_checkpoint and self.training and torch.is_grad_enabled():
                x, kv = checkpoint(block, x, mask, past, use_reentrant=False)
            else:
                x, kv = block(x, mask, past)
            if new_cache is not None:
                new_cache.append(kv)
        if self.config.pre_ln and stop == len(self.transformer.h):
            x = self.transformer.ln_f(x)
        return x, new_cache

    @property
    def blocks(self):
        return self.transformer.h

    @property
    def norm(self):
        """The final norm (GPT-2's ln_f), None for GPT-1."""
        return self.transformer.ln_f if self.config.pre_ln else None

    def final_norm(self, x):
        """What the last block's output goes through before a head (GPT-1 has no final LayerNorm)."""
        return self.transformer.ln_f(x) if self.config.pre_ln else x

    def truncate(self, depth):
        """Keep the first `depth` blocks and the final norm: a shallower pretrained model from the same weights
        (`model@depth`), whose hidden states are the full model's after block `depth`, normed."""
        if not 1 <= depth <= self.config.n_layer:
            raise CheckpointError(f"depth {depth} is outside 1..{self.config.n_layer}, the blocks this model has")
        self.transformer.h = self.transformer.h[:depth]
        self.config.n_layer = depth
        return self

    # ------------------------------------------------------------------------------------------------------------
    # Checkpoints in the Hugging Face layout

    @classmethod
    def from_pretrained(cls, name_or_path, revision=None, n_classes=0):
        """GPT-1/GPT-2 from a local directory or the Hub (config.json + model.safetensors); "random:<shape>" builds a
        random-init model of that shape instead (the current torch seed decides the weights)."""
        if str(name_or_path).startswith("random:"):
            return cls(random_config(str(name_or_path), n_classes))
        config_file, weights_file = _checkpoint_files(str(name_or_path), revision)
        model = cls.for_checkpoint(_config_from_hf(read_config(config_file), config_file, n_classes))
        try:
            state = load_file(weights_file)
        except (SafetensorError, OSError) as e:
            raise CheckpointError(f"cannot read weights {weights_file} (corrupt or truncated safetensors file?): {e}") from None
        model._load_hf_state(state, weights_file)
        return model

    def _load_hf_state(self, state, weights_file):
        ours = {k: v for k, v in self.state_dict().items() if k != "lm_head.weight"}
        lm_head, loaded, unexpected = None, {}, []
        for key, tensor in state.items():
            name = _our_name(key)
            if _HF_BUFFER.fullmatch(name):
                continue  # the causal-mask buffers of old checkpoints
            if name == "lm_head.weight":
                lm_head = tensor
            elif name in ("score.weight", "score.bias"):
                # a classification head is reused when its shape fits, otherwise the fresh one stays
                if self.score is not None and tensor.shape == self.score.weight.shape[:tensor.dim()]:
                    loaded[name] = tensor
            elif name in ours:
                loaded[name] = tensor.t() if _CONV1D.search(name) else tensor  # HF Conv1D stores (in, out)
            else:
                unexpected.append(key)
        if self.score is not None and "score.weight" not in loaded:
            loaded.pop("score.bias", None)
            loaded["score.weight"] = ours["score.weight"]
        if "score.bias" in loaded:  # a fitted probe's head (probe.py) has a bias, a fine-tuned one does not
            self.score.bias = nn.Parameter(torch.zeros_like(loaded["score.bias"]))
            ours["score.bias"] = self.score.bias
        missing = sorted(set(ours) - set(loaded))
        if missing or unexpected:
            raise CheckpointError(f"checkpoint {weights_file} does not match the model: missing tensors {missing}, "
                             f"unexpected tensors {sorted(unexpected)}")
        bad = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(ours[k].shape)}"
               for k, v in loaded.items() if v.shape != ours[k].shape]
        if bad:
            raise CheckpointError(f"checkpoint {weights_file} has tensors of the wrong shape: {'; '.join(bad)}")
        if lm_head is not None and not torch.equal(lm_head, loaded["transformer.wte.weight"]):
            raise CheckpointError(f"checkpoint {weights_file} has an lm_head.weight that differs from the token embedding; "
                             "only tied output embeddings are supported")
        self.load_state_dict(loaded, strict=False)  # strict by the checks above; lm_head is tied to wte

    def save_pretrained(self, directory):
        """config.json + model.safetensors in the Hub layout, loadable here and by transformers."""
        c, directory = self.config, Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        gpt1 = not c.pre_ln
        if gpt1 and c.activation != "gelu_new":
            raise ValueError("a post-LN (GPT-1) model saves as openai-gpt, whose only GELU is the tanh approximation: "
                             f"build it with activation='gelu_new', not {c.activation!r}")
        head = "ForSequenceClassification" if c.n_classes else "LMHeadModel"
        hf = {"model_type": "openai-gpt" if gpt1 else "gpt2",
              "architectures": [("OpenAIGPT" if gpt1 else "GPT2") + head],
              "vocab_size": c.vocab_size, "n_positions": c.block_size, "n_ctx": c.block_size, "n_embd": c.n_embd,
              "n_layer": c.n_layer, "n_head": c.n_head, "layer_norm_epsilon": c.layer_norm_epsilon,
              "resid_pdrop": c.dropout, "embd_pdrop": c.dropout, "attn_pdrop": c.dropout,
              **({"afn": "gelu"} if gpt1 else {"activation_function": c.activation})}
        if c.n_classes:
            hf["num_labels"] = c.n_classes
        (directory / "config.json").write_text(json.dumps(hf, indent=2) + "\n")
        state = {}
        for name, tensor in self.state_dict().items():
            if name == "lm_head.weight":
                continue  # tied to wte
            tensor = tensor.t() if _CONV1D.search(name) else tensor
            state[_hub_name(name, gpt1)] = tensor.detach().cpu().contiguous()
        save_file(state, directory / "model.safetensors", metadata={"format": "pt"})


# The one key-mapping table: Hub/transformers name -> ours. Everything else only differs by the `transformer.` prefix.
_GPT1_NAMES = {"tokens_embed.weight": "wte.weight", "positions_embed.weight": "wpe.weight"}
_GPT1_HUB_NAMES = {ours: hub_name for hub_name, ours in _GPT1_NAMES.items()}
_HF_BUFFER = re.compile(r"transformer\.h\.\d+\.attn\.(bias|masked_bias)")
_CONV1D = re.compile(r"\.(c_attn|c_proj|c_fc)\.weight$")
_HUB_NAMES = {"gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", "openai-gpt"}


def _our_name(key):
    key = key.removeprefix("transformer.")
    if key in ("lm_head.weight", "score.weight", "score.bias"):
        return key
    return "transformer." + _GPT1_NAMES.get(key, key)


def _hub_name(name, gpt1):
    if name in ("score.weight", "score.bias"):
        return name
    name = name.removeprefix("transformer.")
    return _GPT1_HUB_NAMES.get(name, name) if gpt1 else name


def hub_repo(name):
    """The Hub repository of a model name: the paper's models live under openai-community/."""
    return f"openai-community/{name}" if name in _HUB_NAMES else name


def check_checkpoint(name_or_path, revision=None):
    """(config file, weights file) of a checkpoint, after reading its config and the header of its weights (not the
    weights): a missing, garbage or truncated file is refused in a moment, before a run starts any work."""
    config_file, weights_file = _checkpoint_files(str(name_or_path), revision)
    _config_from_hf(read_config(config_file), config_file, 0)
    try:
        with safe_open(weights_file, "pt"):  # checks the header and that the file holds every tensor it lists
            pass
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"cannot read weights {weights_file} (corrupt or truncated safetensors file?): {e}") from None
    return config_file, weights_file


def read_config(config_file):
    """A checkpoint's config.json as a dict (both families), or one line naming the file."""
    try:
        hf = json.loads(Path(config_file).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CheckpointError(f"cannot read model config {config_file}: {e}") from None
    if not isinstance(hf, dict):
        raise CheckpointError(f"cannot read model config {config_file}: not a JSON object")
    return hf


def _checkpoint_files(name_or_path, revision):
    local = Path(name_or_path).expanduser()
    if local.is_dir():
        missing = [name for name in ("config.json", "model.safetensors") if not (local / name).is_file()]
        if missing:
            raise CheckpointError(f"{local} has no {' or '.join(missing)} (a checkpoint is config.json + model.safetensors)")
        return local / "config.json", local / "model.safetensors"
    if name_or_path.startswith((".", "/", "~")) or local.exists() or name_or_path.count("/") > 1:
        raise CheckpointError(f"{name_or_path} is not a model directory (expected config.json + model.safetensors)")
    instead = "a local directory holding config.json and model.safetensors"
    return (hub.hub_file(hub_repo(name_or_path), "config.json", revision=revision, instead=instead),
            hub.hub_file(hub_repo(name_or_path), "model.safetensors", revision=revision, instead=instead))


# Random-init models by shape, for smoke runs and timing without weights: "random:gpt2-medium" (GPT-2's vocabulary and
# context, so real tokenized data fits), "random:openai-gpt", or "random:<layers>x<width>" (a byte-level toy model).
SHAPES = {
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768),
    "gpt2-medium": dict(n_layer=24, n_head=16, n_embd=1024),
    "gpt2-large": dict(n_layer=36, n_head=20, n_embd=1280),
    "gpt2-xl": dict(n_layer=48, n_head=25, n_embd=1600),
    "openai-gpt": dict(n_layer=12, n_head=12, n_embd=768, vocab_size=40478, block_size=512, pre_ln=False),
}
_TINY = re.compile(r"(\d+)x(\d+)")


def random_shape_family(shape):
    """Which tokenizer a random shape needs: "gpt2", "openai-gpt" or "bytes"."""
    if shape in SHAPES:
        return "openai-gpt" if shape == "openai-gpt" else "gpt2"
    tiny = _TINY.fullmatch(shape)
    if tiny and min(map(int, tiny.groups())) >= 1:
        return "bytes"
    raise CheckpointError(f"unknown random model shape {shape!r}: use random:<{'|'.join(SHAPES)}> or random:<layers>x<width>"
                          " with both at least 1 (e.g. random:2x64)")


def random_config(spec, n_classes=0):
    shape = spec[len("random:"):].partition(":")[0]
    if random_shape_family(shape) == "bytes":
        n_layer, n_embd = map(int, _TINY.fullmatch(shape).groups())
        # about one head per 32 channels, as many as divide the width (random:1x100 has 2 heads of 50)
        n_head = max(h for h in range(1, max(1, n_embd // 32) + 1) if n_embd % h == 0)
        return GPTConfig(block_size=1024, vocab_size=257, n_layer=n_layer, n_head=n_head, n_embd=n_embd,
                         n_classes=n_classes)
    return GPTConfig(**SHAPES[shape], n_classes=n_classes)


def _config_from_hf(hf, config_file, n_classes):
    model_type = hf.get("model_type")
    if model_type not in ("gpt2", "openai-gpt"):
        raise CheckpointError(f"{config_file}: model_type {model_type!r} is not supported (only 'gpt2' and 'openai-gpt')")
    if (hf.get("scale_attn_by_inverse_layer_idx") or hf.get("scale_attn_weights", True) is False
            or hf.get("n_inner") not in (None, 4 * hf.get("n_embd", 0))):
        raise CheckpointError(f"{config_file}: non-standard attention scaling or MLP width (n_inner) is not supported")
    gpt1 = model_type == "openai-gpt"
    # GPT-1's "gelu" is the tanh approximation, in OpenAI's original code and in transformers' openai-gpt alike
    names = {"gelu": "gelu_new"} if gpt1 else {"gelu_new": "gelu_new", "gelu_pytorch_tanh": "gelu_new", "gelu": "gelu"}
    name = hf.get("afn", "gelu") if gpt1 else hf.get("activation_function", "gelu_new")
    if name not in names:
        raise CheckpointError(f"{config_file}: activation {name!r} is not supported for model_type {model_type!r}")
    try:
        return GPTConfig(block_size=hf["n_positions"] if "n_positions" in hf else hf["n_ctx"], vocab_size=hf["vocab_size"],
                         n_layer=hf["n_layer"], n_head=hf["n_head"], n_embd=hf["n_embd"],
                         layer_norm_epsilon=hf.get("layer_norm_epsilon", 1e-5), pre_ln=not gpt1,
                         activation=names[name], n_classes=n_classes)
    except KeyError as e:
        raise CheckpointError(f"{config_file}: missing field {e}") from None
