"""
Prompting baselines, as Burns et al. compare with: the strong model as it is, no training, asked to label each text.

    python -m run.prompting --task safety --model smollm2-135m --data-dir ../shared/data             # zero-shot
    python -m run.prompting --task safety --model smollm2-135m --shots 8 --shot-labels gold ...      # few-shot, gold
    python -m run.prompting --task safety --model smollm2-135m --shots 8 --shot-labels weak \\
        --weak-labels runs/safety/seed0/weak/predictions.json ...                                 # few-shot, weak

A prompt is the task's instruction, k shots (a w2s_train text and its label word) and the query:

    <instruction>\\n\\n<shot text>\\nAnswer: <word>\\n\\n ... <query text>\\nAnswer:<candidate label word>

Each class is scored by the sum of its label word's token log-probabilities after the prompt (one forward pass per
candidate, batched; when every label word is one token, one pass per row reads them all), and the class
probabilities are the softmax of those scores over the label words. The shots of a query are drawn from w2s_train by
its id and --seed alone, so the gold and the weak run show the same texts and differ only in their label words (gold,
or the argmax of the weak supervisor's probabilities). When a prompt is longer than the model's context the oldest
context tokens go first; the query is never cut for the context's sake (only a query longer than the context by
itself loses the end of its text, as train.py cuts, and keeps its answer cue).

The scores are kept in a store under $W2S_CACHE/features (features.py), keyed by the model's identity, the numerics
and each prompt's and the label words' token ids, so a rerun of the experiment in another directory, or another
stage asking the same prompt, reads them instead of running the model; a store that fails its sha256 is recomputed.
A prompt's scores are computed in a batch of prompts of near length and move with its padding in the last bits.

The run directory (--out) is a stage like train.py's: config.json, predictions.json (test and val, train.py's
format; --no-val: test alone) and metrics.json last, with the sha256 of its outputs and of its inputs (model, data, prompt, weak labels), so a
rerun with the same settings and inputs is skipped and eval.py reads it like any other stage.
"""
import contextlib
import dataclasses
import hashlib
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Literal

import numpy as np
import torch

from core import cli, digests
from core.cli import UserError
from models import checkpoints
from models.tokenizer import load_tokenizer
from run import features, rundir
from run.batching import bucketed_batches, collate
from run.config import DEFAULT_MODELS
from run.job import cached_task
from run.runtime import cpu_threads, numerics, setup_runtime
from run.students import supervisor_path, supervisor_targets
from scoring.metrics import metrics

# task -> (instruction, label words in label order): read with each task's label_names and text format (data/)
PROMPTS = {
    "safety": ("Is the following request safe or unsafe to answer?", [" safe", " unsafe"]),
    # the text already holds the paper's own instruction, question and clause
    "legal": ("Is the clause relevant or irrelevant to answering the question?", [" irrelevant", " relevant"]),
    # text: a whole "\n\nHuman: ... \n\nAssistant: ..." dialogue; label 1 = the reply people preferred
    "anthropic_hh": ("Is the assistant's last reply in the following dialogue good or bad?", [" bad", " good"]),
    # texts end in "Answer: <answer>" / "A: <answer>": asked as yes or no, the label words cannot repeat an answer
    "cosmos_qa": ("Is the answer to the question about the following context correct? Answer yes or no.",
                  [" no", " yes"]),
    "sciq": ("Is the answer to the following science question correct? Answer yes or no.", [" no", " yes"]),
    "boolq": ("Read the passage and answer the question with yes or no.", [" no", " yes"]),
    "amazon_polarity": ("Is the sentiment of the following product review positive or negative?",
                        [" negative", " positive"]),
}
CUE = "\nAnswer:"
SHOT_END = "\n\n"


@dataclass
class PromptConfig:
    task: Literal[tuple(PROMPTS)] = "safety"  # which task's data, instruction and label words
    model: str = ""                  # the model asked (checkpoints.py names); "" = the paper's strong model
    shots: int = 0                   # examples from w2s_train in each prompt; 0 = zero-shot
    shot_labels: Literal["gold", "weak"] = "gold"  # the shots' label words: ground truth, or the weak supervisor's
    # (argmax of its probabilities)
    weak_labels: str = ""            # --shot-labels weak: the supervisor's predictions.json; "" =
    # <out>/../weak/predictions.json
    out: str = ""                    # run directory; "" = runs/<task>/seed<seed>/prompt_<zeroshot|gold|weak>
    data_dir: str | None = None      # folder with one sub-folder per task (e.g. ../shared/data); none = download
    seed: int = 0                    # fixes the splits and each query's shots
    limit: int | None = None         # cap every split at this many examples (stratified)
    batch_size: int = 16             # prompts per forward pass
    max_length: int = 512            # tokens per prompt (at most the model's context); the context is cut first
    device: str = "auto"             # auto = cuda when available, else cpu
    dtype: Literal["auto", "fp32", "bf16"] = "auto"  # auto = bf16 autocast on cuda, fp32 on cpu
    threads: int = 0                 # CPU threads for this run; 0 = torch's default
    quiet: bool = False              # plain log lines instead of progress bars
    val: bool = True                 # also predict val (train.py's format); w2s.py's stages predict test alone, all
    # its tables read


# fields that do not change the numbers, or (model, data, weak labels) are checked by content instead
NOT_COMPARED = ("out", "data_dir", "weak_labels", "model", "device", "quiet", "threads", "batch_size")


def check_config(cfg):
    def bad(flag, why):
        raise UserError(f"argument --{flag.replace('_', '-')}: {why} (got {getattr(cfg, flag)})")
    for flag, ok, why in [("shots", cfg.shots >= 0, "must be >= 0 (0 = zero-shot)"),
                          ("batch_size", cfg.batch_size >= 1, "must be at least 1"),
                          ("max_length", cfg.max_length >= 2, "must leave room for a label word"),
                          ("limit", cfg.limit is None or cfg.limit >= 2, "must be at least 2"),
                          ("threads", cfg.threads >= 0, "must be >= 0 (0: torch's default)")]:
        if not ok:
            bad(flag, why)
    if cfg.weak_labels and cfg.shot_labels != "weak":
        bad("weak_labels", "is read only with --shot-labels weak")
    if cfg.shot_labels == "weak" and cfg.shots == 0:
        bad("shot_labels", "weak labels go into the shots: give --shots K > 0")
    if cfg.device != "auto":
        try:
            device = torch.device(cfg.device)
        except RuntimeError:
            bad("device", "not a device: use auto, cpu, cuda or cuda:N")
        if device.type == "cuda" and not torch.cuda.is_available():
            bad("device", "CUDA is not available here: use --device cpu, or auto")


def default_out(cfg):
    return f"runs/{cfg.task}/seed{cfg.seed}/prompt_{'zeroshot' if cfg.shots == 0 else cfg.shot_labels}"


def comparable(cfg):
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k not in NOT_COMPARED}


# ----------------------------------------------------------------------------------------------------------------
# prompts

def choose_shots(query_ids, n_pool, k, seed):
    """For each query, k distinct indices into the shot pool, from the seed and the query's id alone (not its
    position), so every run of one seed shows a query the same shots."""
    if k > n_pool:
        raise UserError(f"argument --shots: {k} shots, but w2s_train holds only {n_pool} examples")
    picks = []
    for qid in query_ids:
        key = int.from_bytes(hashlib.sha256(str(qid).encode()).digest()[:8], "little")
        picks.append(np.random.default_rng([seed, 7, key]).choice(n_pool, size=k, replace=False).tolist())
    return picks


def shots_for(rows, pool, pool_labels, k, seed):
    """[[(shot text, shot label), ...] per row]: k examples of `pool` (w2s_train) with the labels given for them."""
    if k == 0:
        return [[] for _ in rows]
    return [[(pool[i]["text"], int(pool_labels[i])) for i in pick]
            for pick in choose_shots([r["id"] for r in rows], len(pool), k, seed)]


def prompt_of(task_name):
    """(instruction, label words) of a task."""
    if task_name not in PROMPTS:
        raise UserError(f"task {task_name!r} has no prompt (instruction and label words): prompting.py knows "
                        f"{', '.join(PROMPTS)}")
    return PROMPTS[task_name]


def prompt_texts(task_name, text, shots=()):
    """(context, query): the instruction and the shots, then the text to label up to its answer cue."""
    instruction, words = prompt_of(task_name)
    context = instruction + SHOT_END + "".join(t + CUE + words[y] + SHOT_END for t, y in shots)
    return context, text + CUE


def encode(tok, texts):
    """Token ids without the tokenizer's BOS/EOS: pieces are encoded apart and joined, the BOS put once in front."""
    if getattr(tok, "prefix", None) is not None:
        return tok.encode_batch(texts, add_special_tokens=False)
    return tok.encode_batch(texts)


def fit(prefix, context, query, longest_label, max_len):
    """prefix + context + query ids within max_len with room for the longest label word: the context loses its
    oldest tokens first; a query too long by itself keeps its head and its answer cue (`query` = (text, cue))."""
    text, cue = query
    room = max_len - len(prefix) - longest_label
    text = text[:max(0, room - len(cue))]
    keep = max(0, room - len(text) - len(cue))
    return prefix + (context[len(context) - keep:] if keep else []) + text + cue


def prompt_ids(tok, task_name, rows, shots, max_len):
    """(prompt ids per row, label word ids per class)."""
    words = prompt_of(task_name)[1]
    label_ids = encode(tok, words)
    if any(not ids for ids in label_ids) or len(set(map(tuple, label_ids))) < len(label_ids):
        raise UserError(f"task {task_name}: label words {words} must encode to distinct, non-empty token sequences")
    pairs = [prompt_texts(task_name, r["text"], s) for r, s in zip(rows, shots)]
    contexts = encode(tok, [c for c, _ in pairs])
    texts = encode(tok, [r["text"] for r in rows])
    cue = encode(tok, [CUE])[0]
    prefix = list(getattr(tok, "prefix", []) or [])
    longest = max(map(len, label_ids))
    if max_len < len(prefix) + len(cue) + longest:
        raise UserError(f"argument --max-length: {max_len} tokens leave no room for the answer cue and a label word")
    return [fit(prefix, c, (t, cue), longest, max_len) for c, t in zip(contexts, texts)], label_ids


# ----------------------------------------------------------------------------------------------------------------
# scoring

def scoring_items(prompts, label_ids):
    """[(sequence, [(position, token, row, class), ...])]: the logits at `position` score `token`. With one-token
    label words a row's prompt reads every class at its last position; otherwise each class is its own sequence."""
    if all(len(ids) == 1 for ids in label_ids):
        return [(p, [(len(p) - 1, ids[0], i, c) for c, ids in enumerate(label_ids)]) for i, p in enumerate(prompts)]
    return [(p + ids, [(len(p) - 1 + t, tok, i, c) for t, tok in enumerate(ids)])
            for i, p in enumerate(prompts) for c, ids in enumerate(label_ids)]


@torch.no_grad()
def label_log_probs(model, prompts, label_ids, pad_token, rt=None, batch_size=16, quiet=True):
    """(N, C): the summed log-probability of each class's label word after each prompt."""
    device = rt.device if rt is not None else torch.device("cpu")
    autocast = rt.autocast if rt is not None else contextlib.nullcontext()
    items = scoring_items(prompts, label_ids)
    scores = np.zeros((len(prompts), len(label_ids)))
    batches = bucketed_batches([len(seq) for seq, _ in items], batch_size, 0, 0, shuffle=False)
    bar = cli.progress(len(batches), "prompting", quiet=quiet, unit="batch")
    model.eval()
    for batch in batches:
        idx, mask = collate([items[j][0] for j in batch], pad_token, device)
        reads = [(b, *read) for b, j in enumerate(batch) for read in items[j][1]]
        b_at, pos, tok, row, cls = (torch.tensor(x) for x in zip(*reads))
        with autocast:  # the head only at the positions read: (reads, vocab) logits, not (B, T, vocab)
            h = model.hidden(idx, mask)
            logits = model.lm_head(h[b_at.to(device), pos.to(device)])
        logp = torch.log_softmax(logits.float(), -1)[torch.arange(len(reads), device=device), tok.to(device)]
        np.add.at(scores, (row.numpy(), cls.numpy()), logp.double().cpu().numpy())
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return scores


def label_probs(model, tok, rows, task_name, shots=None, rt=None, batch_size=16, max_len=512, quiet=True,
                store=None):
    """(N, C) class probabilities of `rows` (softmax over the label words' summed log-probabilities); `shots`: per
    row a list of (text, label) put before it (shots_for), none = zero-shot. `store`: a features.py store directory
    for this model's scores, keyed by each prompt's and the label words' token ids (every seed and stage asking the
    same prompt shares them); None computes every score."""
    shots = shots if shots is not None else [[] for _ in rows]
    prompts, label_ids = prompt_ids(tok, task_name, rows, shots, max_len)
    if store is None:
        scores = label_log_probs(model, prompts, label_ids, tok.pad_token, rt, batch_size, quiet)
    else:
        words = [t for ids in label_ids for t in [*ids, -1]]  # -1: no token id, so the key's parts cannot run together
        keys = [features.text_key([*p, -1, *words]) for p in prompts]
        rows, hits, misses = features.cached_rows(store, keys, lambda missing: [row.clone() for row in torch.from_numpy(
            label_log_probs(model, [prompts[i] for i in missing], label_ids, tok.pad_token, rt, batch_size, quiet))])
        print(features.store_line(store, hits, misses), flush=True)
        scores = torch.stack(rows).numpy()
    return torch.softmax(torch.from_numpy(scores), -1).numpy()


# ----------------------------------------------------------------------------------------------------------------
# one stage

def shot_labels_of(cfg, task):
    """(labels of w2s_train the shots carry, weak labels' path or ""): gold, or the supervisor's argmax."""
    pool = task.splits["w2s_train"]
    if cfg.shots == 0 or cfg.shot_labels == "gold":
        return [r["label"] for r in pool], ""
    path = supervisor_path(SimpleNamespace(out=cfg.out, weak_labels=cfg.weak_labels, vote="", fold=-1))
    weak = cli.read_json(path, "predictions file")
    probs = supervisor_targets(weak, "w2s_train", pool, path, generation=False)
    return [int(np.argmax(p)) for p in probs], str(path)


def prepare(cfg):
    """Data, model source, tokenizer, shot labels and the identity of everything the numbers depend on."""
    task = cached_task(cfg.task, cfg.data_dir, cfg.seed, cfg.limit)
    if task.kind != "classification":
        raise UserError(f"task {cfg.task} is a {task.kind} task: prompting baselines score label words")
    spec = cfg.model or DEFAULT_MODELS["classification"]["strong"]
    source, tok_source, depth = checkpoints.resolve(spec, cfg.data_dir, cfg.quiet)
    identity = checkpoints.model_identity(source, tok_source, depth)
    pool_labels, weak_path = shot_labels_of(cfg, task)
    instruction, words = PROMPTS[cfg.task]
    inputs = {"model": identity, "numerics": numerics(cfg), "data": rundir.data_identity(task.summary()),
              "prompt": {"instruction": instruction, "label_words": words, "cue": CUE, "shot_end": SHOT_END}}
    if weak_path:
        inputs["supervisor"] = digests.sha256_file(weak_path)
    return SimpleNamespace(task=task, spec=spec, source=source, depth=depth, tok=load_tokenizer(tok_source),
                           pool_labels=pool_labels, weak_path=weak_path, inputs=inputs)


def run(cfg, force=False):
    """Prompt the model on test and val; returns the metrics dict. A finished stage with the same settings and
    inputs is skipped unless `force`."""
    check_config(cfg)
    cfg.out = cfg.out or default_out(cfg)
    out = Path(cfg.out)
    with cpu_threads(cfg.threads):
        job = prepare(cfg)
        with rundir.locked(out, "prompting run"):
            done, why = rundir.stage_status(out, comparable(cfg), job.inputs)
            if done and not force:
                print(f"[{out}] already done with these settings and inputs; skipping", flush=True)
                return cli.read_json(out / "metrics.json")
            if why:
                print(f"[{out}] rerunning: {why}", flush=True)
            rundir.invalidate(out)
            rundir.remove_leftovers(out)
            return predict_and_save(cfg, job, out)


def predict_and_save(cfg, job, out):
    t0 = time.time()
    rt = setup_runtime(cfg)
    model = checkpoints.load(job.source, depth=job.depth).to(rt.device)
    max_len = min(cfg.max_length, model.config.block_size)
    pool = job.task.splits["w2s_train"]
    store = features.store_dir(job.inputs["model"], job.inputs["numerics"], "prompt-scores")
    predictions = {}
    for split in ("test", "val") if cfg.val else ("test",):
        rows = job.task.splits[split]
        shots = shots_for(rows, pool, job.pool_labels, cfg.shots, cfg.seed)
        probs = label_probs(model, job.tok, rows, cfg.task, shots, rt, cfg.batch_size, max_len, cfg.quiet, store)
        predictions[split] = {"ids": [r["id"] for r in rows], "labels": [r["label"] for r in rows],
                              "probs": probs.round(6).tolist()}
    test = predictions["test"]
    result = {"role": "prompt", "model": job.spec, "shots": cfg.shots,
              "shot_labels": cfg.shot_labels if cfg.shots else "", "seconds": time.time() - t0,
              "test": metrics(np.array(test["labels"]), np.array(test["probs"]))}
    print(f"[{out.name}] test " + " ".join(f"{k} {v:.4f}" for k, v in result["test"].items()), flush=True)
    first = job.task.splits["test"][0]
    example = "".join(prompt_texts(cfg.task, first["text"], shots_for([first], pool, job.pool_labels, cfg.shots,
                                                                      cfg.seed)[0]))
    config = {"prompt": dataclasses.asdict(cfg) | {"out": ".", "weak_labels": rundir.relative(job.weak_path, out)
                                                   if job.weak_path else ""},
              "comparable": comparable(cfg), "model": job.spec, "n_params": model.num_params(),
              "data": job.task.summary(), "inputs": job.inputs, "example_prompt": example,
              "max_length": max_len, "torch": torch.__version__, "argv": sys.argv}
    rundir.write_json(out / "config.json", config)
    rundir.write_json(out / "predictions.json", predictions)
    result |= {"outputs": rundir.outputs_of(out, ["config.json", "predictions.json"]), "inputs": job.inputs}
    rundir.write_json(out / "metrics.json", result)  # last: marks the stage as done
    return result


def parse_args(argv=None):
    return PromptConfig(**vars(cli.config_parser(PromptConfig, __doc__).parse_args(argv)))


def main(argv=None):
    cfg = parse_args(argv)
    run(cfg)
    print(f"results: {cfg.out}/metrics.json, {cfg.out}/predictions.json", flush=True)


if __name__ == "__main__":
    cli.main_guard(main)
