"""
--train-layers K: train only the top K blocks and the head of a pretrained model whose bottom stays frozen (K = 0:
the head alone, a linear probe), from the bottom's outputs computed once per text and kept on disk.

Why a cache: every stage of an experiment (weak, its ensemble members, ceiling, each student, each seed) runs the
same frozen bottom over largely the same texts. Its outputs are a pure function of (model, blocks run, the text's
token ids, numerics, the hardware's kind), so one store per (model, blocks, numerics, hardware kind) holds them by
token ids and each stage computes only the texts it has not seen. The hardware kind is part of the key because the
numbers that follow differ with it (cpu_kind(): AMD and Intel kernels give different fine-tuned numbers): a store
filled on another kind of CPU is never read as this one's. Each stage logs one line of its hits and misses. A store
is content-checked: a file whose sha256 is not the one recorded is found, reported and recomputed.

What is stored: for K = 0 the final-normed hidden state of each text's last token at a depth (one full forward pass
fills every depth at once, so `model@d` for every d costs one pass); for K > 0 the input of block depth - K at
every token. A text's bottom is computed at its own length, never padded, in batches of texts of that length; its
outputs then depend on nothing else, except, in the last bits, on how many texts share its batch (CPU matmul kernels
differ with the row count). With BATCH = 1 training from the store equals training with the bottom run at every
step (`--no-feature-cache`) bit for bit; with batches the two differ by that rounding (tests/test_features.py).
"""
import fcntl
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from core import cli
from data.common import cache_dir
from models.llama import Llama, packed_trunk

BATCH = 64  # texts of one length per forward pass of the bottom (1: bit-exact against --no-feature-cache, slower)
TOKENS = 2048  # a Llama under bf16 autocast on CPU: tokens per packed forward pass (llama.packed_trunk)


class Features:
    """One text as the trained top sees it: `x` is (n_embd,) for K = 0, (tokens, n_embd) for K > 0. len() is the
    text's token count, so batches bucket by length exactly as token rows do."""
    __slots__ = ("x", "n_tokens")

    def __init__(self, x, n_tokens):
        self.x, self.n_tokens = x, n_tokens

    def __len__(self):
        return self.n_tokens


def collate_features(rows, device):
    """(B, n_embd) and no mask for K = 0; (B, T, n_embd) right-padded with zeros and its mask for K > 0. The mask
    is always explicit (see the module docstring)."""
    if rows[0].x.dim() == 1:
        return torch.stack([r.x for r in rows]).to(device), None
    T, C = max(len(r) for r in rows), rows[0].x.shape[1]
    x = torch.zeros(len(rows), T, C)
    mask = torch.zeros(len(rows), T, dtype=torch.long)
    for i, r in enumerate(rows):
        x[i, :len(r)], mask[i, :len(r)] = r.x, 1
    return x.to(device), mask.to(device)


class TopBlocks(nn.Module):
    """What --train-layers K trains: the top K blocks, the final norm and the classification head of `model`,
    on the frozen bottom's outputs. Only these are registered as submodules, so parameters(), state_dict() and the
    optimizer see the trained part alone. With `bottom_every_step`, forward takes token ids and runs the frozen
    bottom first, at every step (the uncached reference)."""

    def __init__(self, model, k, bottom_every_step=False):
        super().__init__()
        n = model.config.n_layer
        self.k, self.bottom_every_step, self.config = k, bottom_every_step, model.config
        self.base = [model]  # a list, so the frozen bottom is not a submodule
        self.top = nn.ModuleList(model.blocks[n - k:] if k else [])
        self.norm = model.norm if k else None  # K = 0: the cached features are already normed
        self.score = model.score
        for p in model.parameters():  # the frozen bottom never gets a gradient, even uncached
            p.requires_grad = False
        for p in self.parameters():
            p.requires_grad = True

    def forward(self, x, mask):
        if self.bottom_every_step:  # token rows: the bottom of each, as the store computes it
            lengths = [x.size(1)] * x.size(0) if mask is None else mask.sum(1).tolist()
            with torch.no_grad():
                rows = bottom_rows(self.base[0], [r[:n].tolist() for r, n in zip(x, lengths)], self.k, x.device)
            x, mask = collate_features([Features(r, n) for r, n in zip(rows, lengths)], x.device)
        if self.k == 0:
            return self.score(x)
        n = self.config.n_layer
        h, _ = self.base[0]._run(None, mask, blocks=slice(n - self.k, n), x=x)
        last = torch.full((x.size(0),), x.size(1) - 1, device=x.device) if mask is None else mask.sum(1) - 1
        return self.score(h[torch.arange(x.size(0), device=x.device), last])

    def classify(self, x, mask):
        return self(x, mask)

    def num_params(self):
        return self.base[0].num_params()

    def save_pretrained(self, directory):
        self.base[0].save_pretrained(directory)  # the whole model: frozen bottom and trained top


def bottom(model, idx, k, every_depth=False):
    """The frozen part's output for rows of one length (B, T), unpadded: K = 0 the final-normed hidden state of
    each row's last token (B, n_embd) (with every_depth, a list of it after each block 1..n_layer); K > 0 the input
    of block n_layer - K at every token (B, T, n_embd). Rows are never padded here because a row's outputs change in
    the last bits with the length it is padded to, but not with the other rows of its batch (checked on CPU fp32):
    so the store and the uncached reference, which both compute each row at its own length, agree bit for bit."""
    n = model.config.n_layer
    if k:
        return model._run(idx, blocks=slice(0, n - k))[0]
    if not every_depth:
        return model._run(idx)[0][:, -1]
    h, depths = None, []
    for d in range(n):
        h, _ = model._run(idx if d == 0 else None, blocks=slice(d, d + 1), x=h)
        # the last token only, copied: a view would keep every depth's (B, T, n_embd) alive
        depths.append((h if d == n - 1 else model.final_norm(h))[:, -1].clone())
    return depths


def packed(model, device):
    """The Llama under `model` when bottom_rows packs its texts (llama.packed_trunk): under bf16 autocast on CPU,
    where its frozen weights are held in bf16 and the row count of each matmul decides the speed; else None."""
    model = getattr(model, "model", model)  # _Truncated
    bf16 = (device.type == "cpu" and torch.is_autocast_enabled("cpu")
            and torch.get_autocast_dtype("cpu") == torch.bfloat16)
    return model if bf16 and isinstance(model, Llama) else None


def packs(seqs):
    """The indices of `seqs` in packs of at most TOKENS tokens (a longer text alone), shortest texts first."""
    out, tokens = [], TOKENS
    for i in sorted(range(len(seqs)), key=lambda i: len(seqs[i])):
        if tokens + len(seqs[i]) > TOKENS:
            out.append([])
            tokens = 0
        out[-1].append(i)
        tokens += len(seqs[i])
    return out


def packed_rows(model, llama, seqs, k, every_depth, bar):
    """bottom_rows through llama.packed_trunk: texts sorted by length, packed up to TOKENS tokens a pass (a longer
    text alone); a text's outputs then depend on its pack in the last bits only (tests/test_features.py)."""
    n = model.config.n_layer
    out = [[None] * len(seqs) for _ in range(n if every_depth else 1)]
    for pack in packs(seqs):
        got = packed_trunk(llama, [seqs[i] for i in pack], n - k, every_depth=every_depth)
        if not k and not every_depth:
            got = [llama.norm(h[-1]) for h in got]
        for d, rows in enumerate(got if every_depth else [got]):
            for j, i in enumerate(pack):
                out[d][i] = rows[j]
        if bar is not None:
            bar.update(len(pack))
    return out if every_depth else out[0]


def bottom_rows(model, seqs, k, device, every_depth=False, bar=None):
    """bottom() of token rows of any lengths, rows of one length batched together; a list in the order of `seqs`
    (with every_depth, one such list per depth). A Llama under bf16 autocast on CPU packs them instead (packed)."""
    llama = packed(model, device)
    if llama is not None:
        return packed_rows(model, llama, seqs, k, every_depth, bar)
    by_length = {}
    for i, s in enumerate(seqs):
        by_length.setdefault(len(s), []).append(i)
    out = [[None] * len(seqs) for _ in range(model.config.n_layer if every_depth else 1)]
    for length in sorted(by_length):
        group = by_length[length]
        for start in range(0, len(group), BATCH):
            batch = group[start:start + BATCH]
            idx = torch.tensor([seqs[i] for i in batch], dtype=torch.long, device=device)
            h = bottom(model, idx, k, every_depth)
            for d, h_d in enumerate(h if every_depth else [h]):
                for j, i in enumerate(batch):
                    out[d][i] = h_d[j]
            if bar is not None:
                bar.update(len(batch))
    return out if every_depth else out[0]


# ----------------------------------------------------------------------------------------------------------------
# the store

def cpu_kind():
    """The kind of CPU the numbers depend on: vendor, torch's CPU capability and torch version, e.g. "GenuineIntel
    AVX512 torch 2.13.0+cpu" (AMD EPYC and Intel Xeon, both AVX-512, give different fine-tuned numbers)."""
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    vendor = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("vendor_id")), "unknown")
    return f"{vendor} {torch.backends.cpu.get_cpu_capability()} torch {torch.__version__}"


def hardware_kind(numerics):
    """What besides the numerics the outputs depend on: the CPU kind on CPU, the GPU's name and torch on CUDA."""
    if numerics.get("device") == "cuda" and torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()} torch {torch.__version__}"
    return cpu_kind()


def store_dir(identity, numerics, what):
    """One directory per (model identity, numerics, hardware kind), one store in it per output: `what` is
    "final@<depth>" (K = 0) or "block<j>" (K > 0, the input of block j)."""
    key = json.dumps([identity, numerics, hardware_kind(numerics)], sort_keys=True)
    return cache_dir() / "features" / hashlib.sha256(key.encode()).hexdigest()[:24] / what


def text_key(ids):
    return hashlib.sha256(np.asarray(ids, dtype=np.int64).tobytes()).hexdigest()[:32]


def _read_store(directory):
    """{text key: (n_embd,) or (tokens, n_embd) tensor} of a store, {} when there is none; a store whose file does
    not match its recorded sha256 (tampered, truncated) is reported and dropped."""
    index_file, data_file = directory / "index.json", directory / "features.safetensors"
    if not index_file.is_file():
        return {}
    try:
        index = json.loads(index_file.read_text())
        if hashlib.sha256(data_file.read_bytes()).hexdigest() != index["sha256"]:
            raise ValueError("sha256 differs from the one recorded")
        data = load_file(data_file)
    except (OSError, ValueError, KeyError, SafetensorError) as e:
        print(f"feature cache {directory} is damaged ({e}): recomputing it", flush=True)
        return {}
    return {key: data[key] for key in index["keys"]}


def _write_store(directory, store):
    directory.mkdir(parents=True, exist_ok=True)
    data_file = directory / "features.safetensors"
    tmp = data_file.with_name(f".{data_file.name}.{os.getpid()}.tmp")
    save_file({k: v.contiguous() for k, v in store.items()}, tmp)
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
    os.replace(tmp, data_file)
    index = directory / "index.json"
    tmp = index.with_name(f".index.json.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"sha256": digest, "keys": sorted(store)}))
    os.replace(tmp, index)


def _locked(model_dir):
    model_dir.mkdir(parents=True, exist_ok=True)
    f = open(model_dir / ".lock", "w")
    fcntl.flock(f, fcntl.LOCK_EX)  # --jobs workers filling a model's stores take turns (one lock: no deadlock)
    return f


def cached_rows(directory, keys, compute):
    """([one tensor per key], texts read from the store, texts computed) from the store in `directory`, computing
    only the keys it lacks: compute(positions) gets the positions in `keys` of the missing ones (a key repeated, e.g.
    a bootstrap resample, is asked once and counted once) and returns their tensors in that order. The model's
    stores are locked meanwhile (--jobs workers take turns)."""
    lock = _locked(directory.parent)
    try:
        store = _read_store(directory)
        first = {}
        for i, key in enumerate(keys):
            if key not in store:
                first.setdefault(key, i)
        missing = sorted(first.values())
        if missing:
            store.update({keys[i]: row for i, row in zip(missing, compute(missing))})
            _write_store(directory, store)
    finally:
        lock.close()
    return [store[key] for key in keys], len(set(keys)) - len(missing), len(missing)


def store_line(directory, hits, misses):
    return f"store {directory.parent.name}/{directory.name}: {hits + misses} texts, {hits} hits, {misses} misses"


@torch.no_grad()
def cached_features(model, seqs, k, depth, identity, numerics, rt, quiet=False, log=None):
    """Features of every token row in `seqs` for the top K blocks of `model` cut at `depth`, from the store,
    computing only what is missing. `model` is the whole pretrained model: a K = 0 miss fills every depth it has.
    `identity` is the whole model's (rundir.model_identity), `numerics` the run's device and precision; log(line)
    gets the store's hits and misses."""
    directory = store_dir(identity, numerics, f"final@{depth}" if k == 0 else f"block{depth - k}")
    keys = [text_key(s) for s in seqs]

    def compute(missing):
        computed = _compute(model, [seqs[i] for i in missing], k, depth, rt, quiet)
        for d, rows in computed.items():  # K = 0: every depth from the same pass, each into its own store
            if d != depth:
                other = directory.with_name(f"final@{d}")
                _write_store(other, _read_store(other) | {keys[i]: row for i, row in zip(missing, rows)})
        return computed[depth]

    rows, hits, misses = cached_rows(directory, keys, compute)
    if log is not None:
        log(store_line(directory, hits, misses))
    return [Features(row, len(s)) for row, s in zip(rows, seqs)]


def _compute(model, seqs, k, depth, rt, quiet):
    """{depth: [one tensor per row]}: K = 0 every depth of the model, K > 0 block depth - K's inputs."""
    model.eval()
    bar = cli.progress(len(seqs), f"features {'at every depth' if k == 0 else f'into block {depth - k}'}", quiet=quiet)
    with rt.autocast:
        if k == 0:
            rows = bottom_rows(model, seqs, 0, rt.device, every_depth=True, bar=bar)
            out = {d: [r.float().cpu().clone() for r in per_depth] for d, per_depth in enumerate(rows, 1)}
        else:
            rows = bottom_rows(_Truncated(model, depth), seqs, k, rt.device, bar=bar)
            out = {depth: [r.float().cpu().clone() for r in rows]}
    if bar is not None:
        bar.close()
    return out


class _Truncated:
    """`model` seen with `depth` blocks, without changing it: bottom() reads only n_layer and _run."""

    def __init__(self, model, depth):
        self.model, self.config = model, type("C", (), {"n_layer": depth})

    def _run(self, *args, **kwargs):
        return self.model._run(*args, **kwargs)


# ----------------------------------------------------------------------------------------------------------------
# a run on the top

PREDICTED = ("test", "val", "w2s_train")  # the splits a classification run predicts (train.py's finish)


def freeze_below_top(model, k):
    """--train-layers K of a language model (generation tasks): only the top K blocks and the final norm learn; the
    embeddings and the LM head (tied to them in GPT-2 and SmolLM2) stay frozen with the bottom. Its features are not
    stored: the frozen bottom runs at every step, so the numbers are those of --recompute-bottom."""
    if k > model.config.n_layer:
        raise cli.UserError(f"argument --train-layers: {k} is more than the {model.config.n_layer} blocks the model has")
    trained = {id(p) for block in model.blocks[model.config.n_layer - k:] for p in block.parameters()}
    trained |= {id(p) for p in (model.norm.parameters() if model.norm is not None else [])}
    for p in model.parameters():
        p.requires_grad = id(p) in trained
    return model


def train_on_top(cfg, job, rt, model, max_len):
    """--train-layers K for one run: the whole pretrained `model` fills the store for every text the run will see
    (its training rows, val, and the splits it predicts), is cut to its depth, and the TopBlocks that train are
    returned. The job's rows become Features (job.features[split] for prediction), unless --recompute-bottom keeps
    token rows and runs the bottom at every step."""
    k, depth = int(cfg.train_layers), job.depth or model.config.n_layer
    if k > depth:
        raise cli.UserError(f"argument --train-layers: {k} is more than the {depth} blocks the model has")
    if not cfg.recompute_bottom:
        identity = {key: v for key, v in job.inputs["model"].items() if key != "depth"}  # the whole model's
        texts = {split: [ids[:max_len] for ids in job.tok.encode_batch([r["text"] for r in job.task.splits[split]])]
                 for split in PREDICTED}
        everything = job.train_x + job.val_x + [s for split in PREDICTED for s in texts[split]]
        rows = iter(cached_features(model, everything, k, depth, identity, job.inputs["numerics"], rt,
                                    quiet=cfg.quiet or not rt.master, log=rt.log))
        job.train_x = [next(rows) for _ in job.train_x]
        job.val_x = [next(rows) for _ in job.val_x]
        job.features = {split: [next(rows) for _ in texts[split]] for split in PREDICTED}
    model.truncate(depth)
    return TopBlocks(model, k, bottom_every_step=cfg.recompute_bottom)  # `model` is on rt.device already
