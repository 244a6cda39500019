import csv
import hashlib
import http.server
import shutil
import threading
import urllib.error
import warnings
from collections import Counter

import pytest
from huggingface_hub.errors import LocalEntryNotFoundError

import data
import data.legal
import data.safety
from core import hub
from core.hub import OfflineError
from data import DataError, load_task


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    """Every test downloads into its own empty cache, and no test may reach the internet."""
    path = tmp_path / "cache"
    monkeypatch.setenv("W2S_CACHE", str(path))
    return path


def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise urllib.error.URLError("network disabled in tests")
    monkeypatch.setattr("urllib.request.urlopen", refuse)


def cached_files(cache):
    return sorted(p.name for p in cache.rglob("*") if p.is_file())


def load_quietly(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_task(*args, **kwargs)


def unsafe_fraction(examples):
    return sum(ex["label"] for ex in examples) / len(examples)


def write_safety(tmp_path, text):
    (tmp_path / "safety").mkdir(exist_ok=True)
    path = tmp_path / "safety" / "safety.csv"
    path.write_text(text, encoding="utf-8")
    return path


def write_legal_test(tmp_path, n=200):
    """A LegalBench-format test.tsv (index question text answer), 3 in 10 rows Relevant; one clause holds a tab
    and quotes, which LegalBench's TSV quotes as CSV does."""
    (tmp_path / "legal").mkdir(exist_ok=True)
    path = tmp_path / "legal" / "test.tsv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        writer.writerow(["index", "question", "text", "answer"])
        for i in range(n):
            clause = f'We keep "log data"\tfor {i} days.' if i == 0 else f"Clause {i} about data retention."
            writer.writerow([i, f"how long is my data kept? ({i % 7})", clause, "Relevant" if i % 10 < 3 else "Irrelevant"])
    return path


def test_safety_loads_paper_csv_with_expected_counts_and_label_balance(shared_data):
    with pytest.warns(UserWarning) as record:
        task = load_task("safety", shared_data)
    messages = " ".join(str(w.message) for w in record)
    # the paper's file: 11,468 rows; one empty prompt (line 11853); 298 repeats of a same-label text; 256 rows of
    # 120 texts that appear with both labels
    assert "1 with empty prompt (e.g. safety.csv:11853)" in messages
    assert "298 repeated texts" in messages and "256 examples whose text appears with different labels" in messages
    assert task.kind == "classification" and task.label_names == ["safe", "unsafe"]
    everything = [ex for examples in task.splits.values() for ex in examples]
    assert len(everything) == 11468 - 1 - 298 - 256 == 10913
    assert Counter(ex["label"] for ex in everything) == {1: 6301, 0: 4612}  # 1 = unsafe (is_safe False)
    assert task.files == [{"path": str(shared_data / "safety" / "safety.csv"), "sha256": data.safety.SHA256}]
    sizes = {name: len(examples) for name, examples in task.splits.items()}
    assert sizes == {"weak_train": 4115, "w2s_train": 4115, "val": 500, "test": 2183}


def test_safety_splits_are_disjoint_stratified_and_deterministic(shared_data):
    task = load_quietly("safety", shared_data, seed=0)
    ids = [ex["id"] for examples in task.splits.values() for ex in examples]
    texts = [ex["text"] for examples in task.splits.values() for ex in examples]
    assert len(set(ids)) == len(ids) and len(set(texts)) == len(texts)
    overall = unsafe_fraction([ex for examples in task.splits.values() for ex in examples])
    for name, examples in task.splits.items():
        assert abs(unsafe_fraction(examples) - overall) < 0.005, name
    again = load_quietly("safety", shared_data, seed=0)
    assert again.summary() == task.summary()
    other = load_quietly("safety", shared_data, seed=1).summary()["splits"]
    for name, split in task.summary()["splits"].items():
        assert split["size"] == other[name]["size"] and split["ids_sha256"] != other[name]["ids_sha256"], name


def test_limit_caps_every_split_keeping_stratification_and_membership(shared_data):
    full = load_quietly("safety", shared_data, seed=0)
    small = load_quietly("safety", shared_data, seed=0, limit=200)
    overall = unsafe_fraction(full.splits["test"])
    for name, examples in small.splits.items():
        assert len(examples) == 200, name
        assert abs(unsafe_fraction(examples) - overall) < 0.01, name
        assert {ex["id"] for ex in examples} <= {ex["id"] for ex in full.splits[name]}, name
    assert small.summary()["limit"] == 200
    assert load_quietly("safety", shared_data, seed=0, limit=200).summary() == small.summary()


def test_toxicity_loads_rtp_rows_and_keeps_only_nontoxic_rows_for_training(shared_data):
    with pytest.warns(UserWarning) as record:
        task = load_task("toxicity", shared_data)
    messages = " ".join(str(w.message) for w in record)
    assert "19 with null toxicity" in messages and "4 repeated texts" in messages
    assert task.kind == "generation" and task.label_names == ["nontoxic_prompt", "toxic_prompt"]
    assert [f["sha256"][:8] for f in task.files] == ["feb50408", "a51d4650"]  # nontoxic.jsonl, toxic.jsonl
    sizes = {name: len(examples) for name, examples in task.splits.items()}
    assert sizes == {"weak_train": 274, "w2s_train": 273, "val": 61, "test": 475}
    test = task.splits["test"]
    assert Counter(ex["label"] for ex in test) == {0: 278, 1: 197}
    assert all(ex["label"] == int(ex["prompt_toxicity"] >= 0.5) for ex in test)
    for name in ("weak_train", "w2s_train", "val"):
        for ex in task.splits[name]:
            assert ex["prompt_toxicity"] < 0.5 and ex["continuation_toxicity"] < 0.5 and ex["label"] == 0
            assert ex["text"] == ex["prompt"] + ex["continuation"]
    texts = [ex["text"] for examples in task.splits.values() for ex in examples]
    assert len(set(texts)) == len(texts)


def test_legal_loads_legalbench_tsv_with_the_papers_input_template(shared_data, tmp_path):
    write_legal_test(tmp_path)
    shutil.copy(shared_data / "legal" / "train.tsv", tmp_path / "legal" / "train.tsv")
    task = load_quietly("legal", tmp_path)
    everything = [ex for examples in task.splits.values() for ex in examples]
    assert len(everything) == 200 + 8
    assert Counter(ex["label"] for ex in everything) == {1: 60 + 4, 0: 140 + 4}  # 1 = Relevant
    by_id = {ex["id"]: ex for ex in everything}
    assert by_id["legal-test-0"]["text"] == (
        "Given a question and a clause from a privacy policy, determine if the clause contains enough information "
        "to answer the question.Classify if the clause is relevant to answering the question.Question: how long is "
        'my data kept? (0) [SEP] Clause: We keep "log data"\tfor 0 days.')
    assert by_id["legal-train-3"]["text"].endswith('third party apps that connect to our website and mobile apps '
                                                   'through our application programming interface ("API").')
    assert [f["path"].split("/")[-1] for f in task.files] == ["test.tsv", "train.tsv"]


def test_legal_without_test_tsv_names_the_file_and_flag_instead_of_running_on_8_rows(shared_data, cache, tmp_path):
    (tmp_path / "legal").mkdir()  # LegalBench's 8 train rows only, no PolicyQA beside them
    shutil.copy(shared_data / "legal" / "train.tsv", tmp_path / "legal" / "train.tsv")
    with pytest.raises(OfflineError) as e:
        load_task("legal", tmp_path)
    assert "legal/test.tsv" in str(e.value) and "--data-dir" in str(e.value) and str(tmp_path) in str(e.value)
    assert "DIR/legal/policyqa/" in str(e.value)
    assert cached_files(cache) == []


def test_legal_finds_the_test_tsv_in_the_hub_listing_and_downloads_it_as_a_dataset(tmp_path, monkeypatch):
    stand_in = write_legal_test(tmp_path, n=50)
    listing = ["README.md", "data/privacy_policy_qa/train.tsv", "data/privacy_policy_qa/test.tsv", "data/abc/test.tsv"]
    monkeypatch.setattr(hub, "_unreachable", False)  # as if the Hub answered
    monkeypatch.setattr("core.hub.list_repo_files", lambda repo, repo_type, revision: listing)
    calls = []

    def download(repo_id, filename, revision=None, repo_type=None, local_files_only=False):
        calls.append((repo_id, filename, repo_type))
        return str(stand_in)
    monkeypatch.setattr("core.hub.hf_hub_download", download)
    task = load_quietly("legal")
    assert calls == [("nguha/legalbench", "data/privacy_policy_qa/test.tsv", "dataset")]
    assert sum(len(examples) for examples in task.splits.values()) == 50
    monkeypatch.setattr("core.hub.list_repo_files",
                        lambda repo, repo_type, revision: ["privacy_policy_qa/test-00000-of-00001.parquet"])
    with pytest.raises(DataError, match=r"no privacy_policy_qa test TSV .*parquet.*legal/test.tsv"):
        load_task("legal")


def test_after_one_unreachable_hub_call_later_files_come_from_the_cache_only(monkeypatch):
    monkeypatch.setattr(hub, "_unreachable", False)
    tries = []

    def unreachable(repo_id, filename, revision=None, repo_type=None, local_files_only=False):
        tries.append(local_files_only)
        raise LocalEntryNotFoundError("cannot reach the Hub")
    monkeypatch.setattr("core.hub.hf_hub_download", unreachable)
    for name in ("a.parquet", "b.parquet"):
        with pytest.raises(OfflineError, match=f"dataset 'x/y' file '{name}' .*pass --data-dir D instead"):
            hub.hub_file("x/y", name, repo_type="dataset", instead="--data-dir D")
    assert tries == [False, True]  # the second file did not wait for connection retries


def test_toxicity_offline_names_the_file_and_flag(tmp_path):
    with pytest.raises(OfflineError, match=r"allenai/real-toxicity-prompts.*--data-dir DIR with DIR/toxicity/prompts.jsonl"):
        load_task("toxicity", tmp_path)


def test_safety_download_is_cached_and_a_wrong_sha256_is_refused(tmp_path, monkeypatch, cache):
    body = "prompt,is_safe\n" + "".join(f"prompt number {i},{i % 3 == 0}\n" for i in range(60))
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "safety.csv").write_text(body)
    requests = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(tmp_path / "site"), **kwargs)

        def log_message(self, *args):
            requests.append(self.path)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setattr(data.safety, "URL", f"http://127.0.0.1:{server.server_port}/safety.csv")
        monkeypatch.setattr(data.safety, "SHA256", hashlib.sha256(body.encode()).hexdigest())
        first = load_quietly("safety")
        second = load_quietly("safety")
        assert requests == ["/safety.csv"]  # the second load came from the cache
        assert first.summary() == second.summary()
        assert first.files[0]["path"] == str(cache / "safety" / "safety.csv")
        assert sum(len(examples) for examples in first.splits.values()) == 60
        (cache / "safety" / "safety.csv").write_text("prompt,is_safe\ntampered,True\n")
        assert load_quietly("safety").summary() == first.summary()  # a cache entry with the wrong hash is fetched again
        assert requests == ["/safety.csv", "/safety.csv"]

        monkeypatch.setattr(data.safety, "SHA256", "0" * 64)
        with pytest.raises(DataError, match=r"safety.csv downloaded with sha256 [0-9a-f]{64}, expected 0{64}: refused"):
            load_task("safety")
        assert cached_files(cache) == []
    finally:
        server.shutdown()
        server.server_close()


def test_safety_missing_file_offline_names_the_file_and_flag(tmp_path, monkeypatch, cache):
    no_network(monkeypatch)
    with pytest.raises(OfflineError, match=r"cannot download https://raw.githubusercontent.com/yeruimeng/WTS/.*--data-dir DIR "
                                           r"with DIR/safety/safety.csv \(not found under .*\) instead"):
        load_task("safety", tmp_path)
    assert cached_files(cache) == []


@pytest.mark.parametrize("text, message", [
    ("prompt,safe\nhi,True\n", r"safety.csv:1: missing column\(s\) \['is_safe'\]"),
    ('prompt,is_safe\n"two\nlines",True\nok,maybe\n', r"safety.csv:4: unknown is_safe value 'maybe'"),
    ("prompt,is_safe\na,True\nb,False,extra\n", r"safety.csv:3: 3 fields, expected 2"),
    ("", r"safety.csv:1: empty file"),
])
def test_bad_safety_csv_is_refused_naming_file_and_line(tmp_path, monkeypatch, cache, text, message):
    no_network(monkeypatch)
    path = write_safety(tmp_path, text)
    with pytest.raises(DataError, match=message) as e:
        load_task("safety", tmp_path)
    assert str(path) in str(e.value)
    assert cached_files(cache) == []


def test_empty_prompt_is_dropped_with_its_line_and_an_empty_split_is_refused(tmp_path):
    write_safety(tmp_path, 'prompt,is_safe\n"multi\nline",True\n  ,False\nfine,False\n')
    with pytest.warns(UserWarning, match=r"safety: dropped 1 rows: 1 with empty prompt \(e.g. safety.csv:4\)"):
        with pytest.raises(DataError, match=r"task 'safety': split 'val' is empty after splitting 2 examples"):
            load_task("safety", tmp_path)


def test_bad_legal_tsv_is_refused_naming_file_and_line(tmp_path):
    path = write_legal_test(tmp_path, n=5)
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:4] + [lines[4].replace("Irrelevant", "Unclear")] + lines[5:]) + "\n")
    with pytest.raises(DataError, match=r"test.tsv:5: unknown answer value 'Unclear', expected one of \['Irrelevant', 'Relevant'\]"):
        load_task("legal", tmp_path)
    path.write_text("index\tquestion\tanswer\n0\tq\tRelevant\n")
    with pytest.raises(DataError, match=r"test.tsv:1: missing column\(s\) \['text'\]"):
        load_task("legal", tmp_path)


@pytest.mark.parametrize("lines, message", [
    (['{"prompt": {"text": "a", "toxicity": 0.1}, "continuation": {"text": "b", "toxicity": 0.2}}', '{"prompt": '],
     r"rtp.jsonl:2: malformed JSON"),
    (['{"prompt": {"text": "a", "toxicity": 0.1}, "continuation": {"text": "b"}}'],
     r"rtp.jsonl:1: missing key 'continuation.toxicity'"),
    (['', '{"prompt": {"text": "a", "toxicity": "high"}, "continuation": {"text": "b", "toxicity": 0.2}}'],
     r"rtp.jsonl:2: toxicity scores must be numbers or null"),
])
def test_bad_toxicity_jsonl_is_refused_naming_file_and_line(tmp_path, lines, message):
    (tmp_path / "toxicity").mkdir()
    (tmp_path / "toxicity" / "rtp.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=message):
        load_task("toxicity", tmp_path)


def test_unknown_task_lists_known_tasks():
    with pytest.raises(ValueError, match=r"unknown task 'safty'; known tasks: safety, legal, toxicity, anthropic_hh"):
        load_task("safty")


def test_duplicate_ids_and_out_of_range_labels_are_refused_by_validation():
    examples = [{"id": "a", "text": "x", "label": 0}, {"id": "a", "text": "y", "label": 1}]
    with pytest.raises(DataError, match=r"task 'demo', example 'a': missing or duplicated id"):
        data.validate("demo", examples, ["no", "yes"])
    with pytest.raises(DataError, match=r"example 'b': label 2 is not in 0..1"):
        data.validate("demo", [{"id": "b", "text": "x", "label": 2}], ["no", "yes"])


def test_grouped_examples_stay_in_one_split_and_splits_stay_stratified():
    # 400 multiple-choice questions, 4 rows each (one correct), as a multiple-choice conversion produces
    examples = [{"id": f"q{q}-{c}", "text": f"question {q} choice {c}", "label": int(c == q % 4), "group": f"q{q}"}
                for q in range(400) for c in range(4)]
    splits = data.split(examples, seed=0)
    group_split = {}
    for name, members in splits.items():
        for ex in members:
            assert group_split.setdefault(ex["group"], name) == name
        assert unsafe_fraction(members) == 0.25, name
    assert {name: len(members) for name, members in splits.items()} == {
        "weak_train": 4 * 144, "w2s_train": 4 * 144, "val": 4 * 32, "test": 4 * 80}
    limited = data.take_stratified(splits["test"], 50, __import__("numpy").random.default_rng(0))
    assert len(limited) == 48 and len({ex["group"] for ex in limited}) == 12
