import csv
import gzip
import json
import random
import shutil
import time

import pytest

from core import hub
from models.tokenizer import TokenizerError, load_tokenizer, save_byte_tokenizer

# Hand-picked cases real text also holds: whitespace runs, contractions, newlines, accents, CJK, emoji, controls
EDGE_CASES = [
    "", " ", "   leading and trailing   ", "tabs\tand\n\nnewlines\r\n end\n", "it's they're I'M we'll she'd y'all",
    "café naïve Σίσυφος ΣΑΣ İstanbul straße", "中文字符 and 日本語 한국어", "emoji 🙂👍🏽 ¯\\_(ツ)_/¯",
    "a <|endoftext|> b",
    "a <unk> b", "x\x0by\u2028z\x85w\xa0v\ue000u\u200bt\x00s\ufffd", "$100 +5 <= 6 ^ `q` | ~", "--- ... !!! ???",
]


def real_texts(shared_data):
    """About ten thousand real texts from every data set in shared/data (every third row of the big ones)."""
    texts = []
    with open(shared_data / "safety/safety.csv", newline="", encoding="utf-8") as f:
        texts += [row["prompt"] for row in csv.DictReader(f)][::3]
    for name in ("toxic.jsonl", "nontoxic.jsonl"):
        for line in (shared_data / "toxicity" / name).read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            texts += [row["prompt"]["text"], row["prompt"]["text"] + row["continuation"]["text"]]
    with open(shared_data / "nlp/cosmosqa/valid.csv", newline="", encoding="utf-8") as f:
        texts += [row["context"] + "\n" + row["question"] for row in csv.DictReader(f)][::3]
    with open(shared_data / "legal/train.tsv", newline="", encoding="utf-8") as f:
        texts += [row["question"] + "\n" + row["text"] for row in csv.DictReader(f, delimiter="\t")]
    with gzip.open(shared_data / "nlp/anthropic_hh/harmless-base_test.jsonl.gz", "rt", encoding="utf-8") as f:
        texts += [json.loads(line)["chosen"] for _, line in zip(range(300), f)]
    return texts + EDGE_CASES


def hub_layout(tmp_path, shared_data, kind, config):
    """A directory laid out like the Hub repo (vocab.json + merges.txt + config) from OpenAI's original files."""
    source = {"gpt2": ("gpt2/encoder.json", "gpt2/vocab.bpe"),
              "openai-gpt": ("openai-gpt/encoder_bpe_40000.json", "openai-gpt/vocab_40000.bpe")}[kind]
    d = tmp_path / kind
    d.mkdir()
    shutil.copy(shared_data / "tokenizers" / source[0], d / "vocab.json")  # same format under the Hub's name
    shutil.copy(shared_data / "tokenizers" / source[1], d / "merges.txt")
    (d / "tokenizer_config.json").write_text(json.dumps(config))
    return d


def test_gpt2_ids_match_transformers_on_real_texts_and_decode_round_trips(shared_data, tmp_path):
    from transformers import GPT2TokenizerFast
    d = hub_layout(tmp_path, shared_data, "gpt2", {"tokenizer_class": "GPT2Tokenizer", "model_max_length": 10**6})
    reference = GPT2TokenizerFast.from_pretrained(d)
    texts = real_texts(shared_data)
    expected = reference(texts, add_special_tokens=False)["input_ids"]
    assert expected[0] and sum(map(len, expected)) > 250_000  # the reference really tokenizes (not the [] trap)
    tok = load_tokenizer(d)
    t0 = time.time()
    ids = tok.encode_batch(texts)
    print(f"gpt2: {len(texts)} texts, {sum(map(len, ids))} tokens in {time.time() - t0:.2f}s")
    mismatches = [t for t, a, b in zip(texts, ids, expected) if a != b]
    assert not mismatches, f"{len(mismatches)} texts differ, first: {mismatches[0]!r}"
    assert [tok.encode(t) for t in EDGE_CASES] == ids[-len(EDGE_CASES):]
    assert tok.encode("a <|endoftext|> b") == [64, 220, 50256, 275]
    assert [tok.decode(i) for i in ids] == texts
    assert (tok.vocab_size, tok.eot_token, tok.pad_token) == (50257, 50256, 50256)


def test_gpt1_ids_match_transformers_on_real_texts(shared_data, tmp_path):
    from transformers import OpenAIGPTTokenizer
    config = {"tokenizer_class": "OpenAIGPTTokenizer", "model_max_length": 10**6}
    d = hub_layout(tmp_path, shared_data, "openai-gpt", config)
    reference = OpenAIGPTTokenizer.from_pretrained(d)
    texts = real_texts(shared_data)
    expected = reference(texts, add_special_tokens=False)["input_ids"]
    assert expected[0] and sum(map(len, expected)) > 250_000  # the reference really tokenizes
    tok = load_tokenizer(d)
    t0 = time.time()
    ids = tok.encode_batch(texts)
    print(f"openai-gpt: {len(texts)} texts, {sum(map(len, ids))} tokens in {time.time() - t0:.2f}s")
    mismatches = [t for t, a, b in zip(texts, ids, expected) if a != b]
    assert not mismatches, f"{len(mismatches)} texts differ, first: {mismatches[0]!r}"
    # decode joins tokens and turns the </w> word ends back into spaces, like transformers' BPEDecoder
    assert [tok.decode(i) for i in ids[:300]] == reference.batch_decode(expected[:300])
    assert tok.decode(tok.encode("Hello, World! It's")) == "hello , world ! it ' s"
    assert (tok.vocab_size, tok.eot_token, tok.pad_token) == (40478, None, 0)


def test_openai_file_names_load_the_same_tokenizer_as_hub_file_names(shared_data, tmp_path):
    text = "The quick brown fox's café\n\n  jumps over 42 lazy dogs!"
    for kind, config in (("gpt2", {"model_type": "gpt2"}), ("openai-gpt", {"model_type": "openai-gpt"})):
        openai_names = load_tokenizer(shared_data / "tokenizers" / kind)  # encoder.json + vocab.bpe etc, no config
        hub_names = load_tokenizer(hub_layout(tmp_path, shared_data, kind, config))
        assert type(openai_names) is type(hub_names)
        assert openai_names.encode(text) == hub_names.encode(text) and len(openai_names.encode(text)) > 10
    assert type(openai_names).__name__ == "GPT1Tokenizer"


def test_byte_tokenizer_round_trips_arbitrary_unicode(tmp_path):
    tok = load_tokenizer(save_byte_tokenizer(tmp_path / "bytes"))
    assert (tok.vocab_size, tok.eot_token, tok.pad_token) == (257, 256, 256)
    rng = random.Random(0)
    def random_char():  # ASCII, BMP below the surrogates, or anything above them
        return chr(rng.choice([rng.randrange(32, 127), rng.randrange(0x80, 0xD800), rng.randrange(0xE000, 0x110000)]))
    texts = ["".join(random_char() for _ in range(rng.randrange(1, 60))) for _ in range(200)] + EDGE_CASES
    for text in texts:
        if "<|endoftext|>" not in text:
            assert tok.encode(text) == list(text.encode("utf-8"))  # id = byte value
        assert tok.decode(tok.encode(text)) == text
    assert tok.encode("a<|endoftext|>") == [97, 256]
    assert tok.encode_batch(texts) == [tok.encode(t) for t in texts]


def test_hub_name_resolves_through_hub_file(tmp_path, monkeypatch):
    hub_dir = save_byte_tokenizer(tmp_path / "hub")
    (hub_dir / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    calls = []

    def fake_hub_file(repo_id, filename, revision=None, repo_type="model", instead=""):
        calls.append((repo_id, filename, revision))
        if not (hub_dir / filename).is_file():
            raise FileNotFoundError(f"{repo_id} has no {filename}")
        return hub_dir / filename

    monkeypatch.setattr(hub, "hub_file", fake_hub_file)
    tok = load_tokenizer("gpt2-medium", revision="abc123")
    assert tok.encode("hi") == [104, 105] and tok.name == "gpt2-medium"
    assert calls == [("openai-community/gpt2-medium", name, "abc123")
                     for name in ("vocab.json", "merges.txt", "tokenizer_config.json", "config.json")]
    calls.clear()
    load_tokenizer("someone/my-gpt2")
    assert calls[0] == ("someone/my-gpt2", "vocab.json", None)


def test_hub_name_offline_raises_one_clear_error():
    with pytest.raises(hub.OfflineError, match="w2s-test/not-cached.*vocab.json.*local directory holding vocab.json"):
        load_tokenizer("w2s-test/not-cached")


def test_bad_inputs_raise_errors_naming_the_file(tmp_path):
    with pytest.raises(TokenizerError, match=f"{tmp_path}.*holds no tokenizer.*vocab.json \\+ merges.txt"):
        load_tokenizer(tmp_path)
    with pytest.raises(TokenizerError, match="./no/such/dir is not a tokenizer directory"):
        load_tokenizer("./no/such/dir")
    d = save_byte_tokenizer(tmp_path / "bad")
    (d / "merges.txt").write_text("#version: 0.2\nĠ t\nthree tokens here\n")
    with pytest.raises(ValueError, match=r"merges.txt line 3: expected two tokens"):
        load_tokenizer(d)
    (d / "merges.txt").write_text("#version: 0.2\nĠ t\n")  # a merge whose token the vocab lacks
    with pytest.raises(ValueError, match=r"vocab.json: vocab does not match its merges"):
        load_tokenizer(d)
    (d / "vocab.json").write_text(json.dumps({"<unk>": 0, "a</w>": 1, "b</w>": 2}))  # GPT-1 style: ab</w> missing
    (d / "merges.txt").write_text("#version: 0.2\na b</w>\n")
    with pytest.raises(ValueError, match=r"vocab.json: vocab does not match its merges \(no token 'ab</w>'\)"):
        load_tokenizer(d)
    (d / "vocab.json").write_text('{"a": 0, ')
    with pytest.raises(ValueError, match=r"vocab.json: not a JSON vocab"):
        load_tokenizer(d)
    (d / "vocab.json").write_text(json.dumps({"a b": 0}))
    with pytest.raises(ValueError, match=r"vocab.json: characters \[' '\] are not in GPT-2's byte alphabet"):
        load_tokenizer(d)


# ---- Llama-family byte-level BPE (SmolLM2, Llama 3, Qwen) from a GGUF file or a tokenizer.json

# bytes SmolLM2's vocabulary lacks (\x04, and the lead byte 0xF1 of U+50000): transformers drops them and lets the
# bytes either side merge ("..\x04.." is one token "....")
MISSING_BYTE_CASES = ["a\x04b", "..\x04..", "hel\x04lo", "x\U00050000y", "\x04", "<|im_start|>\x04<|im_end|>"]


@pytest.fixture(scope="session")
def smollm2_reference(smollm2_gguf, tmp_path_factory):
    """(transformers' tokenizer for the real GGUF, a directory holding the tokenizer.json it saves)."""
    from transformers import AutoTokenizer
    reference = AutoTokenizer.from_pretrained(smollm2_gguf.parent, gguf_file=smollm2_gguf.name)
    directory = tmp_path_factory.mktemp("smollm2-tokenizer")
    reference.save_pretrained(directory)
    return reference, directory


def test_smollm2_gguf_ids_match_transformers_on_real_texts_and_decode_round_trips(shared_data, smollm2_gguf,
                                                                                  smollm2_reference):
    reference, directory = smollm2_reference
    texts = real_texts(shared_data)
    expected = reference(texts + MISSING_BYTE_CASES)["input_ids"]  # add_special_tokens as transformers defaults
    assert expected[0] and sum(map(len, expected)) > 250_000
    for tok in (load_tokenizer(smollm2_gguf), load_tokenizer(directory)):  # the GGUF's metadata, its tokenizer.json
        t0 = time.time()
        ids = tok.encode_batch(texts + MISSING_BYTE_CASES)
        print(f"{tok.name}: {len(texts)} texts, {sum(map(len, ids))} tokens in {time.time() - t0:.2f}s")
        mismatches = [t for t, a, b in zip(texts + MISSING_BYTE_CASES, ids, expected) if a != b]
        assert not mismatches, f"{len(mismatches)} texts differ, first: {mismatches[0]!r}"
        assert [tok.encode(t) for t in EDGE_CASES + MISSING_BYTE_CASES] == ids[-len(EDGE_CASES + MISSING_BYTE_CASES):]
        assert [tok.decode(i) for i in ids[:len(texts)]] == texts
        # SmolLM2-Instruct: no BOS added (add_bos_token false), eos = pad = <|im_end|>
        assert (tok.vocab_size, tok.bos_token, tok.eot_token, tok.pad_token) == (49152, 1, 2, 2)
        assert tok.encode("<|im_start|>user\nHi<|im_end|>") == [1, 4093, 198, 26843, 2]
        assert tok.encode("..\x04..") == [5592] and tok.decode([5592]) == "...."


def test_tokenizer_json_pre_tokenizers_normalizer_and_bos_match_tokenizers(shared_data, smollm2_reference, tmp_path):
    """Each pre-tokenizer form Llama-family tokenizer.json files use (the Hub SmolLM2's Digits + ByteLevel, Llama 3's
    Split regex + ByteLevel), Qwen's NFC normalizer and Llama 3's BOS template, against the tokenizers library."""
    from tokenizers import Tokenizer
    _, directory = smollm2_reference
    spec = json.loads((directory / "tokenizer.json").read_text(encoding="utf-8"))
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True}
    llama3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
              r"|\s+(?!\S)|\s+")
    variants = {
        "digits": {"pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": True}, byte_level | {"use_regex": True}]}},
        "split": {"pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": llama3}, "behavior": "Isolated", "invert": False},
            byte_level | {"use_regex": False}]},
            "normalizer": {"type": "NFC"},
            "post_processor": {"type": "TemplateProcessing", "pair": [],
                               "single": [{"SpecialToken": {"id": "<|im_start|>", "type_id": 0}},
                                          {"Sequence": {"id": "A", "type_id": 0}}],
                               "special_tokens": {"<|im_start|>": {"id": "<|im_start|>", "ids": [1],
                                                                   "tokens": ["<|im_start|>"]}}}},
    }
    texts = real_texts(shared_data)[::4] + ["x  1 a  \n 22", "1 2  3   4\n\n5\t6 ", " 12ab 3.5 ٣٤ ² ", "e\u0301 cafe\u0301"]
    for name, change in variants.items():
        d = tmp_path / name
        d.mkdir()
        shutil.copy(directory / "tokenizer_config.json", d)
        (d / "tokenizer.json").write_text(json.dumps(spec | change), encoding="utf-8")
        expected = [e.ids for e in Tokenizer.from_file(str(d / "tokenizer.json")).encode_batch(texts)]
        ids = load_tokenizer(d).encode_batch(texts)
        mismatches = [t for t, a, b in zip(texts, ids, expected) if a != b]
        assert not mismatches, f"{name}: {len(mismatches)} texts differ, first: {mismatches[0]!r}"
    tok = load_tokenizer(d)  # the template's BOS, and only it, is what add_special_tokens adds
    assert all(i[0] == 1 for i in ids) and tok.encode("hi") == [1] + tok.encode("hi", add_special_tokens=False)
    spec["pre_tokenizer"] = {"type": "Metaspace", "replacement": "▁"}
    (d / "tokenizer.json").write_text(json.dumps(spec), encoding="utf-8")
    with pytest.raises(TokenizerError, match=f"{d / 'tokenizer.json'}: pre_tokenizer .*Metaspace.* is not supported"):
        load_tokenizer(d)
    (d / "tokenizer.json").write_text("{", encoding="utf-8")
    with pytest.raises(TokenizerError, match=f"{d / 'tokenizer.json'}: not a tokenizer.json"):
        load_tokenizer(d)


def write_gguf_vocab(path, pre, add_bos, kind="gpt2", shuffled=False):
    """A tiny Llama GGUF holding only a vocabulary: 3 specials (2 control, 1 user-defined), 256 bytes, 8 merges;
    shuffled: the merged tokens' ids not in merge order (tiktoken's ranks must then be mapped to ids)."""
    import gguf
    import numpy as np

    from models.tokenizer import bytes_to_unicode
    merges = ["Ġ t", "h e", "Ġt he", "i n", "Ġ a", "e r", "1 2", "12 3"]
    tokens = ["<|begin_of_text|>", "<|end_of_text|>", "<think>", *(bytes_to_unicode()[b] for b in range(256))]
    merged = [m.replace(" ", "") for m in merges]
    tokens += [merged[i] for i in (3, 0, 7, 1, 6, 2, 5, 4)] if shuffled else merged
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(1), w.add_embedding_length(32), w.add_feed_forward_length(64), w.add_head_count(2)
    w.add_layer_norm_rms_eps(1e-5), w.add_context_length(64)
    w.add_tokenizer_model(kind), w.add_tokenizer_pre(pre), w.add_token_list(tokens), w.add_token_merges(merges)
    w.add_token_types([3, 3, 4] + [1] * (len(tokens) - 3))
    w.add_bos_token_id(0), w.add_eos_token_id(1), w.add_add_bos_token(add_bos)
    w.add_tensor("token_embd.weight", np.zeros((len(tokens), 32), np.float32))
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
    return path


def tokens_of(path):
    import gguf
    return gguf.GGUFReader(path).fields["tokenizer.ggml.tokens"].contents()


def test_gguf_bos_pre_tokenizer_and_user_defined_tokens_match_transformers(tmp_path):
    from transformers import AutoTokenizer
    texts = ["the cat in the hat", "There 12345 <think>x</think> <|end_of_text|>", "", " the  \n\n the", "a1234b"]
    for pre, add_bos in [("llama-bpe", True), ("qwen2", False), ("smollm", True)]:
        path = write_gguf_vocab(tmp_path / f"{pre}.gguf", pre, add_bos)
        reference = AutoTokenizer.from_pretrained(tmp_path, gguf_file=path.name)
        tok = load_tokenizer(path)
        assert tok.encode_batch(texts) == reference(texts)["input_ids"], pre
        assert tok.encode(" the") == [0] * add_bos + [261] and tok.encode(" the", add_special_tokens=False) == [261]
        assert (tok.bos_token, tok.eot_token, tok.pad_token) == (0, 1, 1)  # no pad id in the file: eos
    path = write_gguf_vocab(tmp_path / "shuffled.gguf", "llama-bpe", False, shuffled=True)
    tok, reference = load_tokenizer(path), AutoTokenizer.from_pretrained(tmp_path, gguf_file=path.name)
    ids = tok.encode_batch(texts)
    assert not tok.identity and ids == reference(texts)["input_ids"] and [tok.decode(i) for i in ids] == texts
    assert tok.encode(" the") == [tokens_of(path).index("Ġthe")]
    with pytest.raises(TokenizerError, match=f"{tmp_path / 'sp.gguf'}: tokenizer type 'llama' is not supported"):
        load_tokenizer(write_gguf_vocab(tmp_path / "sp.gguf", "default", True, kind="llama"))
