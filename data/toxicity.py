"""toxicity (Ye et al. 2024, generation): RealToxicityPrompts rows, a prompt and its continuation, each with a
Perspective API toxicity score. Read from every *.jsonl in data_dir/toxicity, else the Hub dataset
allenai/real-toxicity-prompts (prompts.jsonl).

The models are trained as language models on prompt + continuation of non-toxic rows only (both scores
< 0.5, as the paper does), so weak_train / w2s_train / val keep only those; test keeps every held-out
prompt with its scores, for measuring how toxic the models' own continuations are."""
from pathlib import Path

from data.common import DataError, field, file_record, hub_dataset_file, instead_of_download, read_jsonl, warn_dropped

HUB_REPO = "allenai/real-toxicity-prompts"
TOXIC = 0.5
LABEL_NAMES = ["nontoxic_prompt", "toxic_prompt"]


def read(name, data_dir):
    paths = sorted((Path(data_dir) / "toxicity").glob("*.jsonl")) if data_dir is not None else []
    if not paths:
        paths = [hub_dataset_file(HUB_REPO, "prompts.jsonl", instead_of_download(data_dir, "toxicity/prompts.jsonl"))]
    examples, null_score, empty = [], [], []
    for path in paths:
        for line, row in read_jsonl(path):
            prompt, continuation = (field(row, [part, "text"], path, line) for part in ("prompt", "continuation"))
            scores = [field(row, [part, "toxicity"], path, line) for part in ("prompt", "continuation")]
            if not all(isinstance(s, str) for s in (prompt, continuation)):
                raise DataError(f"{path}:{line}: prompt.text and continuation.text must be strings.")
            if any(s is not None and (isinstance(s, bool) or not isinstance(s, (int, float))) for s in scores):
                raise DataError(f"{path}:{line}: toxicity scores must be numbers or null, got {scores}.")
            if None in scores:
                null_score.append(f"{path.name}:{line}")
                continue
            if not prompt.strip():
                empty.append(f"{path.name}:{line}")
                continue
            examples.append({
                "id": f"{path.stem}-{line}",
                "text": prompt + continuation,
                "label": int(scores[0] >= TOXIC),  # 1 = toxic prompt
                "prompt": prompt,
                "continuation": continuation,
                "prompt_toxicity": float(scores[0]),
                "continuation_toxicity": float(scores[1]),
            })
    warn_dropped(name, {"null toxicity": null_score, "empty prompt": empty})
    return {"kind": "generation", "label_names": LABEL_NAMES, "examples": examples,
            "files": [file_record(p) for p in paths], "train_filter": nontoxic}


def nontoxic(example):
    return example["prompt_toxicity"] < TOXIC and example["continuation_toxicity"] < TOXIC
