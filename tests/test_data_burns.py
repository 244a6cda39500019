import csv
import gzip
import hashlib
import json
import sys
from collections import Counter

import pytest

import data.burns as burns
from core import cli, hub
from data import DataError, load_task

HH_SHA256 = "ebfaaed21162a4de120ae85366075b34425e2a6303fac59b99555002f7016f03"
COSMOS_SHA256 = "a6a94fc1463ca82bb10f98ef68ed535405e6f5c36e044ff8e136b5c19dea63f3"


def label_counts(examples):
    return dict(Counter(ex["label"] for ex in examples))


def assert_every_group_has_one_row_per_label_pair(examples):
    by_group = {}
    for ex in examples:
        by_group.setdefault(ex["group"], []).append(ex["label"])
    for group, labels in by_group.items():
        assert labels.count(0) == labels.count(1), group


def hashed_pick(items, key):
    """The documented draw: sha256 of the row id, first 16 hex digits, modulo the number of choices."""
    return items[int(hashlib.sha256(key.encode()).hexdigest()[:16], 16) % len(items)]


def write(path, content):
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.name.endswith(".gz"):
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def jsonl(objects):
    return "".join(json.dumps(obj) + "\n" for obj in objects)


def hh_pair(i):
    prompt = f"\n\nHuman: question {i}?"
    return {"chosen": f"{prompt}\n\nAssistant: helpful answer {i}", "rejected": f"{prompt}\n\nAssistant: rude answer {i}"}


# ---- real samples (shared data)

def test_anthropic_hh_real_pairs_become_chosen_1_and_rejected_0_in_one_group(shared_data):
    source = burns.read("anthropic_hh", shared_data)
    path = shared_data / "nlp" / "anthropic_hh" / "harmless-base_test.jsonl.gz"
    with gzip.open(path, "rt", encoding="utf-8") as f:
        raw = [json.loads(line) for line in f]
    examples = source["examples"]
    assert source["files"] == [{"path": str(path), "sha256": HH_SHA256}]
    assert source["label_names"] == ["rejected", "chosen"]
    assert len(raw) == 2312 and len(examples) == 2 * 2312
    assert label_counts(examples) == {1: 2312, 0: 2312}
    # Burns's text is the whole dialogue, unchanged
    assert examples[0] == {"id": "harmless-base_test:1:chosen", "text": raw[0]["chosen"], "label": 1,
                           "group": examples[1]["group"]}
    assert examples[1]["id"] == "harmless-base_test:1:rejected" and examples[1]["text"] == raw[0]["rejected"]
    assert_every_group_has_one_row_per_label_pair(examples)
    # two dialogues of this file are continued by two pairs each: their 4 rows share one group
    assert len({ex["group"] for ex in examples}) == 2310


def test_cosmos_qa_real_dev_split_gives_the_correct_and_one_wrong_answer_per_question(shared_data):
    source = burns.read("cosmos_qa", shared_data)
    path = shared_data / "nlp" / "cosmosqa" / "valid.csv"
    with open(path, newline="", encoding="utf-8") as f:
        rows = {row["id"]: row for row in csv.DictReader(f)}
    examples = source["examples"]
    assert source["files"] == [{"path": str(path), "sha256": COSMOS_SHA256}]
    assert len(rows) == 2985
    # 259 questions whose answer is "None of the above choices ." are left out; every other one gives 2 rows
    assert len(examples) == 2 * (2985 - 259) and label_counts(examples) == {1: 2726, 0: 2726}
    assert not any("None of the above choices" in ex["text"] for ex in examples)
    assert_every_group_has_one_row_per_label_pair(examples)
    for ex in examples[:400]:
        row_id, kind = ex["id"].rsplit(":", 1)
        row = rows[row_id]
        answers = [row[f"answer{i}"] for i in range(4)]
        prefix = f"Context: {row['context']}\nQuestion: {row['question']}\nAnswer: "
        assert ex["text"].startswith(prefix)
        answer = ex["text"][len(prefix):]
        if kind == "correct":
            assert ex["label"] == 1 and answer == answers[int(row["label"])]
        else:
            assert ex["label"] == 0 and answer in answers and answer != answers[int(row["label"])]
    assert burns.read("cosmos_qa", shared_data) == source  # no seed, no randomness


@pytest.mark.parametrize("name", ["anthropic_hh", "cosmos_qa"])
def test_load_task_keeps_each_group_in_one_split_balanced_and_is_deterministic_by_seed(shared_data, name):
    task = load_task(name, data_dir=shared_data, seed=0)
    split_of_group = {}
    for split, examples in task.splits.items():
        counts = label_counts(examples)
        assert counts[0] == counts[1], (split, counts)  # whole balanced groups in, so every split is balanced
        for ex in examples:
            assert split_of_group.setdefault(ex["group"], split) == split, ex["id"]
    assert task.dropped == {"repeated_text": 0, "conflicting_labels": 0}
    assert load_task(name, data_dir=shared_data, seed=0).summary() == task.summary()
    assert load_task(name, data_dir=shared_data, seed=1).summary()["splits"] != task.summary()["splits"]


# ---- published formats, written here

SCIQ = [
    {"question": "What gas do plants absorb?", "distractor1": "oxygen", "distractor2": "helium",
     "distractor3": "neon", "correct_answer": "carbon dioxide", "support": "Plants absorb CO2."},
    {"question": "What is the unit of force?", "distractor1": "joule", "distractor2": "watt",
     "distractor3": "pascal", "correct_answer": "newton", "support": ""},
    # the first question again (SciQ and Cosmos QA repeat some): no text may be emitted twice
    {"question": "What gas do plants absorb?", "distractor1": "oxygen", "distractor2": "argon",
     "distractor3": "neon", "correct_answer": "carbon dioxide", "support": ""},
]


def test_sciq_gives_q_a_rows_with_the_correct_answer_and_a_hashed_distractor(tmp_path):
    write(tmp_path / "nlp" / "sciq" / "test.json", json.dumps(SCIQ))
    examples = burns.read("sciq", tmp_path)["examples"]
    assert [ex["id"] for ex in examples] == ["test:0:correct", "test:0:incorrect", "test:1:correct", "test:1:incorrect"]
    assert examples[0]["text"] == "Q: What gas do plants absorb? A: carbon dioxide" and examples[0]["label"] == 1
    assert examples[1]["text"] == f"Q: What gas do plants absorb? A: {hashed_pick(['oxygen', 'helium', 'neon'], 'test:0')}"
    assert examples[3]["text"] == f"Q: What is the unit of force? A: {hashed_pick(['joule', 'watt', 'pascal'], 'test:1')}"
    assert [ex["label"] for ex in examples] == [1, 0, 1, 0]
    assert examples[0]["group"] == examples[1]["group"] != examples[2]["group"]


BOOLQ = [{"question": f"is {i} even", "title": "Parity", "answer": i % 4 != 0, "passage": f"Passage about {i}."}
         for i in range(8)]  # 6 true, 2 false


def test_boolq_is_balanced_by_dropping_true_rows_by_id_hash(tmp_path):
    write(tmp_path / "nlp" / "boolq" / "dev.jsonl", jsonl(BOOLQ))
    examples = burns.read("boolq", tmp_path)["examples"]
    assert label_counts(examples) == {0: 2, 1: 2}
    true_ids = [f"dev:{line}" for line in range(1, 9) if (line - 1) % 4 != 0]
    kept = sorted(true_ids, key=lambda i: hashlib.sha256(i.encode()).hexdigest()[:16])[:2]
    assert sorted(ex["id"] for ex in examples) == sorted(kept + ["dev:1", "dev:5"])
    first = next(ex for ex in examples if ex["id"] == "dev:1")
    assert first["text"] == "Passage: Passage about 0.\nQuestion: is 0 even" and first["label"] == 0


def test_amazon_polarity_reads_the_original_csv_and_the_hubs_columns(tmp_path):
    # original: no header, 1 = negative, 2 = positive, fields quoted with "" escapes
    write(tmp_path / "nlp" / "amazon_polarity" / "test.csv",
          '"2","Great","Works, really ""well"""\n"1","Bad","Broke in a day"\n"2","Fine","ok"\n')
    examples = burns.read("amazon_polarity", tmp_path)["examples"]
    assert label_counts(examples) == {0: 1, 1: 1}
    assert {"id": "test:2", "text": "Bad Broke in a day", "label": 0} in examples
    write(tmp_path / "hub" / "nlp" / "amazon_polarity" / "x.csv", "label,title,content\n1,Great,Works\n0,Bad,Broke\n")
    examples = burns.read("amazon_polarity", tmp_path / "hub")["examples"]
    assert examples == [{"id": "x:2", "text": "Great Works", "label": 1}, {"id": "x:3", "text": "Bad Broke", "label": 0}]


BAD_FILES = [
    ("anthropic_hh", "anthropic_hh/x.jsonl.gz", jsonl([hh_pair(0), {"chosen": "\n\nHuman: hi\n\nAssistant: yo"}]),
     r"x\.jsonl\.gz:2: missing 'rejected'"),
    ("anthropic_hh", "anthropic_hh/x.jsonl.gz", jsonl([hh_pair(0)]) + "{not json\n", r"x\.jsonl\.gz:2: malformed JSON"),
    ("anthropic_hh", "anthropic_hh/x.jsonl.gz", jsonl([{"chosen": "Human: a", "rejected": "Human: b"}]),
     r"x\.jsonl\.gz:1: 'chosen' has no '\\n\\nAssistant:' turn"),
    ("cosmos_qa", "cosmosqa/valid.csv", "id,context,question,answer0,answer1,answer2,answer3,label\n"
     "a,c,q,w,x,y,z,1\nb,c,q2,w,x,y,z,4\n", r"valid\.csv:3: label '4' is not an answer index"),
    ("cosmos_qa", "cosmosqa/valid.csv", "id,context,question,answer0,answer1,answer2,label\n",
     r"valid\.csv:1: missing column\(s\) \['answer3'\]"),
    ("sciq", "sciq/test.json", json.dumps(SCIQ[0]), r"test\.json: expected a JSON list of objects, got dict"),
    ("sciq", "sciq/test.json", "[\n" + json.dumps(SCIQ[0]) + ",\n{oops}\n]", r"test\.json:3: malformed JSON"),
    ("sciq", "sciq/test.json", json.dumps([{k: v for k, v in SCIQ[0].items() if k != "distractor2"}]),
     r"test\.json: item 0: missing 'distractor2'"),
    ("boolq", "boolq/dev.jsonl", jsonl([BOOLQ[0], dict(BOOLQ[1], answer="yes")]),
     r"dev\.jsonl:2: 'answer' must be true or false, got 'yes'"),
    ("boolq", "boolq/dev.jsonl", jsonl([BOOLQ[1], BOOLQ[2]]), r"boolq: no 'false' examples in .*dev\.jsonl"),
    ("amazon_polarity", "amazon_polarity/train.csv", '"2","a","b"\n"3","c","d"\n',
     r"train\.csv:2: unknown label '3', expected one of \['1', '2'\]"),
    ("amazon_polarity", "amazon_polarity/train.csv", '"2","a","b","extra"\n', r"train\.csv:1: 4 fields, expected 3"),
]


@pytest.mark.parametrize("name,relative,content,message", BAD_FILES, ids=[m for *_, m in BAD_FILES])
def test_bad_file_raises_data_error_naming_file_and_line(tmp_path, name, relative, content, message):
    write(tmp_path / "nlp" / relative, content)
    with pytest.raises(DataError, match=message):
        burns.read(name, tmp_path)


# ---- the Hub

def fake_hub(monkeypatch, root):
    """hub.hub_file serving files from `root`, laid out like the Hub repo; records each call."""
    calls = []

    def hub_file(repo_id, filename, revision=None, repo_type="model", instead=""):
        calls.append((repo_id, filename, revision, repo_type))
        return root / filename
    monkeypatch.setattr(hub, "hub_file", hub_file)
    return calls


def test_anthropic_hh_downloads_its_default_config_from_the_pinned_hub_revision(tmp_path, monkeypatch):
    repo, revision, filenames = burns.HUB["anthropic_hh"]
    for i, filename in enumerate(filenames):
        write(tmp_path / "hub" / filename, jsonl([hh_pair(i)]))
    calls = fake_hub(monkeypatch, tmp_path / "hub")
    (tmp_path / "data" / "nlp" / "anthropic_hh").mkdir(parents=True)  # an empty local folder: the Hub is used
    source = burns.read("anthropic_hh", tmp_path / "data")
    assert calls == [("Anthropic/hh-rlhf", f, revision, "dataset") for f in filenames]
    assert len(revision) == 40 and len(filenames) == 8 and "harmless-base/train.jsonl.gz" in filenames
    assert source["examples"][0]["id"] == "harmless-base_train:1:chosen"  # the name a local copy would have
    assert label_counts(source["examples"]) == {1: 8, 0: 8}
    assert [record["path"] for record in source["files"]] == [str(tmp_path / "hub" / f) for f in filenames]


def test_a_hub_task_without_network_says_what_to_pass_instead(tmp_path):
    # conftest sets HF_HUB_OFFLINE=1, and the file is not in the Hugging Face cache
    with pytest.raises(hub.OfflineError, match=r"google/boolq.*pass --data-dir DIR with DIR/nlp/boolq/\*\.jsonl"):
        burns.read("boolq", tmp_path)


def test_hub_parquet_without_pyarrow_says_to_install_it_or_pass_data_dir(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)  # `import pyarrow.parquet` now fails as if absent
    write(tmp_path / "data" / "train-00000-of-00001.parquet", "PAR1")
    fake_hub(monkeypatch, tmp_path)
    with pytest.raises(DataError, match=r"train-00000-of-00001\.parquet is a parquet file.*"
                                        r"`pip install -e \"\.\[burns\]\"`, or pass --data-dir") as e:
        burns.read("sciq", None)
    assert cli.error_line(e.value) == str(e.value)  # an expected error: one line, and w2s --task burns goes on


def test_hub_parquet_gives_the_same_examples_as_the_published_format(tmp_path, monkeypatch):
    import pyarrow
    import pyarrow.parquet
    for filename in burns.HUB["boolq"][2]:
        table = pyarrow.table({key: [row[key] for row in BOOLQ] for key in ("question", "answer", "passage")})
        (tmp_path / "hub" / filename).parent.mkdir(parents=True, exist_ok=True)
        pyarrow.parquet.write_table(table, tmp_path / "hub" / filename)
    fake_hub(monkeypatch, tmp_path / "hub")
    from_hub = burns.read("boolq", None)["examples"]
    write(tmp_path / "nlp" / "boolq" / "data_train-00000-of-00001.jsonl", jsonl(BOOLQ))
    write(tmp_path / "nlp" / "boolq" / "data_validation-00000-of-00001.jsonl", jsonl(BOOLQ))
    assert from_hub == burns.read("boolq", tmp_path)["examples"]


def test_every_hub_task_is_pinned_and_cosmos_qa_reads_the_hubs_parquet_conversion(tmp_path, monkeypatch, shared_data):
    assert all(len(revision) == 40 and int(revision, 16) >= 0 for _, revision, _ in burns.HUB.values())
    # cosmos_qa's main branch is a loading script: its rows come from refs/convert/parquet, <config>/<split>/0000
    import pyarrow
    import pyarrow.parquet
    local = tmp_path / "local" / "nlp" / "cosmosqa"
    local.mkdir(parents=True)
    with open(shared_data / "nlp" / "cosmosqa" / "valid.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))[:40]
    for row in rows:
        row["label"] = int(row["label"])
    repo, revision, filenames = burns.HUB["cosmos_qa"]
    assert filenames == ["default/train/0000.parquet", "default/validation/0000.parquet"]
    for filename in filenames:
        (tmp_path / "hub" / filename).parent.mkdir(parents=True, exist_ok=True)
        pyarrow.parquet.write_table(pyarrow.Table.from_pylist(rows), tmp_path / "hub" / filename)
        with open(local / (filename.replace("/", "_")[:-len(".parquet")] + ".csv"), "w", newline="",
                  encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    calls = fake_hub(monkeypatch, tmp_path / "hub")
    from_hub = burns.read("cosmos_qa", None)
    assert calls == [(repo, f, revision, "dataset") for f in filenames]
    assert from_hub["examples"] == burns.read("cosmos_qa", tmp_path / "local")["examples"]
    counts = label_counts(from_hub["examples"])
    assert counts[0] == counts[1] > 20  # per question: the correct and one wrong answer
