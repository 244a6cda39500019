"""GPT-2 and GPT-1 tokenizers built from a checkpoint's own BPE files (a local directory or the Hub via hub.hub_file),
and the Llama family's byte-level BPE (SmolLM2, Llama 3, Qwen2.5, Qwen3) from a tokenizer.json or a GGUF file's
metadata. GPT-2 and the Llama family run on tiktoken; GPT-1 is a short pure-Python BPE with a per-word cache. Token ids
equal transformers'; neither `tokenizers` nor `transformers` is imported."""
import json
import unicodedata
from pathlib import Path

import regex
import tiktoken

from core import hub
from core.cli import UserError


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


# Pre-tokenizer patterns of the Llama-family byte-level BPEs, as transformers builds them (tokenizers' Split regex
# before ByteLevel(use_regex=False)); tiktoken runs them unchanged. GGUF files name theirs in tokenizer.ggml.pre.
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                  r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# tokenizers' Digits(individual_digits=True) then GPT-2's ByteLevel regex (the Hub SmolLM2 tokenizer.json) as one
# regex: each digit alone, and GPT-2's rules inside the digit-free stretches, whose ends (before a digit) count as
# the end of the text for the whitespace rules
DIGITS_GPT2_PATTERN = r"""\p{N}|'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?[^\s\p{L}\p{N}]++|\s+(?![^\s\p{N}])|\s"""
# tokenizer.ggml.pre -> pattern; any other value (SmolLM2's "smollm", "gpt2", ...) gets GPT-2's, as in transformers
GGUF_PRE_PATTERNS = {**dict.fromkeys(["llama3", "llama-v3", "llama-bpe", "smaug-bpe", "falcon3", "dbrx"],
                                     LLAMA3_PATTERN),
                     **dict.fromkeys(["qwen2", "deepseek-r1-qwen"], QWEN2_PATTERN)}


class BPETokenizer:
    """Byte-level BPE of the Llama family (SmolLM2, Llama 3, Qwen2.5, Qwen3) run by tiktoken, from a tokenizer.json
    or a GGUF file's vocabulary and merges; ids equal transformers'. encode() adds BOS/EOS as transformers' encode
    does by default (add_special_tokens=True): only when the file asks for them. pad_token: the file's pad, else eos.

    tiktoken merges the adjacent pair whose merged token has the lowest rank; transformers the pair listed first in
    merges. Ranks are the merge order (rank = id when ids follow the merges, as in SmolLM2), mapped back to ids.
    Bytes the vocabulary lacks (SmolLM2 has 235 of 256) are dropped by transformers, whose neighbours then merge
    across them: texts holding one take a slower path that does exactly that."""

    def __init__(self, name, vocab, merges, special, pattern, source, bos=None, eos=None, pad=None,
                 prefix=(), suffix=(), nfc=False, vocab_size=None):
        from_latin1 = {c: b for b, c in bytes_to_unicode().items()}
        plain = {t: i for t, i in vocab.items() if t not in special}
        bad = next((t for t in plain if any(c not in from_latin1 for c in t)), None)
        if bad is not None:
            raise TokenizerError(f"{source}: token {bad!r} is not spelled in the byte-level alphabet "
                                 "(not a byte-level BPE vocabulary)")
        as_bytes = {t: bytes(from_latin1[c] for c in t) for t in plain}
        ranks, self.identity = self._ranks(plain, as_bytes, merges, source)
        free = max([*ranks.values(), *special.values()]) + 1 if self.identity else len(ranks)
        self.rank_of_special = dict(special) if self.identity else {t: free + k for k, t in enumerate(special)}
        free += 0 if self.identity else len(special)
        self.missing = bytes(b for b in range(256) if bytes([b]) not in ranks)
        ranks |= {bytes([b]): free + k for k, b in enumerate(self.missing)}  # tiktoken needs all 256; never output
        self.enc = tiktoken.Encoding(name, pat_str=pattern, mergeable_ranks=ranks,
                                     special_tokens=self.rank_of_special)
        self.pattern = regex.compile(pattern)
        self.special_re = regex.compile("|".join(regex.escape(t) for t in sorted(special, key=len, reverse=True)))
        if not self.identity:
            self.id_of = [-1] * (free + len(self.missing))
            for t, i in plain.items():
                self.id_of[ranks[as_bytes[t]]] = i
            for t, r in self.rank_of_special.items():
                self.id_of[r] = special[t]
            self.rank_of_id = {i: r for r, i in enumerate(self.id_of) if i >= 0}
        self.name, self.source, self.nfc = name, str(source), nfc
        self.vocab_size = vocab_size or max([*vocab.values(), *special.values()]) + 1
        self.bos_token, self.eot_token = bos, eos
        self.pad_token = pad if pad is not None else eos if eos is not None else 0
        self.prefix, self.suffix = list(prefix), list(suffix)

    @staticmethod
    def _ranks(plain, as_bytes, merges, source):
        """(bytes -> rank, ranks are ids): single bytes first, then each merged token at its merge's position;
        the ids themselves when they already are in that order."""
        merged = [a + b for a, b in merges]
        unknown = next((m for m in merged if m not in plain), None)
        if unknown is not None:
            raise TokenizerError(f"{source}: merge result {unknown!r} is not in the vocabulary")
        singles = [t for t in plain if len(as_bytes[t]) == 1]
        if len(set(merged)) != len(merged) or len(singles) + len(merged) != len(plain):
            raise TokenizerError(f"{source}: vocabulary does not match its merges (needs each multi-byte token made "
                                 f"by exactly one merge); found {len(plain)} tokens, {len(singles)} single bytes, "
                                 f"{len(merges)} merges, {len(set(merged))} distinct results")
        ids = [plain[m] for m in merged]
        if ids == sorted(ids) and all(plain[t] < (ids[0] if ids else 1 << 62) for t in singles):
            return {as_bytes[t]: plain[t] for t in plain}, True
        order = sorted(singles, key=plain.get) + merged
        return {as_bytes[t]: r for r, t in enumerate(order)}, False

    def _ids(self, ranks):
        return list(ranks) if self.identity else [self.id_of[r] for r in ranks]

    def _encode_dropping_missing(self, text):
        """transformers' behaviour for text holding bytes the vocabulary lacks: split as usual, drop those bytes
        from each piece, then merge what is left (so the bytes either side can join)."""
        ranks, start = [], 0
        for m in [*self.special_re.finditer(text), None] if self.rank_of_special else [None]:
            for piece in self.pattern.findall(text[start:m.start() if m else len(text)]):
                piece = piece.encode("utf-8").translate(None, self.missing)
                if piece:
                    ranks += self.enc._core_bpe.encode_single_piece(piece)  # BPE of raw bytes, no regex
            if m:
                ranks.append(self.rank_of_special[m.group()])
                start = m.end()
        return ranks

    def _has_missing(self, text):
        data = text.encode("utf-8", errors="surrogatepass")
        return len(data.translate(None, self.missing)) != len(data)

    def _encode_ranks(self, text):
        if self.missing and self._has_missing(text):
            return self._encode_dropping_missing(text)
        return self.enc.encode(text, allowed_special="all")

    def encode(self, text, add_special_tokens=True):
        text = unicodedata.normalize("NFC", text) if self.nfc else text
        ids = self._ids(self._encode_ranks(text))
        return self.prefix + ids + self.suffix if add_special_tokens else ids

    def encode_batch(self, texts, add_special_tokens=True):
        texts = [unicodedata.normalize("NFC", t) if self.nfc else t for t in texts]
        slow = {n for n, t in enumerate(texts) if self.missing and self._has_missing(t)}
        fast = iter(self.enc.encode_batch([t for n, t in enumerate(texts) if n not in slow], allowed_special="all"))
        out = [self._ids(self._encode_dropping_missing(t) if n in slow else next(fast)) for n, t in enumerate(texts)]
        return [self.prefix + ids + self.suffix for ids in out] if add_special_tokens else out

    def decode(self, ids):
        return self.enc.decode(list(ids) if self.identity else [self.rank_of_id[i] for i in ids])


def gguf_tokenizer(path):
    """BPETokenizer from a GGUF file's metadata (tokenizer.ggml.*): tokens, merges, token types (3 = control and
    4 = user-defined are matched whole, as transformers adds them), bos/eos/pad ids, add_bos/eos_token, pre. Built
    once per process for an unchanged file (gguf_io.cached)."""
    from models import gguf_io
    return gguf_io.cached(path, "tokenizer", lambda: _gguf_tokenizer(path))


def _gguf_tokenizer(path):
    from models import gguf_io
    reader = gguf_io.cached_reader(path)
    kind = gguf_io.field(reader, "tokenizer.ggml.model")
    if kind != "gpt2":
        raise TokenizerError(f"{path}: tokenizer type {kind!r} is not supported (only byte-level BPE, 'gpt2')")
    tokens = gguf_io.field(reader, "tokenizer.ggml.tokens")
    merges = [tuple(m.split(" ")) for m in gguf_io.field(reader, "tokenizer.ggml.merges") or []]
    if not tokens or any(len(m) != 2 for m in merges):
        raise TokenizerError(f"{path}: tokenizer.ggml.tokens/merges missing or malformed")
    types = gguf_io.field(reader, "tokenizer.ggml.token_type") or [1] * len(tokens)
    alphabet = set(bytes_to_unicode().values())
    # a control token spelled outside the byte alphabet is a llama.cpp mislabel transformers skips; so do we
    special = {t: i for i, (t, k) in enumerate(zip(tokens, types)) if k == 4 or (k == 3 and set(t) <= alphabet)}
    vocab = {t: i for i, t in enumerate(tokens) if t not in special and types[i] != 3}
    ids = {k: gguf_io.field(reader, f"tokenizer.ggml.{k}_token_id") for k in ("bos", "eos", "padding")}
    pattern = GGUF_PRE_PATTERNS.get(gguf_io.field(reader, "tokenizer.ggml.pre"), GPT2_PATTERN)
    prefix = [ids["bos"]] if gguf_io.field(reader, "tokenizer.ggml.add_bos_token") and ids["bos"] is not None else []
    suffix = [ids["eos"]] if gguf_io.field(reader, "tokenizer.ggml.add_eos_token") and ids["eos"] is not None else []
    return BPETokenizer(str(path), vocab, merges, special, pattern, path, bos=ids["bos"], eos=ids["eos"],
                        pad=ids["padding"], prefix=prefix, suffix=suffix, vocab_size=len(tokens))


def _json_pattern(pre, source):
    """The tiktoken pattern of a tokenizer.json pre_tokenizer, for the byte-level forms Llama-family models use."""
    parts = pre.get("pretokenizers", []) if pre and pre.get("type") == "Sequence" else [pre] if pre else []
    kinds = [p.get("type") for p in parts]
    byte_level = parts[-1] if kinds and kinds[-1] == "ByteLevel" else {}
    if byte_level.get("add_prefix_space"):
        raise TokenizerError(f"{source}: ByteLevel with add_prefix_space is not supported")
    if kinds == ["ByteLevel"] and byte_level.get("use_regex", True):
        return GPT2_PATTERN
    if (kinds == ["Digits", "ByteLevel"] and parts[0].get("individual_digits")
            and byte_level.get("use_regex", True)):
        return DIGITS_GPT2_PATTERN
    if (kinds == ["Split", "ByteLevel"] and "Regex" in parts[0].get("pattern", {}) and not parts[0].get("invert")
            and parts[0].get("behavior") == "Isolated" and not byte_level.get("use_regex", True)):
        return parts[0]["pattern"]["Regex"]
    raise TokenizerError(f"{source}: pre_tokenizer {json.dumps(pre)[:200]} is not supported (byte-level BPE "
                         "pre-tokenizers: ByteLevel, Digits + ByteLevel, or Split(regex) + ByteLevel)")


def _template_ids(post, source):
    """(prefix, suffix) ids a tokenizer.json post_processor puts around a single sequence."""
    processors = post.get("processors", []) if post and post.get("type") == "Sequence" else [post] if post else []
    prefix, suffix = [], []
    for p in processors:
        if p.get("type") == "TemplateProcessing":
            single = p.get("single", [])
            at = next((n for n, part in enumerate(single) if "Sequence" in part), len(single))
            ids = [[i for part in side for i in p["special_tokens"][part["SpecialToken"]["id"]]["ids"]]
                   for side in (single[:at], single[at + 1:])]
            prefix, suffix = prefix + ids[0], ids[1] + suffix
        elif p.get("type") != "ByteLevel":
            raise TokenizerError(f"{source}: post_processor {p.get('type')!r} is not supported")
    return prefix, suffix


def json_tokenizer(directory):
    """BPETokenizer from a Hub-layout directory's tokenizer.json (+ tokenizer_config.json / config.json for bos,
    eos and pad)."""
    source = Path(directory) / "tokenizer.json"
    try:
        spec = json.loads(source.read_text(encoding="utf-8"))
        model = spec["model"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
        raise TokenizerError(f"{source}: not a tokenizer.json ({e})") from None
    if model.get("type") != "BPE" or model.get("byte_fallback") or (spec.get("decoder") or {}).get("type") != "ByteLevel":
        raise TokenizerError(f"{source}: only byte-level BPE tokenizers are supported (model {model.get('type')}, "
                             f"decoder {(spec.get('decoder') or {}).get('type')})")
    normalizer = (spec.get("normalizer") or {}).get("type")
    if normalizer not in (None, "NFC"):
        raise TokenizerError(f"{source}: normalizer {normalizer!r} is not supported")
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model.get("merges", [])]
    special = {t["content"]: t["id"] for t in spec.get("added_tokens", [])}
    vocab = {t: i for t, i in model["vocab"].items() if t not in special}
    prefix, suffix = _template_ids(spec.get("post_processor"), source)
    names = _special_names(Path(directory))
    ids = {k: special.get(v, model["vocab"].get(v)) if isinstance(v, str) else v for k, v in names.items()}
    return BPETokenizer(str(directory), vocab, merges, special, _json_pattern(spec.get("pre_tokenizer"), source),
                        source, bos=ids.get("bos"), eos=ids.get("eos"), pad=ids.get("pad"), prefix=prefix,
                        suffix=suffix, nfc=normalizer == "NFC")


def _special_names(directory):
    """{bos, eos, pad: token text or id} from tokenizer_config.json, else config.json's *_token_id."""
    names = {}
    for config_name in ("tokenizer_config.json", "config.json"):
        path = directory / config_name
        if not path.is_file():
            continue
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise TokenizerError(f"{path}: not a JSON config ({e})") from None
        for key in ("bos", "eos", "pad"):
            value = config.get(f"{key}_token", config.get(f"{key}_token_id"))
            value = value.get("content") if isinstance(value, dict) else value
            value = value[0] if isinstance(value, list) and value else value
            if value is not None and key not in names:
                names[key] = value
    return names


def load_tokenizer(name_or_path, revision=None):
    """GPT-2 or GPT-1 tokenizer from a local directory (either file-name convention) or a Hub model name/id; a
    Llama-family BPETokenizer from a .gguf file or a directory with tokenizer.json (unless its config says GPT-2/GPT-1
    and vocab + merges files are there); "bytes" is the toy byte-level tokenizer (no files)."""
    if str(name_or_path) == "bytes":
        return byte_tokenizer()
    local = Path(str(name_or_path)).expanduser()
    if local.suffix.lower() == ".gguf":
        return gguf_tokenizer(local)
    if (local / "tokenizer.json").is_file() and not _gpt_directory(local):
        return json_tokenizer(local)
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


def _gpt_directory(local):
    """A directory GPT-2/GPT-1 code reads (vocab + merges files, and no config naming another model type)."""
    if not any((local / v).is_file() and (local / m).is_file() for v, m in FILE_NAMES):
        return False
    for name in CONFIG_NAMES:
        try:
            config = json.loads((local / name).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            continue
        if config.get("model_type"):
            return config["model_type"] in ("gpt2", "openai-gpt")
    return True


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
