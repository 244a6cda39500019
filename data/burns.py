"""The NLP tasks of Burns et al. 2023 as balanced binary classification, with the text templates of
openai/weak-to-strong (weak_to_strong/datasets.py). Files are read from data_dir/nlp/<folder>/ when that
folder holds any, else downloaded once from the Hub at a pinned revision:

    task             folder            local files (their published formats)                    Hub dataset
    anthropic_hh     anthropic_hh      *.jsonl.gz  {"chosen", "rejected"} dialogues            Anthropic/hh-rlhf
    cosmos_qa        cosmosqa          *.csv  id,context,question,answer0..answer3,label       allenai/cosmos_qa
    sciq             sciq              *.json  [{question, distractor1..3, correct_answer}]    allenai/sciq
    boolq            boolq             *.jsonl  {question, passage, answer: bool, ...}         google/boolq
    amazon_polarity  amazon_polarity   *.csv  label,title,content (original: no header,        fancyzhx/amazon_polarity
                                       1=negative 2=positive; with a header: the Hub's 0/1)

Any of these folders may instead hold the Hub's *.parquet files (reading parquet needs pyarrow).

How each becomes binary (Burns drew one side per question at random; here every question gives one row of
each label, so the classes are balanced by construction and a question's rows share a "group"):
    anthropic_hh: the chosen dialogue (1) and the rejected one (0).
    cosmos_qa, sciq: the correct answer (1) and one wrong answer (0), drawn by hashing the row id (no seed).
    boolq, amazon_polarity: one row per example, balanced by dropping majority-class rows (lowest hash kept).
"group" is the shared context (dialogue so far, story, question, passage), so no context is seen both in
training and in test. A question asked twice keeps both answer sets, but no text is ever emitted twice.
"""
import csv
import hashlib
import json
from pathlib import Path

from data.common import (DataError, file_record, hub_dataset_file, instead_of_download, not_utf8, open_text, read_jsonl,
                         read_table, warn_dropped)

FOLDERS = {"anthropic_hh": "anthropic_hh", "cosmos_qa": "cosmosqa", "sciq": "sciq", "boolq": "boolq",
           "amazon_polarity": "amazon_polarity"}
LOCAL_SUFFIXES = {"anthropic_hh": (".jsonl.gz", ".jsonl"), "cosmos_qa": (".csv",), "sciq": (".json",),
                  "boolq": (".jsonl",), "amazon_polarity": (".csv",)}
LABEL_NAMES = {"anthropic_hh": ["rejected", "chosen"], "cosmos_qa": ["incorrect", "correct"],
               "sciq": ["incorrect", "correct"], "boolq": ["false", "true"],
               "amazon_polarity": ["negative", "positive"]}

# (repo, revision, files). hh-rlhf: the eight files of its default config, which Burns loaded.
# 441a767 is the commit that added that config to the README; the data files predate it.
# amazon_polarity: 1b5f364 is the last commit of the Hub's "Convert dataset to Parquet" PR (#3); only the
# 400k-row test split is fetched: Burns used 20k train + 10k test documents, and the 3.6M-row train split
# (four 240 MB files) would add nothing but download time.
# cosmos_qa: its branch main holds only a loading script (cosmos_qa.py), which today's `datasets` refuses to run;
# the rows live in the Hub's own parquet conversion, refs/convert/parquet, at commit ed50fe8.
# sciq 2c94ad3, boolq 35b264d: commits whose data/<split>-00000-of-00001.parquet files other public projects load.
# These ids were collected from public code that pins them, not checked against the live Hub from this offline machine.
HUB = {
    "anthropic_hh": ("Anthropic/hh-rlhf", "441a767f732b52f40a9afca67a1c87594a05842d",
                     [f"{subset}/{split}.jsonl.gz"
                      for subset in ("harmless-base", "helpful-base", "helpful-online", "helpful-rejection-sampled")
                      for split in ("train", "test")]),
    # the test split has no labels (-1)
    "cosmos_qa": ("allenai/cosmos_qa", "ed50fe83db62b355759053b1cd5eef344ee371e0",
                  ["default/train/0000.parquet", "default/validation/0000.parquet"]),
    "sciq": ("allenai/sciq", "2c94ad3e1aafab77146f384e23536f97a4849815",
             ["data/train-00000-of-00001.parquet", "data/validation-00000-of-00001.parquet",
              "data/test-00000-of-00001.parquet"]),
    "boolq": ("google/boolq", "35b264d03638db9f4ce671b711558bf7ff0f80d5",
              ["data/train-00000-of-00001.parquet", "data/validation-00000-of-00001.parquet"]),
    "amazon_polarity": ("fancyzhx/amazon_polarity", "1b5f364c1b85eceb9f142b373109a2f3d5f9fe99",
                        ["amazon_polarity/test-00000-of-00001.parquet"]),
}

NONE_OF_THE_ABOVE = "None of the above choices"


def read(name, data_dir):
    sources = source_files(name, data_dir)
    rows = [(source, where, line, row) for source, path in sources for where, line, row in rows_of(name, path)]
    dropped = {}
    examples = CONVERTERS[name](rows, dropped)
    warn_dropped(name, dropped)
    if name in ("boolq", "amazon_polarity"):
        examples = balance(name, examples, sources)
    return {"kind": "classification", "label_names": LABEL_NAMES[name], "examples": examples,
            "files": [file_record(path) for _, path in sources]}


def source_files(name, data_dir):
    """[(source, path)]: the local files of the task's folder, else the Hub's. `source` names the file in
    example ids ("harmless-base_test" for harmless-base/test.jsonl.gz), the same for a local copy named so."""
    folder = f"nlp/{FOLDERS[name]}"
    if data_dir is not None and (Path(data_dir) / folder).is_dir():
        paths = sorted(p for p in (Path(data_dir) / folder).iterdir()
                       if p.is_file() and p.name.endswith(LOCAL_SUFFIXES[name] + (".parquet",)))
        if paths:
            return [(strip_suffix(p.name), p) for p in paths]
    repo, revision, filenames = HUB[name]
    instead = instead_of_download(data_dir, f"{folder}/*{LOCAL_SUFFIXES[name][0]}")
    return [(strip_suffix(f.replace("/", "_")), hub_dataset_file(repo, f, instead, revision=revision))
            for f in filenames]


def strip_suffix(filename):
    for suffix in (".jsonl.gz", ".jsonl", ".json", ".csv", ".parquet"):
        if filename.endswith(suffix):
            return filename[: -len(suffix)]
    return filename


# ---- reading: every format yields (where, row number, dict), `where` = "file:line" for error messages

def rows_of(name, path):
    if path.name.endswith(".parquet"):
        return read_parquet(path)
    if path.name.endswith((".jsonl", ".jsonl.gz")):
        return [(f"{path}:{line}", line, obj) for line, obj in read_jsonl(path)]
    if path.name.endswith(".json"):
        return read_json_list(path)
    if name == "amazon_polarity":
        return read_amazon_csv(path)
    columns = ["id", "context", "question", "answer0", "answer1", "answer2", "answer3", "label"]
    return [(f"{path}:{line}", line, row) for line, row in read_table(path, columns)]


def read_parquet(path):
    try:
        import pyarrow.parquet
    except ImportError:
        raise DataError(f"{path} is a parquet file, and reading parquet needs pyarrow: `pip install -e \".[burns]\"`, "
                        f"or pass --data-dir DIR with the task's files in their published format.") from None
    rows = pyarrow.parquet.read_table(path).to_pylist()
    return [(f"{path}: row {i}", i, row) for i, row in enumerate(rows, start=1)]


def read_json_list(path):
    """SciQ's published format: one JSON list of objects."""
    with open(path, encoding="utf-8") as f:
        try:
            items = json.load(f)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{e.lineno}: malformed JSON ({e.msg} at column {e.colno}).") from None
        except UnicodeDecodeError as e:
            raise not_utf8(path, 1, e) from None
    if not isinstance(items, list):
        raise DataError(f"{path}: expected a JSON list of objects, got {type(items).__name__}.")
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise DataError(f"{path}: item {i}: expected a JSON object, got {type(item).__name__}.")
    return [(f"{path}: item {i}", i, item) for i, item in enumerate(items)]


def read_amazon_csv(path):
    """Zhang et al.'s train.csv/test.csv (no header, label 1 = negative, 2 = positive) or, with a header
    label,title,content, the Hub's columns (label 0 = negative, 1 = positive)."""
    rows = []
    with open_text(path) as f:
        reader = csv.reader(f)
        labels, line = {"1": 0, "2": 1}, 1
        try:
            for fields in reader:
                if line == 1 and fields == ["label", "title", "content"]:
                    labels = {"0": 0, "1": 1}
                elif fields:
                    if len(fields) != 3:
                        raise DataError(f"{path}:{line}: {len(fields)} fields, expected 3 (label, title, content).")
                    if fields[0] not in labels:
                        raise DataError(f"{path}:{line}: unknown label {fields[0]!r}, expected one of {list(labels)}.")
                    rows.append((f"{path}:{line}", line, {"label": labels[fields[0]], "title": fields[1],
                                                          "content": fields[2]}))
                line = reader.line_num + 1
        except csv.Error as e:
            raise DataError(f"{path}:{line}: malformed row ({e}).") from None
        except UnicodeDecodeError as e:
            raise not_utf8(path, line, e) from None
    return rows


def text(row, key, where):
    """row[key] as a string, or a DataError naming the file and line."""
    if key not in row:
        raise DataError(f"{where}: missing {key!r}.")
    if not isinstance(row[key], str):
        raise DataError(f"{where}: {key!r} must be a string, got {type(row[key]).__name__}.")
    return row[key]


def digest(s):
    return hashlib.sha256(s.encode("utf-8")).hexdigest()[:16]


def pick(items, key):
    """One of items, chosen by hashing key: the same on every machine, and independent of the split seed."""
    return items[int(digest(key), 16) % len(items)]


# ---- converters: rows [(source, where, line, row)] of all files -> examples; rows that parse but cannot be
# an example go to dropped[reason]. No text is emitted twice: the loader would drop the repeat (or, when its
# labels differ, every copy), breaking the one-row-per-label pairs.

def anthropic_hh(rows, dropped):
    examples, seen = [], set()
    for source, where, line, row in rows:
        chosen, rejected = text(row, "chosen", where), text(row, "rejected", where)
        if not chosen.strip() or not rejected.strip():
            dropped.setdefault("an empty dialogue", []).append(where)
            continue
        if chosen == rejected:
            dropped.setdefault("identical chosen and rejected", []).append(where)
            continue
        last_turn = chosen.rfind("\n\nAssistant:")
        if last_turn < 0:
            raise DataError(f"{where}: 'chosen' has no '\\n\\nAssistant:' turn; is this an hh-rlhf preference file?")
        if chosen in seen or rejected in seen:
            continue  # a dialogue already in another pair: its label is relative to that pair
        seen |= {chosen, rejected}
        # several pairs can continue the same dialogue: group on it so they never straddle two splits
        group = f"anthropic_hh:{digest(chosen[:last_turn])}"
        examples.append({"id": f"{source}:{line}:chosen", "text": chosen, "label": 1, "group": group})
        examples.append({"id": f"{source}:{line}:rejected", "text": rejected, "label": 0, "group": group})
    return examples


def answer_pairs(candidates):
    """candidates: [(row_id, correct answer, [other answers])] of one question, which may come more than once
    (Cosmos QA asks some questions twice, with different answer sets). Returns [(row_id, correct, wrong)]:
    the wrong answer drawn by hashing row_id among the others that are correct in no set and not yet used."""
    correct_anywhere = {correct for _, correct, _ in candidates}
    pairs, used = [], set()
    for row_id, correct, others in candidates:
        wrong = [a for a in others if a.strip() and a not in correct_anywhere and a not in used]
        if correct in used or not wrong:
            continue
        pairs.append((row_id, correct, pick(wrong, row_id)))
        used |= {correct, pairs[-1][2]}
    return pairs


def cosmos_qa(rows, dropped):
    questions = {}  # (context, question) -> candidates for answer_pairs
    for source, where, line, row in rows:
        row_id, context, question = text(row, "id", where), text(row, "context", where), text(row, "question", where)
        answers = [text(row, f"answer{i}", where) for i in range(4)]
        if str(row.get("label")) not in ("0", "1", "2", "3"):
            raise DataError(f"{where}: label {row.get('label')!r} is not an answer index 0..3.")
        correct = answers[int(row["label"])]
        if not context.strip() or not question.strip() or not correct.strip():
            dropped.setdefault("an empty context, question or answer", []).append(where)
            continue
        # "None of the above choices ." means nothing once the other choices are not shown. Burns never shows
        # it as the correct answer; showing it only as a wrong one would make it a label shortcut, so it is
        # never shown: those questions (about 9%) are skipped and it is never drawn as the wrong answer.
        if NONE_OF_THE_ABOVE in correct:
            continue
        others = [a for a in answers if a != correct and NONE_OF_THE_ABOVE not in a]
        questions.setdefault((context, question), []).append((row_id, correct, others))
    examples = []
    for (context, question), candidates in questions.items():
        group = f"cosmos_qa:{digest(context)}"
        for row_id, correct, wrong in answer_pairs(candidates):
            for label, answer in ((1, correct), (0, wrong)):
                examples.append({"id": f"{row_id}:{LABEL_NAMES['cosmos_qa'][label]}", "label": label, "group": group,
                                 "text": f"Context: {context}\nQuestion: {question}\nAnswer: {answer}"})
    return examples


def sciq(rows, dropped):
    questions = {}  # question -> candidates for answer_pairs
    for source, where, line, row in rows:
        question, correct = text(row, "question", where), text(row, "correct_answer", where)
        distractors = [text(row, f"distractor{i}", where) for i in (1, 2, 3)]
        if not question.strip() or not correct.strip():
            dropped.setdefault("an empty question or answer", []).append(where)
            continue
        questions.setdefault(question, []).append((f"{source}:{line}", correct, distractors))
    examples = []
    for question, candidates in questions.items():
        for row_id, correct, wrong in answer_pairs(candidates):
            for label, answer in ((1, correct), (0, wrong)):
                examples.append({"id": f"{row_id}:{LABEL_NAMES['sciq'][label]}", "label": label,
                                 "group": f"sciq:{digest(question)}", "text": f"Q: {question} A: {answer}"})
    return examples


def boolq(rows, dropped):
    examples = []
    for source, where, line, row in rows:
        question, passage = text(row, "question", where), text(row, "passage", where)
        if not isinstance(row.get("answer"), bool):
            raise DataError(f"{where}: 'answer' must be true or false, got {row.get('answer')!r}.")
        if not question.strip() or not passage.strip():
            dropped.setdefault("an empty question or passage", []).append(where)
            continue
        examples.append({"id": f"{source}:{line}", "text": f"Passage: {passage}\nQuestion: {question}",
                         "label": int(row["answer"]), "group": f"boolq:{digest(passage)}"})
    return examples


def amazon_polarity(rows, dropped):
    examples = []
    for source, where, line, row in rows:
        title, content = text(row, "title", where), text(row, "content", where)
        if row.get("label") not in (0, 1) or isinstance(row.get("label"), bool):
            raise DataError(f"{where}: label {row.get('label')!r} is not 0 (negative) or 1 (positive).")
        if not f"{title}{content}".strip():
            dropped.setdefault("an empty review", []).append(where)
            continue
        examples.append({"id": f"{source}:{line}", "text": f"{title} {content}", "label": row["label"]})
    return examples


CONVERTERS = {"anthropic_hh": anthropic_hh, "cosmos_qa": cosmos_qa, "sciq": sciq, "boolq": boolq,
              "amazon_polarity": amazon_polarity}


def balance(name, examples, sources):
    """Equal label counts: keep the minority class, and as many majority rows, those of lowest id hash
    (deterministic and seed-free, so every seed splits the same examples). File order is kept."""
    by_label = [[ex for ex in examples if ex["label"] == label] for label in (0, 1)]
    n = min(len(members) for members in by_label)
    if n == 0:
        missing = LABEL_NAMES[name][0 if not by_label[0] else 1]
        raise DataError(f"{name}: no {missing!r} examples in {', '.join(str(p) for _, p in sources)}; "
                        f"cannot balance the classes.")
    keep = {ex["id"] for members in by_label for ex in sorted(members, key=lambda ex: digest(ex["id"]))[:n]}
    return [ex for ex in examples if ex["id"] in keep]
