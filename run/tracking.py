"""
Experiment tracking, off unless --track: every train.py run (each w2s.py stage) is one tracked run, logging its
training loss, learning rate, tokens/s and val loss as the loop logs them, then its final metrics; w2s.py adds one
run for the experiment holding results.json's numbers (every run's metrics, each student's PGR with its CI, the
diagnostics; per seed and summarised) and results.md. The runs of one experiment (a sweep's every pair included)
share one W&B group and one TensorBoard log dir, so they compare side by side:

    --track tensorboard   OUT/tensorboard/<stage>/ and OUT/tensorboard/experiment/: tensorboard --logdir OUT/tensorboard
    --track wandb         W&B runs named <stage> in group <OUT's name>-<experiment hash>, project $WANDB_PROJECT or
                          w2s, files in OUT/wandb ($WANDB_DIR if set). Offline (to upload later with `wandb sync
                          OUT/wandb/offline-run-*`) unless an API key is there and the server answers within 3 s,
                          so tracking never stops or delays a run; $WANDB_MODE, when set, decides instead.

Tracking changes no number and is no part of the experiment's identity (config.NOT_COMPARED): a run with --track
resumes one without, and the other way round; a stage found done is not tracked again. train.py on its own (no
experiment.json above --out) is one run, its files in --out.
"""
import dataclasses
import json
import netrc
import os
import socket
import urllib.parse
from pathlib import Path
from typing import Callable, NamedTuple

from core import cli, digests
from run import rundir


class Tracker(NamedTuple):
    log: Callable     # log(step, {name: number}): numbers as the run goes
    finish: Callable  # finish(summary): the run's final numbers (and texts); None: it stopped without any. Once.


OFF = Tracker(lambda step, values: None, lambda summary=None: None)


def start(cfg, out, kind="stage"):
    """The tracked run of run directory `out`: a stage's (or a lone train.py run's), or with kind="experiment" the
    experiment's own; OFF without --track. A tracker that cannot start says why in one line and is OFF."""
    if not cfg.track:
        return OFF
    out = Path(out).resolve()
    root = next((d for d in [out, *out.parents] if (d / rundir.EXPERIMENT).is_file()), out)
    record = cli.read_json(root / rundir.EXPERIMENT) if (root / rundir.EXPERIMENT).is_file() else None
    where = "experiment" if kind == "experiment" else out.relative_to(root).as_posix()  # "." for a lone run
    name = out.name if where == "." else where
    group = f"{root.name}-{digests.sha256_json(record['experiment'])[:8]}" if record else None
    config = {} if kind == "experiment" else {"stage": name, "train": dataclasses.asdict(cfg)}
    config |= {k: record[k] for k in ("experiment", "seeds", "description") if k in record} if record else {}
    try:
        return TRACKERS[cfg.track](root, where, name, group, config, kind)
    except Exception as e:  # tracking is never the reason a run stops
        print(f"[{name}] tracking off: {cli.error_line(e) or repr(e)}", flush=True)
        return OFF


def log_experiment(cfg, out, results):
    """The experiment's own tracked run, after w2s.py evaluated it: results.json's numbers and results.md."""
    summary = {k: results[k] for k in ("seeds", "summary", "n_params") if k in results}
    start(cfg, out, kind="experiment").finish(summary | {"results.md": (Path(out) / "results.md").read_text()})


def numbers(d, prefix=""):
    """{"a/b/0": number} for every number in nested dicts and lists; None (undefined), text and flags left out."""
    items = d.items() if isinstance(d, dict) else enumerate(d)
    flat = {}
    for k, v in items:
        if isinstance(v, (dict, list, tuple)):
            flat |= numbers(v, f"{prefix}{k}/")
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            flat[f"{prefix}{k}"] = v
    return flat


def once(finish):
    done = []

    def finish_once(summary=None):
        if not done:
            done.append(True)
            finish(summary)
    return finish_once


# ----------------------------------------------------------------------------------------------------------------
# TensorBoard

def tensorboard(root, where, name, group, config, kind):
    from torch.utils.tensorboard import SummaryWriter
    logdir = root / "tensorboard" / where
    for old in logdir.glob("events.out.tfevents.*"):  # this run is being redone: its old curves would overlay
        old.unlink()
    writer = SummaryWriter(str(logdir))
    if config:  # markdown: indented lines are a code block
        writer.add_text("config", "    " + json.dumps(config, indent=1).replace("\n", "\n    "))
    last = [0]

    def log(step, values):
        last[0] = step
        for tag, value in values.items():
            writer.add_scalar(tag, value, step)

    def finish(summary):
        prefix = "" if kind == "experiment" else "final/"
        for tag, value in numbers(summary or {}).items():
            writer.add_scalar(prefix + tag, value, last[0])
        for tag, text in (summary or {}).items():
            if isinstance(text, str):
                writer.add_text(tag, text)
        writer.close()
    return Tracker(log, once(finish))


# ----------------------------------------------------------------------------------------------------------------
# Weights & Biases

def wandb_mode():
    """(mode, why): $WANDB_MODE when set; online with an API key ($WANDB_API_KEY or ~/.netrc) and the server
    reachable within 3 s; else offline."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"], "WANDB_MODE"
    url = urllib.parse.urlsplit(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai")
    try:
        key = os.environ.get("WANDB_API_KEY") or netrc.netrc().authenticators(url.hostname)
    except (OSError, netrc.NetrcParseError):
        key = None
    if not key:
        return "offline", "no W&B API key"
    try:
        socket.create_connection((url.hostname, url.port or (80 if url.scheme == "http" else 443)), timeout=3).close()
    except OSError:
        return "offline", f"{url.hostname} unreachable"
    return "online", None


def wandb(root, where, name, group, config, kind):
    import wandb as wb
    mode, why = wandb_mode()
    directory = os.environ.get("WANDB_DIR") or str(root)
    settings = wb.Settings(silent=True, console="off", x_disable_stats=True, disable_git=True, save_code=False,
                           init_timeout=30)
    kwargs = dict(project=os.environ.get("WANDB_PROJECT") or "w2s", name=name, group=group, job_type=kind,
                  config=config, dir=directory, settings=settings)
    try:
        run = wb.init(mode=mode, **kwargs)
    except Exception as e:  # a refused key, a server that stopped answering: offline instead
        if mode != "online":
            raise
        mode, why = "offline", f"W&B refused the run: {e}"
        run = wb.init(mode=mode, **kwargs)
    if mode == "offline":
        cli.note_once(f"tracking: W&B offline ({why}); `wandb sync {directory}/wandb/offline-run-*` uploads it")

    def finish(summary):
        if summary is not None:
            run.summary.update(numbers(summary) | {k: v for k, v in summary.items() if isinstance(v, str)})
        run.finish(exit_code=0 if summary is not None else 1)
    return Tracker(lambda step, values: run.log(values, step=step), once(finish))


TRACKERS = {"wandb": wandb, "tensorboard": tensorboard}  # --track NAME -> its start (NAME: the package it needs)
