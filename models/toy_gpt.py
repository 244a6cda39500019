"""
The toy GPTs of the offline demo: four small GPTs (model.py) pretrained on data/toy.py's synthetic world.

    python -c "from models import toy_gpt; print(toy_gpt.pretrained_model('toy-m'))"   # any size, as a model directory

Every size reads the world's corpus (every name's attribute: "hai is hot.") for the same 60 epochs through the same code as GPT-2 (model.py, random init,
a byte-level tokenizer); the loss is on the attribute. What each size learns of the hidden table (knowledge(),
"exceptions"; one thread, torch 2.13 and 2.14 alike):

    toy-xs   1 layer  x  8, 1 head     3,032 parameters   16% of the exceptions (first-letter rule, mostly)
    toy-s    1 layer  x 16, 1 head     7,600              23%
    toy-m    2 layers x 16, 2 heads   10,880              82%
    toy-l    2 layers x 32, 2 heads   34,048              99%

One layer can only mix the two letters of a root in one attention average, so the 1-layer sizes keep to the
first-letter rule and a few roots; two layers read the root at its second letter and carry it to the end.

Why the recipe is what it is. The earlier one (12 epochs, loss on all of "hot.") stopped while the strong model was
in the middle of learning the table, where its knowledge rose by ~10 points an epoch, so anything that moved the
trajectory (1 vs 2 threads: a different order of floating-point sums) moved the result: 74% vs 94% of the
exceptions for the same seed. Now every size trains until its curve is flat (toy-l reaches ~99% by epoch ~50 of 60,
toy-m and the 1-layer sizes sit on their plateau for the last ~15 epochs) and the lr decays to 0 over that plateau,
so 1, 2 and 4 threads and torch 2.13 / 2.14 give the same figures within 0.8 points (the record is in each model's
pretrain.json). The plateaus of toy-s and toy-m are local optima: other *seeds* land elsewhere (toy-m: 74-99%), so
the seed is part of the recipe; what thread count and torch build do not move is what another machine gets.

Why a root table and not one memorised fact per name: small GPTs on a 2-core CPU need far more passes to memorise
random per-name facts than a demo allows (2 layers x 64, 3000 names, 60 epochs: 9% of the exceptions), while a
table shared by ~12 names a root is learnt in ~45 epochs.

The models are cached per machine in <cache_dir or $W2S_CACHE or ~/.cache/w2s>/toy/<size>-<key>, the key a hash of
everything that changes the weights (cache_key). Each directory also holds a zero classification head, so
fine-tuning starts from Burns et al.'s zero head (add_zero_classification_head).
"""
import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from data.toy import DEMO, FACT, LABEL_NAMES, PROMPT, surface_label, world
from model import GPT, GPTConfig
from models.tokenizer import load_tokenizer, save_byte_tokenizer

# the toy GPTs, name -> (n_layer, n_embd, n_head), in order of parameter count (and of knowledge: see above)
SIZES = {"toy-xs": (1, 8, 1), "toy-s": (1, 16, 1), "toy-m": (2, 16, 2), "toy-l": (2, 32, 2)}
RECIPE = 2                 # bump when a change to the pretraining code changes the weights: it is part of the cache key
# Pretraining runs on this many CPU threads whatever the machine has: the order of floating-point sums follows the
# thread count, and although each size's knowledge is the same within 0.8 points on 1, 2 or 4 threads, the weights
# are not, and the naive student's PGR moved with them (0.16 pretrained on 1 thread, 0.48 on 2). Pinned, every
# machine gets the same toy models, so the demo's table is the same on every machine; these tiny models gain
# nothing from a second thread.
PRETRAIN_THREADS = 1

MODEL_FILES = ("config.json", "model.safetensors", "vocab.json", "merges.txt", "pretrain.json")


@dataclass
class PretrainConfig:
    epochs: int = 60          # passes over the corpus, the same for every size: each ends on its plateau
    batch_size: int = 32
    lr: float = 1e-3          # peak; linear warmup, then linear decay to 0
    warmup_frac: float = 0.05
    weight_decay: float = 0.0  # on matrices only (nanoGPT); 0.1: toy-s 17% instead of 23%, and weaker W2S
    seed: int = 0             # init and batch order; the world has its own


# ----------------------------------------------------------------------------------------------------------------
# pretraining, cached once per machine and torch build

def cache_root(cache_dir=None):
    """<cache_dir or $W2S_CACHE or ~/.cache/w2s>/toy: one model directory per cache key, shared by every run."""
    return Path(cache_dir or os.environ.get("W2S_CACHE") or Path.home() / ".cache" / "w2s").expanduser() / "toy"


def pretrained_model(size, cache_dir=None, device="cpu", quiet=False, config=None):
    """The model directory (config.json, model.safetensors, byte tokenizer files, pretrain.json with the pretraining
    record and knowledge figures) of toy GPT `size` (a key of SIZES), pretrained on the world's corpus the first time
    it is asked for on this machine and found in the cache afterwards. Written into a temporary directory and renamed
    into place, so a killed run never leaves a half-written model; processes asking for the same model at once wait
    for one another (a file lock), and if two still both train, the second rename finds the first's directory and
    keeps it."""
    if size not in SIZES:
        raise ValueError(f"unknown toy model {size!r}; choose from {list(SIZES)}")
    config = config or PretrainConfig()
    device = _device(device)
    key, what = cache_key(size, config, device)
    root = cache_root(cache_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / key
    remove_orphans(root)
    if _complete(final, key):
        return str(final)
    with _locked(root / f"{key}.lock", lambda: quiet or print(f"[toy] waiting for another process pretraining {size}",
                                                                  file=sys.stderr, flush=True)):
        if _complete(final, key):  # another process finished it while this one waited
            return str(final)
        for tmp in root.glob(f".tmp-{key}-*"):  # we hold the lock: whoever wrote these was killed
            shutil.rmtree(tmp, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{key}-", dir=root))
        try:
            (tmp / "owner.json").write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
            record = _pretrain_into(tmp, size, config, device, quiet)
            record.update(key=key, cache_key=what)
            (tmp / "pretrain.json").write_text(json.dumps(record, indent=1))  # last: marks the directory complete
            (tmp / "owner.json").unlink()
            publish(tmp, final, key)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return str(final)


def pretrained_models(directory=None, device="auto", config=None, cache_dir=None, quiet=False):
    """(weak_dir, strong_dir): the demo pair DEMO, from the shared cache (pretrained_model). `directory` is ignored;
    it was the per-run cache of earlier versions (w2s.py passed OUT/pretrained)."""
    return tuple(pretrained_model(size, cache_dir=cache_dir, device=device, quiet=quiet, config=config) for size in DEMO)


def resolve(model, device="cpu", cache_dir=None, quiet=False):
    """A toy size name ("toy-s") -> its pretrained directory, anything else (a model directory) unchanged: lets
    --weak / --strong name any toy size."""
    return pretrained_model(model, cache_dir=cache_dir, device=device, quiet=quiet) if model in SIZES else model


def cache_key(size, config, device="cpu"):
    """(key, what): key = "<size>-<12 hex digits>", a hash of everything that changes the pretrained weights: the
    recipe version, the size's shape, the pretraining config, the world (its facts, not only its seed), the texts,
    the torch build, the device type and, on CPU, the thread count (the order of floating-point sums)."""
    device = _device(device)
    what = {"recipe": RECIPE, "size": size, "shape": list(SIZES[size]), "pretrain": dataclasses.asdict(config),
            "world": world_digest(), "fact": FACT, "prompt": PROMPT, "torch": torch.__version__, "device": device.type}
    if device.type == "cpu":
        what["threads"] = PRETRAIN_THREADS
    elif device.type == "cuda":
        what["gpu"] = torch.cuda.get_device_name(device)
    digest = hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:12]
    return f"{size}-{digest}", what


def world_digest():
    return hashlib.sha256("".join(f"{n}\t{y}\n" for n, y in world()).encode()).hexdigest()


def publish(tmp, final, key):
    """Rename the finished temporary directory into place. If another process got there first (its rename won, ours
    fails with "Directory not empty"), keep its complete directory; the caller removes ours."""
    try:
        os.rename(tmp, final)
    except OSError:
        if _complete(final, key):
            return
        shutil.rmtree(final, ignore_errors=True)  # not a model directory of ours (a half copy?): replace it
        os.rename(tmp, final)


def remove_orphans(root, max_age=24 * 3600):
    """Remove the temporary directories of pretraining runs that were killed: their process no longer exists on this
    host, or (another host, or no owner record) they are older than max_age seconds."""
    host = socket.gethostname()
    for tmp in root.glob(".tmp-*"):
        try:
            owner = json.loads((tmp / "owner.json").read_text())
        except (OSError, ValueError):
            owner = None
        try:
            old = time.time() - tmp.stat().st_mtime > max_age
        except OSError:
            continue  # already gone
        if old or (owner and owner.get("host") == host and not _alive(owner.get("pid"))):
            shutil.rmtree(tmp, ignore_errors=True)


def _alive(pid):
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, TypeError, ValueError):
        return True  # someone else's process, or no usable pid: leave its directory alone
    return True


def _complete(directory, key):
    try:
        record = json.loads((directory / "pretrain.json").read_text())
    except (OSError, ValueError):
        return False
    return record.get("key") == key and all((directory / f).is_file() for f in MODEL_FILES)


@contextlib.contextmanager
def _locked(path, on_wait):
    """An exclusive lock on `path` (released by the OS if the process dies). Without fcntl (Windows) no lock: two
    processes may then both pretrain, and publish() keeps one result."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            on_wait()
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _device(device):
    device = str(device)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device)


def _pretrain_into(directory, size, config, device, quiet):
    """Build, pretrain and save one toy GPT into `directory`; returns its record."""
    t0 = time.time()
    tok = load_tokenizer(save_byte_tokenizer(directory))
    facts = world()
    n_layer, n_embd, n_head = SIZES[size]
    idx, targets = corpus(tok, facts)
    torch.manual_seed(config.seed)
    model = GPT(GPTConfig(block_size=idx.shape[1], vocab_size=tok.vocab_size, n_layer=n_layer, n_head=n_head,
                          n_embd=n_embd)).to(device)
    threads = torch.get_num_threads()
    torch.set_num_threads(PRETRAIN_THREADS)
    try:
        final_loss = pretrain(model, idx, targets, config, device, desc=None if quiet else f"[toy] pretraining {size}")
    finally:
        torch.set_num_threads(threads)
    model.cpu().save_pretrained(directory)
    add_zero_classification_head(directory / "model.safetensors", n_embd, len(LABEL_NAMES))
    record = {"size": size, "n_layer": n_layer, "n_embd": n_embd, "n_head": n_head, "n_params": model.num_params(),
              "final_loss": final_loss, "seconds": round(time.time() - t0, 1), "device": device.type,
              "threads": PRETRAIN_THREADS, "torch": torch.__version__,
              "knowledge": knowledge(model, tok, facts)}
    if not quiet:
        print(f"[toy] pretrained {size} ({n_layer} layers x {n_embd}, {record['n_params']:,} parameters) in "
              f"{record['seconds']} s: knows {record['knowledge']['accuracy']:.1%} of the world, "
              f"{record['knowledge']['exceptions']:.1%} of the exceptions", file=sys.stderr, flush=True)
    return record


def add_zero_classification_head(weights_file, n_embd, n_classes):
    """Store a classification head of zeros (score.weight) beside the LM weights. GPT.from_pretrained(n_classes=2)
    takes a stored head whose shape fits, so every fine-tuning of a toy model starts from a zero head, as Burns et
    al.'s TransformerWithHead does ("initializes the linear head to zeros"), instead of model.py's random one: with
    a random head these small models' students and weak models land wherever the head's first steps take them (on
    val, seed 0, lr 5e-5: naive student 0.48, logconf 0.06, soft vote 0.92, weak 0.60), with zeros every run starts
    from the same unbiased classifier. Loading the directory as an LM (n_classes=0) ignores it."""
    state = load_file(weights_file)
    state["score.weight"] = torch.zeros(n_classes, n_embd)
    save_file(state, weights_file, metadata={"format": "pt"})


def corpus(tok, facts):
    """(idx, targets) of the pretraining corpus, one right-padded row per fact "<name> is <attribute>.", cut after
    the attribute's first byte, which is the row's one target: the bytes after it are fixed by it ("h" -> "ot."), and
    the name's letters are random, so a loss on them (ln 16 a letter) would only drown the facts'."""
    rows, where = [], []
    for name, label in facts:
        n = len(tok.encode(PROMPT.format(name=name)))
        rows.append(tok.encode(FACT.format(name=name, label=LABEL_NAMES[label]))[:n + 1])
        where.append(n - 1)  # the prompt's last position predicts the attribute
    idx = torch.full((len(rows), max(map(len, rows))), tok.pad_token, dtype=torch.long)
    targets = torch.full_like(idx, -100)
    for i, (row, n) in enumerate(zip(rows, where)):
        idx[i, :len(row)] = torch.tensor(row)
        targets[i, n] = row[n + 1]
    return idx, targets


def pretrain(model, idx, targets, config, device, desc=None):
    """A plain causal LM loop over the corpus (rows start at position 0, as the task's texts do): AdamW, linear
    warmup then linear decay to 0, seeded batch order, every epoch a full pass. The logits are computed only where
    there is a target. When `desc` is given, a tqdm bar (epoch, loss, ETA) on a terminal, else a line every 10 epochs.
    Returns the mean loss of the last epoch."""
    idx, targets = idx.to(device), targets.to(device)
    steps_per_epoch = -(-len(idx) // config.batch_size)
    total = steps_per_epoch * config.epochs
    warmup = max(1, int(config.warmup_frac * total))
    params = list(model.parameters())
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": config.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, 0.99), fused=True)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min((s + 1) / warmup, (total - s) / max(1, total - warmup)))
    order = torch.Generator().manual_seed(config.seed)
    bar = tqdm(total=total, desc=desc, unit="step", leave=False, dynamic_ncols=True,
               disable=desc is None or not sys.stderr.isatty())
    model.train()
    for epoch in range(config.epochs):
        losses = []
        for b in torch.randperm(len(idx), generator=order).to(device).split(config.batch_size):
            t = targets[b]
            where = t != -100
            loss = F.cross_entropy(model.lm_head(model.hidden(idx[b])[where]).float(), t[where])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            losses.append(loss.detach())
            if not bar.disable and len(losses) % 10 == 0:
                recent = torch.stack(losses[-10:]).mean().item()
                bar.set_postfix_str(f"epoch {epoch + 1}/{config.epochs} loss {recent:.4f}", refresh=False)
            bar.update()
        epoch_loss = torch.stack(losses).mean().item()
        if desc is not None and bar.disable and (epoch + 1) % 10 == 0:  # in a log: a plain line every 10 epochs
            print(f"{desc}: epoch {epoch + 1}/{config.epochs} loss {epoch_loss:.4f}", file=sys.stderr, flush=True)
    bar.close()
    model.eval()
    return round(epoch_loss, 4)


@torch.no_grad()
def knowledge(model, tok, facts):
    """How much of the world the LM knows: share of names whose more likely continuation after "<name> is " is the
    right attribute, overall and on the exceptions to the first-letter rule (the root table)."""
    device = next(model.parameters()).device
    prompts = [tok.encode(PROMPT.format(name=n)) for n, _ in facts]
    T = max(map(len, prompts))
    idx = torch.full((len(prompts), T), tok.pad_token, dtype=torch.long)
    mask = torch.zeros_like(idx)
    for i, ids in enumerate(prompts):  # left padding: the next-token logits sit at the last position of every row
        idx[i, T - len(ids):] = torch.tensor(ids)
        mask[i, T - len(ids):] = 1
    logits, _ = model(idx.to(device), attention_mask=mask.to(device))
    first = [tok.encode(label)[0] for label in LABEL_NAMES]
    pred = logits[:, -1, first].argmax(-1).cpu().numpy()
    labels = np.array([y for _, y in facts])
    surface = np.array([surface_label(n) for n, _ in facts])
    right, exception = pred == labels, labels != surface
    return {"accuracy": round(float(right.mean()), 4), "exceptions": round(float(right[exception].mean()), 4),
            "follows_surface_rule": round(float((pred == surface).mean()), 4)}
