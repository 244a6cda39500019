"""
LoRA (Hu et al. 2021) for every model family: `--lora-rank R` freezes the pretrained model and trains, beside each
attention and MLP projection W, a rank-R update: y = x W^T + b + (alpha / R) x A^T B^T, with A (R, in) kaiming-uniform
and B (out, R) zero as in the paper and peft, so the model before the first step is the pretrained one exactly.

What trains: the adapters and the classification head (`score`), in full, as peft's `modules_to_save` does for
sequence classification. A generation task trains the adapters alone: its LM head is tied to the token embedding
(GPT-1, GPT-2, SmolLM2), so training it would train the whole vocabulary table. Biases and norms stay frozen (peft's
bias="none"); no LoRA dropout (peft's default, 0).

Targets, by name (peft's for these models): GPT-1 / GPT-2 the fused q, k, v projection c_attn, the attention output
c_proj and the MLP's c_fc and c_proj; the Llama family q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj.

A LoRALinear keeps the wrapped layer's weight and bias under their own names (c_attn.weight stays c_attn.weight), so
a checkpoint (save_checkpoint, --lora-save) is either the merged model (merge: W + (alpha / R) B A, saved by the
family's save_pretrained, loadable by anything) or the trained tensors alone (adapters.safetensors, and
adapter_config.json naming the base model, which load_adapted rebuilds; checkpoints.load reads such a directory).
"""
import json
import math
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from core import cli
from core.cli import UserError

TARGETS = ("c_attn", "c_proj", "c_fc",  # GPT-1 / GPT-2
           "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")  # the Llama family
ADAPTER_CONFIG, ADAPTER_WEIGHTS = "adapter_config.json", "adapters.safetensors"


class LoRALinear(nn.Module):
    """A frozen nn.Linear plus a trained low-rank update, its weight and bias kept under their own names."""

    def __init__(self, linear, rank, alpha, frozen_dtype=None):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight, self.bias = linear.weight, linear.bias
        if frozen_dtype is not None:  # bf16 autocast rounds them so at every call: held so once, half the memory
            self.weight = nn.Parameter(linear.weight.detach().to(frozen_dtype), requires_grad=False)
            self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().to(frozen_dtype),
                                                                       requires_grad=False)
        self.rank, self.alpha, self.scale = rank, alpha, alpha / rank
        like = dict(device=linear.weight.device, dtype=linear.weight.dtype)  # the adapters train in the model's dtype
        self.lora_A = nn.Parameter(torch.empty(rank, self.in_features, **like))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, rank, **like))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # nn.Linear's own init, as peft

    def forward(self, x):
        return F.linear(x, self.weight, self.bias) + F.linear(F.linear(x, self.lora_A), self.lora_B) * self.scale

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}, alpha={self.alpha}"


def lora_layers(model):
    """(parent module, attribute name, LoRALinear) of every adapted projection."""
    return [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
            if isinstance(child, LoRALinear)]


def add_lora(model, rank, alpha, frozen_dtype=None):
    """Freeze `model` (either family) and wrap every target projection of its blocks in a LoRALinear of this rank;
    the classification head, when there is one, trains in full. Returns the model. frozen_dtype (train.py: bfloat16
    under --dtype bf16, whose autocast runs every projection on bf16 weights): the wrapped projections' frozen
    weights and biases held in it, so the forward and the step are the same to the bit and those weights take half
    the memory (a merged checkpoint then holds their bf16 values plus the update)."""
    if not (isinstance(rank, int) and rank >= 1):
        raise UserError(f"LoRA rank must be a whole number >= 1 (got {rank})")
    if not alpha > 0:
        raise UserError(f"LoRA alpha must be > 0 (got {alpha})")
    if lora_layers(model):
        raise ValueError("this model has LoRA adapters already")
    for p in model.parameters():
        p.requires_grad = False
    targets = [(parent, name, child) for block in model.blocks for parent in block.modules()
               for name, child in parent.named_children() if name in TARGETS and isinstance(child, nn.Linear)]
    if not targets:
        raise ValueError(f"{type(model).__name__} has none of LoRA's target projections {TARGETS}")
    narrowest = min(min(c.in_features, c.out_features) for _, _, c in targets)
    if rank > narrowest:
        raise UserError(f"argument --lora-rank: {rank} is more than {narrowest}, the narrowest projection's width "
                        "(a higher rank adds nothing)")
    for parent, name, child in targets:
        setattr(parent, name, LoRALinear(child, rank, alpha, frozen_dtype))
    if model.score is not None:
        model.score.weight.requires_grad = True
    return model


@torch.no_grad()
def merge(model):
    """Fold every adapter into its weight, W + (alpha / R) B A (in float32, then the adapters' dtype, the model's own:
    a base held in bf16 comes back in it), and put plain nn.Linear layers back: the model is then its family's own,
    and saves as a standard checkpoint. In place."""
    for parent, name, layer in lora_layers(model):
        dtype = layer.lora_A.dtype
        delta = (layer.lora_B.float() @ layer.lora_A.float()) * layer.scale
        linear = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None, device="meta")
        if layer.weight.dtype == dtype:
            layer.weight += delta.to(dtype)
            linear.weight, linear.bias = layer.weight, layer.bias
        else:
            linear.weight = nn.Parameter((layer.weight.float() + delta).to(dtype), requires_grad=False)
            linear.bias = None if layer.bias is None else nn.Parameter(layer.bias.to(dtype), requires_grad=False)
        setattr(parent, name, linear)
    return model


def trained_state(model):
    """The tensors LoRA trains, by their names in the model: every adapter and the classification head."""
    return {name: p.detach().cpu().contiguous() for name, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(model, directory, how, base):
    """--save-checkpoint: a model without adapters as its family saves it; with adapters the merged model (`how`
    "merged", in place) or the adapters and head alone ("adapters"), with `base` (source, depth, seed, identity:
    what load_adapted rebuilds the pretrained model from)."""
    layers = lora_layers(model)
    if not layers:
        return model.save_pretrained(directory)
    if how == "merged":
        return merge(model).save_pretrained(directory)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file(trained_state(model), directory / ADAPTER_WEIGHTS, metadata={"format": "pt"})
    meta = {"rank": layers[0][2].rank, "alpha": layers[0][2].alpha, "targets": sorted({n for _, n, _ in layers}),
            "n_classes": model.config.n_classes, "base": base}
    cli.write_atomic(directory / ADAPTER_CONFIG, json.dumps(meta, indent=1) + "\n")


def load_adapters(model, directory):
    """`model` (the pretrained base, as it was when the adapters were trained) with the saved adapters and head of
    `directory` added: every saved tensor must fit a trained one of the same shape, and every trained one be saved."""
    meta = cli.read_json(Path(directory) / ADAPTER_CONFIG, "LoRA adapter config")
    add_lora(model, meta["rank"], meta["alpha"])
    saved, trained = load_file(Path(directory) / ADAPTER_WEIGHTS), dict(model.named_parameters())
    expected = {name for name, p in trained.items() if p.requires_grad}
    bad = sorted(set(saved) ^ expected) + [n for n in saved if n in trained and saved[n].shape != trained[n].shape]
    if bad:
        raise UserError(f"{directory}: the adapters do not fit this model (missing, unexpected or misshapen: "
                        f"{bad[:5]}{' ...' if len(bad) > 5 else ''})")
    with torch.no_grad():
        for name, tensor in saved.items():
            trained[name].copy_(tensor)
    return model


def is_adapter_checkpoint(path):
    return (Path(path).expanduser() / ADAPTER_CONFIG).is_file()
