"""GPT-2 and GPT-1 tokenizers built from a checkpoint's own BPE files (a local directory or the Hub via hub.hub_file).
GPT-2 runs on tiktoken; GPT-1 is a short pure-Python BPE with a per-word cache. Token ids equal transformers'."""
import json
import unicodedata
from pathlib import Path

import regex
import tiktoken

import hub
from cli import UserError


class TokenizerError(UserError, ValueError):
    """Tokenizer files that cannot be used: the message names the file."""

HUB_NAMES = {"gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", "openai-gpt"}
# (vocab, merges) file names: the Hub's, OpenAI's GPT-2 release, OpenAI's GPT-1 release
FILE_NAMES = [("vocab.json", "merges.txt"), ("encoder.json", "vocab.bpe"),
              ("encoder_bpe_40000.json", "vocab_40000.bpe")]
CONFIG_NAMES = ["tokenizer_config.json", "config.json"]
ENDOFTEXT = "<|endoftext|>"
# GPT-2's pre-tokenization regex, in tiktoken's faster equivalent form (tiktoken_ext/openai_public.py, r50k_pat_str)
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""


def bytes_to_unicode():
    """GPT-2's map from each byte to a printable character: vocab files spell byte-level tokens with these."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return {b: chr(b) for b in printable} | {b: chr(256 + n) for n, b in enumerate(others)}


class Tokenizer:
    """GPT-2 byte-level BPE (also the toy byte-level variant), run by tiktoken from the checkpoint's vocab + merges.
    Text containing "<|endoftext|>" encodes it as the special token, as transformers does. GPT-2 has no pad token:
    pad_token = eot_token, harmless because pad positions are always masked by attention_mask."""

    def __init__(self, name, vocab, merges, vocab_file):
        to_latin1 = {ord(c): b for b, c in bytes_to_unicode().items()}  # then .encode("latin-1") gives the bytes
        special = {ENDOFTEXT: vocab[ENDOFTEXT]} if ENDOFTEXT in vocab else {}
        plain = [t for t in vocab if t not in special]
        bad = set("".join(plain)) - {chr(c) for c in to_latin1}
        if bad:
            raise TokenizerError(f"{vocab_file}: characters {sorted(bad)[:5]} are not in GPT-2's byte alphabet "
                             "(not a GPT-2 vocab?)")
        ranks = {t.translate(to_latin1).encode("latin-1"): vocab[t] for t in plain}
        # tiktoken merges the pair whose merged token has the lowest id, transformers the pair listed first in merges:
        # the same when every non-byte token is exactly one merge and ids grow in merge order (as in OpenAI's files)
        merged_ids = [vocab.get(a + b, -1) for a, b in merges]
        n_bytes = sum(len(t) == 1 for t in ranks)
        in_order = -1 not in merged_ids and merged_ids == sorted(set(merged_ids))
        if n_bytes != 256 or len(ranks) != 256 + len(merges) or not in_order:
            raise TokenizerError(f"{vocab_file}: vocab does not match its merges (needs the 256 byte tokens plus one token "
                             f"per merge, ids in merge order); found {n_bytes} byte tokens, {len(ranks)} tokens, "
                             f"{len(merges)} merges")
        self.enc = tiktoken.Encoding(name, pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens=special)
        self.name, self.vocab_size = name, len(vocab)
        self.eot_token = special.get(ENDOFTEXT)
        self.pad_token = self.eot_token if self.eot_token is not None else 0

    def encode(self, text):
        return self.enc.encode(text, allowed_special="all")

    def encode_batch(self, texts):
        return self.enc.encode_batch(list(texts), allowed_special="all")

    def decode(self, ids):
        return self.enc.decode(list(ids))


# BERT's cleaning and splitting, as transformers' OpenAIGPTTokenizer runs it (tokenizers' BertNormalizer(lowercase=True)
# + BertPreTokenizer): drop NUL, U+FFFD and other-category characters except \t \n \r; spaces around CJK ideographs;
# NFD minus non-spacing marks (accents); lower-case; split on whitespace; isolate punctuation (ASCII punctuation,
# which includes $+<=>^`|~, plus every Unicode P* character). BERT's whitespace -> space step only matters as a split.
# Unassigned (Cn) code points are kept and CJK ranges are tokenizers' own (its last one starts at U+2B920, BERT's at
# U+2B820). tokenizers' Unicode tables are older than Python's, so ~700 rare code points assigned since (new marks,
# scripts, punctuation) can still come out differently; real text (tests/test_tokenizer.py) matches exactly.
_CONTROL = regex.compile(r"[\x00\ufffd]|(?![\t\n\r])[\p{Cc}\p{Cf}\p{Co}\p{Cs}]")
_CJK = regex.compile("([\u4e00-\u9fff\u3400-\u4dbf\uf900-\ufaff\U00020000-\U0002a6df\U0002a700-\U0002b73f"
                     "\U0002b740-\U0002b81f\U0002b920-\U0002ceaf\U0002f800-\U0002fa1f])")
_ACCENT = regex.compile(r"\p{Mn}")
_WORDS = regex.compile(r"[!-/:-@\[-`{-~\p{P}]|[^!-/:-@\[-`{-~\p{P}\s]+")


class GPT1Tokenizer(Tokenizer):
    """GPT-1 (openai-gpt) BPE: lower-cased, `</w>` marks a word's last symbol, unknown characters become <unk> (id 0).
    GPT-1 has no end-of-text token, so eot_token = None (generation runs to max_new_tokens; "\\n</w>" is a line break,
    not an end). pad_token = <unk> = 0: any id works since pad positions are always masked by attention_mask."""

    def __init__(self, name, vocab, merges, vocab_file):
        if "<unk>" not in vocab:
            raise TokenizerError(f"{vocab_file}: GPT-1 vocab has no '<unk>' token")
        missing = next((a + b for a, b in merges if a + b not in vocab), None)
        if missing is not None:
            raise TokenizerError(f"{vocab_file}: vocab does not match its merges (no token {missing!r})")
        self.vocab, self.ranks = vocab, {pair: i for i, pair in enumerate(merges)}
        self.token_of = {i: t for t, i in vocab.items()}
        self.cache = {}  # word -> ids: real text repeats words, so BPE runs once per distinct word
        self.name, self.vocab_size = name, len(vocab)
        self.unk_token = self.pad_token = vocab["<unk>"]
        self.eot_token = None

    def encode(self, text):
        # "<unk>" typed in the text is the special token, as in transformers; everything else goes through BPE
        pieces = [self._encode_plain(piece) for piece in text.split("<unk>")]
        return [i for n, piece in enumerate(pieces) for i in ([self.unk_token] if n else []) + piece]

    def encode_batch(self, texts):
        return [self.encode(text) for text in texts]

    def decode(self, ids):
        text = "".join(self.token_of[i] for i in ids).replace("</w>", " ")
        return text[:-1] if text.endswith(" ") else text

    def _encode_plain(self, text):
        text = _CJK.sub(r" \1 ", _CONTROL.sub("", text))
        text = _ACCENT.sub("", unicodedata.normalize("NFD", text))
        # lower-case character by character like the Rust normalizer: str.lower() alone would turn a final Σ into ς
        text = "".join(c.lower() for c in text) if "Σ" in text else text.lower()
        cache = self.cache
        return [i for word in _WORDS.findall(text) for i in (cache[word] if word in cache else self._bpe(word))]

    def _bpe(self, word):
        # merge the best-ranked adjacent pair until none is in merges (leftmost first on ties, as in transformers)
        parts = [*word[:-1], word[-1] + "</w>"]
        while len(parts) > 1:
            rank, i = min((self.ranks.get(pair, len(self.ranks)), i) for i, pair in enumerate(zip(parts, parts[1:])))
            if rank == len(self.ranks):
                break
            parts[i:i + 2] = [parts[i] + parts[i + 1]]
        self.cache[word] = [self.vocab.get(p, self.unk_token) for p in parts]
        return self.cache[word]


def load_tokenizer(name_or_path, revision=None):
    """GPT-2 or GPT-1 tokenizer from a local directory (either file-name convention) or a Hub model name/id;
    "bytes" is the toy byte-level tokenizer (no files)."""
    if str(name_or_path) == "bytes":
        return byte_tokenizer()
    vocab_file, merges_file, config_files = _tokenizer_files(str(name_or_path), revision)
    try:
        vocab = json.loads(vocab_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise TokenizerError(f"{vocab_file}: not a JSON vocab ({e})") from None
    if not isinstance(vocab, dict) or not all(isinstance(i, int) for i in vocab.values()):
        raise TokenizerError(f"{vocab_file}: expected a JSON object mapping token -> integer id")
    try:
        lines = merges_file.read_text(encoding="utf-8").split("\n")
    except UnicodeDecodeError as e:
        raise TokenizerError(f"{merges_file}: not UTF-8 text ({e})") from None
    header = int(lines[0].startswith("#version"))
    merges = [tuple(line.split(" ")) for line in lines[header:] if line]
    if any(len(merge) != 2 for merge in merges):
        n, line = next((n, line) for n, line in enumerate(lines[header:], 1 + header)
                       if line and len(line.split(" ")) != 2)
        raise TokenizerError(f"{merges_file} line {n}: expected two tokens separated by one space, got {line!r}")
    gpt1 = _model_type(config_files, vocab) == "openai-gpt"
    return (GPT1Tokenizer if gpt1 else Tokenizer)(str(name_or_path), vocab, merges, vocab_file)


def _tokenizer_files(name_or_path, revision):
    local = Path(name_or_path).expanduser()
    if local.is_dir():
        for vocab_name, merges_name in FILE_NAMES:
            if (local / vocab_name).is_file() and (local / merges_name).is_file():
                configs = [local / c for c in CONFIG_NAMES if (local / c).is_file()]
                return local / vocab_name, local / merges_name, configs
        expected = " or ".join(f"{v} + {m}" for v, m in FILE_NAMES)
        raise TokenizerError(f"{local} holds no tokenizer: expected {expected}")
    if name_or_path.startswith((".", "/", "~")) or local.exists():
        raise TokenizerError(f"{name_or_path} is not a tokenizer directory")
    repo_id = f"openai-community/{name_or_path}" if name_or_path in HUB_NAMES else name_or_path
    instead = "a local directory holding vocab.json + merges.txt"
    vocab_file = hub.hub_file(repo_id, "vocab.json", revision=revision, instead=instead)
    merges_file = hub.hub_file(repo_id, "merges.txt", revision=revision, instead=instead)
    config_files = []
    for config_name in CONFIG_NAMES:
        try:
            config_files.append(hub.hub_file(repo_id, config_name, revision=revision, instead=instead))
        except (FileNotFoundError, hub.OfflineError):
            pass  # optional: without a config the vocab itself tells GPT-1 from GPT-2
    return vocab_file, merges_file, config_files


def _model_type(config_files, vocab):
    for path in config_files:
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise TokenizerError(f"{path}: not a JSON config ({e})") from None
        kind = f"{config.get('model_type', '')} {config.get('tokenizer_class', '')}".lower()
        if "openai-gpt" in kind or "openaigpt" in kind:
            return "openai-gpt"
        if "gpt2" in kind:
            return "gpt2"
    # no config says: GPT-1's vocab marks word ends with </w>, GPT-2's byte-level vocab never does
    return "openai-gpt" if any(t.endswith("</w>") for t in vocab) else "gpt2"


def byte_vocab():
    return {c: b for b, c in bytes_to_unicode().items()} | {ENDOFTEXT: 256}


def byte_tokenizer():
    """The toy byte-level tokenizer: 256 byte tokens (id = byte value) + <|endoftext|> = 256, no merges."""
    return Tokenizer("bytes", byte_vocab(), [], "<byte tokenizer>")


def save_byte_tokenizer(directory):
    """Write the toy byte-level tokenizer (256 byte tokens, id = byte value, + <|endoftext|> = 256, no merges) in the
    Hub layout; load_tokenizer reads it through the GPT-2 code path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vocab = byte_vocab()
    (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (directory / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    return directory
