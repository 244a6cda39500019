"""
GGUF files (llama.cpp's format) read into what a Hub checkpoint gives: a config.json-like dict and float32 tensors
under transformers' Llama/Qwen names, so llama.py loads either through one key table. Reading and dequantizing is
the `gguf` package's (the reader llama.cpp publishes); what is ours is the name mapping, the config and undoing the
query/key row permutation llama.cpp's converter applies to Llama checkpoints.

    check_gguf(path)  -> metadata summary      header only (tensor data is memory-mapped, not read): refuses a
                                               corrupt, truncated or unsupported file before a run starts
    read_gguf(path)   -> (hf_config, state, summary)
"""
import math
import re
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from model import CheckpointError


class GGUFError(CheckpointError):
    """A GGUF file that cannot be used: the message names the file and what is wrong."""


ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}
# the types gguf.quants dequantizes that real Llama/Qwen files use; anything else is refused by name up front
SUPPORTED_TYPES = {"F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"}

# GGUF tensor name -> transformers name ({n} = block index); rope_freqs is folded into the config instead
TOP_NAMES = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
             "output.weight": "lm_head.weight"}
BLOCK_NAMES = {
    "attn_norm.weight": "input_layernorm.weight", "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight", "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight", "attn_output.weight": "self_attn.o_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias", "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_q_norm.weight": "self_attn.q_norm.weight", "attn_k_norm.weight": "self_attn.k_norm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight", "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
# "{arch}.<key>" metadata -> config.json field
CONFIG_KEYS = {"block_count": "num_hidden_layers", "embedding_length": "hidden_size",
               "feed_forward_length": "intermediate_size", "attention.head_count": "num_attention_heads",
               "attention.head_count_kv": "num_key_value_heads", "context_length": "max_position_embeddings",
               "attention.layer_norm_rms_epsilon": "rms_norm_eps", "rope.freq_base": "rope_theta",
               "attention.key_length": "head_dim", "vocab_size": "vocab_size"}
REQUIRED = ("num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads", "rms_norm_eps")


def _reader(path):
    """gguf.GGUFReader that says "truncated" instead of failing on a short memory map with a reshape error."""
    from gguf import GGUFReader

    class Reader(GGUFReader):
        def _get(self, offset, dtype, count=1, override_order=None):
            end = int(offset) + int(count) * np.dtype(dtype).itemsize
            if end > len(self.data):
                raise GGUFError(f"{path}: truncated GGUF file: {len(self.data):,} bytes, but its contents "
                                f"need at least {end:,} (an interrupted download or copy?)")
            return super()._get(offset, dtype, count, override_order)

    path = Path(path)
    if not path.is_file():
        raise GGUFError(f"{path}: no such GGUF file")
    if path.stat().st_size == 0:
        raise GGUFError(f"{path}: empty file, not a GGUF model")
    try:
        return Reader(path)
    except GGUFError:
        raise
    except (ValueError, IndexError, KeyError, OverflowError, UnicodeDecodeError, MemoryError) as e:
        raise GGUFError(f"{path}: not a readable GGUF file ({str(e).splitlines()[0][:200]})") from None


_cache = {}  # (path, size, mtime) -> {what: value} of one model file at a time


def cached(path, what, build):
    """build(), once per process for an unchanged file: every stage of an experiment reads the same model, and
    parsing the vocabulary's ~100k strings, dequantizing the weights and building the tokenizer each take about a
    second. A changed file (size or mtime) is read again; one file is kept, so replaced files do not pile up."""
    path = Path(path)
    try:
        stat = path.stat()
    except OSError:
        return build()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _cache:
        _cache.clear()
        _cache[key] = {}
    if what not in _cache[key]:
        _cache[key][what] = build()
    return _cache[key][what]


def cached_reader(path):
    """_reader(path), parsed once per process for an unchanged file (check_gguf, read_gguf and the tokenizer each
    need the header)."""
    return cached(path, "reader", lambda: _reader(path))


def field(reader, key, default=None):
    """A metadata value as a Python value (str, int, float, bool, list), or default when absent."""
    entry = reader.fields.get(key)
    if entry is None:
        return default
    value = entry.contents()
    return value.item() if isinstance(value, np.generic) else value


def _summary(reader, path):
    """What the file is, checked: architecture, quantization types, every tensor name known and inside the file."""
    arch = field(reader, "general.architecture")
    if arch not in ARCHITECTURES:
        raise GGUFError(f"{path}: architecture {arch!r} is not supported (supported: {', '.join(ARCHITECTURES)})")
    for t in reader.tensors:
        if t.tensor_type.name not in SUPPORTED_TYPES:
            raise GGUFError(f"{path}: tensor {t.name} has quantization type {t.tensor_type.name}, which w2s cannot "
                            f"dequantize (supported: {', '.join(sorted(SUPPORTED_TYPES))})")
        _hf_name(t.name, path)
    return {"file": str(path), "bytes": path.stat().st_size, "architecture": arch,
            "name": field(reader, "general.name"), "file_type": field(reader, "general.file_type"),
            "tensor_types": dict(Counter(t.tensor_type.name for t in reader.tensors)),
            "n_tensors": len(reader.tensors)}


def check_gguf(path):
    """Refuse a corrupt, truncated or unsupported GGUF file fast (header and tensor table only); returns the summary."""
    path = Path(path)
    return _summary(cached_reader(path), path)


def _hf_name(name, path):
    if name in TOP_NAMES or name == "rope_freqs.weight":
        return TOP_NAMES.get(name)
    m = re.fullmatch(r"blk\.(\d+)\.(.+)", name)
    if m and m.group(2) in BLOCK_NAMES:
        return f"model.layers.{m.group(1)}.{BLOCK_NAMES[m.group(2)]}"
    raise GGUFError(f"{path}: unexpected tensor {name} (not a Llama/Qwen2/Qwen3 tensor w2s knows)")


def hf_config(reader, path):
    """config.json fields (transformers' names) from the file's metadata."""
    arch = field(reader, "general.architecture")
    config = {"model_type": arch, "architectures": [ARCHITECTURES[arch]], "hidden_act": "silu"}
    for key, name in CONFIG_KEYS.items():
        value = field(reader, f"{arch}.{key}")
        if value is not None:
            config[name] = value
    missing = [name for name in REQUIRED if name not in config]
    if missing:
        raise GGUFError(f"{path}: metadata lacks {', '.join(f'{arch}.' + k for k, v in CONFIG_KEYS.items() if v in missing)}")
    config.setdefault("num_key_value_heads", config["num_attention_heads"])
    config.setdefault("rope_theta", 10000.0)
    # stored as float32, where config.json's 1e-5 reads 9.99999975e-06: 7 significant digits give back the decimal
    config["rms_norm_eps"] = float(f"{config['rms_norm_eps']:.7g}")
    names = {t.name for t in reader.tensors}
    embd = next((t for t in reader.tensors if t.name == "token_embd.weight"), None)
    if embd is not None:  # older files have no {arch}.vocab_size: the embedding's rows are the model's vocabulary
        config.setdefault("vocab_size", int(embd.shape[1]))
    config["tie_word_embeddings"] = "output.weight" not in names
    for name, key in (("bos", "bos"), ("eos", "eos"), ("pad", "padding")):
        value = field(reader, f"tokenizer.ggml.{key}_token_id")
        if value is not None:
            config[f"{name}_token_id"] = value
    if arch == "llama":
        config |= {"attention_bias": "blk.0.attn_q.bias" in names, "mlp_bias": False}
    scaling = _rope_scaling(reader, arch, config, path)
    if scaling:
        config["rope_scaling"] = scaling
    return config


def _rope_scaling(reader, arch, config, path):
    kind = field(reader, f"{arch}.rope.scaling.type")
    factor = field(reader, f"{arch}.rope.scaling.factor")
    if kind == "linear" and factor:
        return {"rope_type": "linear", "factor": float(factor)}
    if kind not in (None, "none"):
        raise GGUFError(f"{path}: rope scaling {kind!r} is not supported (only linear and Llama 3's)")
    freqs = next((t for t in reader.tensors if t.name == "rope_freqs.weight"), None)
    return _llama3_scaling(np.asarray(freqs.data, dtype=np.float32), config, path) if freqs is not None else None


def _llama3_scaling(freq_factors, config, path):
    """Llama 3.x rope scaling from the per-frequency divisors llama.cpp's converter stores as rope_freqs.weight:
    the file keeps only the divisors, so the parameters are recovered by recomputing the divisors from the largest
    one (= factor) and Llama 3.x's published low/high frequency factors and original context, which must match."""
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    inv_freq = 1.0 / (config["rope_theta"] ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
    factor = float(freq_factors.max())
    for low, high, context in [(1.0, 4.0, 8192)]:
        wavelen = 2 * math.pi / inv_freq
        smooth = np.clip((context / wavelen - low) / (high - low), 0.0, 1.0)
        expected = 1.0 / ((1 - smooth) / factor + smooth)
        if expected.shape == freq_factors.shape and np.allclose(expected, freq_factors, rtol=1e-4):
            return {"rope_type": "llama3", "factor": factor, "low_freq_factor": low, "high_freq_factor": high,
                    "original_max_position_embeddings": context}
    raise GGUFError(f"{path}: rope_freqs.weight does not match Llama 3's rope scaling (unknown rope parameters)")


def unpermute(w, n_head):
    """Inverse of llama.cpp's convert_hf_to_gguf LlamaModel.permute: the converter reorders each head's query/key
    rows from transformers' rotate-half layout (first half, second half) to GGML's interleaved pairs."""
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def _dequantize(t, path):
    from gguf import quants
    try:
        array = quants.dequantize(t.data, t.tensor_type)
    except (ValueError, NotImplementedError) as e:
        raise GGUFError(f"{path}: cannot dequantize tensor {t.name} ({t.tensor_type.name}: {e})") from None
    shape = tuple(reversed([int(d) for d in t.shape]))  # GGUF lists dimensions innermost first
    return torch.from_numpy(np.array(array, dtype=np.float32).reshape(shape))  # a copy: F32 is a view of the map


KEEP_BYTES = 2 << 30  # dequantized weights kept per process up to this size: a bigger model's kept copy would double
# the memory its run needs


def read_gguf(path):
    """(hf_config, state, summary): config.json-like dict, float32 tensors under transformers' names, and the
    metadata summary (file, size, architecture, tensor types). Dequantized once per process for an unchanged file of
    up to KEEP_BYTES of float32 weights: the tensors are shared between calls, so a caller copies them
    (load_state_dict does) and never writes them."""
    if sum(int(np.prod(t.shape)) for t in cached_reader(path).tensors) * 4 > KEEP_BYTES:
        return _read_gguf(Path(path))
    config, state, summary = cached(path, "tensors", lambda: _read_gguf(Path(path)))
    return dict(config), dict(state), dict(summary)


def _read_gguf(path):
    reader = cached_reader(path)
    summary = _summary(reader, path)
    config = hf_config(reader, path)
    state = {}
    for t in reader.tensors:
        name = _hf_name(t.name, path)
        if name is None:
            continue  # rope_freqs: already in config["rope_scaling"]
        w = _dequantize(t, path)
        # only llama files are permuted: the converter's Qwen2/Qwen3 classes write q/k rows as transformers has them
        if summary["architecture"] == "llama" and ".q_proj." in name:
            w = unpermute(w, config["num_attention_heads"])
        elif summary["architecture"] == "llama" and ".k_proj." in name:
            w = unpermute(w, config["num_key_value_heads"])
        state[name] = w
    return config, state, summary
