"""
The `recipe` section: the paper's recipe (yeruimeng/WTS safety/train.py: transformers' Trainer, every row padded to
--max-length, fp16 on CUDA / fp32 on CPU, torch AdamW wd 0.1, linear warm-up 100 steps) vs our path (our model,
bucketed batches, fused AdamW, train.py's loss and schedule): seconds per epoch on identical rows (see Recipe).

    python bench.py --sections recipe
"""
import warnings

import numpy as np
import torch

from benchmarks.common import check_row, skipped_row, timing_row, transformers, value_row
from methods.losses import xent_loss
from run.batching import bucketed_batches, collate
from run.config import TrainConfig
from run.optim import make_optimizer, optimizer_step
from run.predict import Classifier

# The paper's TrainingArguments and optimizer (yeruimeng/WTS safety/train.py)
# (per_device_train_batch_size=16 is --batch-size's default; --quick uses 4)
WTS = dict(lr=5e-5, weight_decay=0.1, warmup_steps=100, logging_steps=10, seed=42)


class Recipe:
    """The `recipe` section's two epochs, over the same rows in the same batches and order:

    ref   the paper's recipe, yeruimeng/WTS safety/train.py: transformers' Trainer over rows padded to max_length (as
          its tokenizer(padding="max_length", truncation=True) pads them), TrainingArguments(
          per_device_train_batch_size=16 (--batch-size), learning_rate=5e-5, weight_decay=0.1, logging_steps=10,
          fp16=True on CUDA; fp32 on CPU), optimizers=(torch.optim.AdamW over every parameter, weight decay 0.1,
          get_linear_schedule_with_warmup(100 warm-up steps over len(rows) // batch steps)); the Trainer's defaults
          otherwise (grad clip 1.0, seed 42, transformers' default attention). One epoch, no eval, no checkpoints.
    ours  train.py's classification loop: our model, length-bucketed batches padded to their longest row, train.py's
          autocast (bf16 on CUDA), fp32 soft cross entropy (one-hot targets: the Trainer's cross entropy), grad clip
          1.0, fused AdamW with decay on matrices, train.py's schedule, a loss sync every 20 steps (train.py's log).

    The Trainer reads the rows in our epoch's order (train_sampling_strategy="sequential" over them) instead of its
    RandomSampler's shuffle: every row is padded to max_length, so the order does not change its work, and both sides
    then train on the same batches. records[side] holds, per run, the row indices of each batch that side trained on.
    """

    def __init__(self, ctx):
        c, data = ctx.cfg, ctx.safety
        self.ctx, self.device, self.data = ctx, ctx.device, data
        self.B, self.L, self.pad = c["batch_size"], c["max_length"], data["pad"]
        batches = bucketed_batches([len(s) for s in data["seqs"]], self.B, seed=0, epoch=0)
        # the one short batch goes last, so that the Trainer's consecutive batches of B over the same order are ours
        self.batches = [b.tolist() for b in sorted(batches, key=lambda b: len(b) < self.B)]
        self.order = [i for b in self.batches for i in b]
        self.ours_model = ctx.ours(c["shape"])
        self.ours_forward = ctx.compiled(Classifier(self.ours_model))
        self.hf_model = ctx.hf(transformers.GPT2ForSequenceClassification, c["shape"], attn_implementation=None)
        self.init = {"ours": {k: v.clone() for k, v in self.ours_model.state_dict().items()},
                     "ref": {k: v.clone() for k, v in self.hf_model.state_dict().items()}}
        self.ref_rows = [self.padded_row(i) for i in self.order]
        self.records = {"ours": [], "ref": []}

    def padded_row(self, i):
        s = self.data["seqs"][i]
        n = self.L - len(s)
        return {"row": i, "input_ids": s + [self.pad] * n, "attention_mask": [1] * len(s) + [0] * n,
                "labels": self.data["labels"][i]}

    def collate_ref(self, features):
        self.records["ref"][-1].append([f["row"] for f in features])
        return {k: torch.tensor([f[k] for f in features]) for k in ("input_ids", "attention_mask", "labels")}

    def setup_ref(self, max_steps=-1):
        """A fresh Trainer on the initial weights (untimed)."""
        self.hf_model.load_state_dict(self.init["ref"])
        self.records["ref"].append([])
        opt = torch.optim.AdamW(self.hf_model.parameters(), lr=WTS["lr"], weight_decay=WTS["weight_decay"])
        sched = transformers.get_linear_schedule_with_warmup(  # WTS: len(train) * epochs // batch size steps
            opt, num_warmup_steps=WTS["warmup_steps"], num_training_steps=len(self.order) // self.B)
        cuda = self.device.type == "cuda"
        args = transformers.TrainingArguments(
            output_dir=str(self.ctx.workdir / "trainer"), num_train_epochs=1, max_steps=max_steps,
            per_device_train_batch_size=self.B, learning_rate=WTS["lr"], weight_decay=WTS["weight_decay"],
            logging_steps=WTS["logging_steps"], fp16=cuda, use_cpu=not cuda, seed=WTS["seed"],
            eval_strategy="no", save_strategy="no", report_to="none", disable_tqdm=True,
            dataloader_pin_memory=cuda, remove_unused_columns=False, train_sampling_strategy="sequential")
        self.trainer = transformers.Trainer(model=self.hf_model, args=args, train_dataset=self.ref_rows,
                                            data_collator=self.collate_ref, optimizers=(opt, sched))
        for quiet in (transformers.trainer_callback.PrinterCallback, transformers.trainer_callback.ProgressCallback):
            self.trainer.remove_callback(quiet)  # no log lines in the bench's output

    def run_ref(self):
        self.trainer.train()

    def setup_ours(self):
        """Initial weights, a fresh optimizer and schedule (untimed, as train.py builds them before its loop)."""
        self.ours_model.load_state_dict(self.init["ours"])
        self.ours_model.train()
        self.records["ours"].append([])
        self.opt, self.sched, self.params = make_optimizer(self.ours_model, TrainConfig(lr=5e-5, weight_decay=0.01),
                                                           len(self.batches))  # train.py's: warm-up 10%, then decay

    def run_ours(self, batches=None):
        d, dev = self.data, self.device
        batches = self.batches if batches is None else batches
        for step, b in enumerate(batches, 1):
            idx, mask = collate([d["seqs"][i] for i in b], self.pad, dev)
            y = torch.tensor(np.stack([d["targets"][i] for i in b]), dtype=torch.float32, device=dev)
            with self.ctx.autocast:
                logits = self.ours_forward(idx, mask)
            loss = xent_loss(logits.float(), y)
            loss.backward()
            optimizer_step(self.opt, self.sched, self.params, grad_clip=1.0)
            if step % 20 == 0 or step == len(batches):
                loss.item()  # train.py's logging reads the loss every 20 steps
            self.records["ours"][-1].append(list(b))

    def warm_up(self):
        """Each side once, untimed: the Trainer for 2 steps, ours on one batch of every distinct width (compilation)."""
        widths = {}
        for b in self.batches:
            widths.setdefault((len(b), max(len(self.data["seqs"][i]) for i in b)), b)
        self.setup_ours()
        self.run_ours(list(widths.values()))
        self.setup_ref(max_steps=2)
        self.run_ref()
        self.records = {"ours": [], "ref": []}

    def same_rows(self):
        """Every run of each side trained on exactly our batches: same rows, same batches, same order."""
        runs = self.records["ours"] + self.records["ref"]
        return len(runs) > 0 and all(r == self.batches for r in runs) and sorted(self.order) == list(
            range(len(self.data["seqs"])))


def section_recipe(ctx):
    """the paper's recipe (yeruimeng/WTS: Trainer, rows padded to --max-length, fp16 on CUDA) vs our path, one epoch
    ref: transformers Trainer as WTS's safety/train.py configures it; ours: train.py's loop (see Recipe)"""
    S, c = "recipe", ctx.cfg
    if ctx.safety is None:
        return [skipped_row(S, f"safety data not found under {ctx.args.data_dir} (--data-dir)")]
    r = Recipe(ctx)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the Trainer's notes (pad token = eos, ...)
        r.warm_up()
        t = ctx.time({"ours": r.run_ours, "ref": r.run_ref}, setup={"ours": r.setup_ours, "ref": r.setup_ref})
    lengths = [len(s) for s in r.data["seqs"]]
    cells = sum(len(b) * max(lengths[i] for i in b) for b in r.batches)
    same = r.same_rows() and r.trainer.state.global_step == len(r.batches)
    precision = "fp16 autocast" if ctx.device.type == "cuda" else "fp32"
    return [check_row(S, "same rows: both sides train on the same batches in the same order, every round",
                      f"{len(r.order)} rows, {len(r.batches)} batches", same),
            timing_row(S, f"epoch, {len(r.order)} rows, B{r.B}, ours {c['dtype']}, ref {precision}", t["ours"],
                       t["ref"], unit="s/epoch"),
            value_row(S, "padding share of the tokens computed", 1 - sum(lengths) / cells,
                      1 - sum(lengths) / (len(lengths) * r.L),
                      note=f"ours: bucketed; ref: every row padded to {r.L}; ref attention "
                           f"{r.hf_model.config._attn_implementation}")]
