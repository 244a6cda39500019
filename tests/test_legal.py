"""legal from PolicyQA (data/policyqa.py): which rows are Relevant / Irrelevant on small SQuAD-format files with a known
answer, the real files' counts, balance and disjoint policies, the source chosen and recorded, and bad input."""
import json
import shutil
import subprocess
import sys
import warnings
from collections import Counter

import pytest

import data.policyqa as policyqa
from conftest import ROOT
from data import DataError, load_task
from data.legal import build_text
from run import rundir

FPC, TPS, RET = "First Party Collection/Use", "Third Party Sharing/Collection", "Data Retention"


def qa(qid, question, category, *answers):
    return {"question": question, "id": qid, "type": f"{category}|||Attr|||Value",
            "answers": [{"text": a, "answer_start": 0} for a in answers]}


def write_policyqa(root, policies, files=("dev.json", "test.json")):
    """policies: [(title, [(context, [qa...])])], dealt over the files in turn (SQuAD v1 layout, as PolicyQA's)."""
    folder = root / "legal" / "policyqa"
    folder.mkdir(parents=True, exist_ok=True)
    for k, name in enumerate(files):
        chosen = policies[k::len(files)]
        doc = {"version": "v1.0", "data": [
            {"title": title, "paragraphs": [{"context": c, "index": i, "summary": [], "qas": qas}
                                            for i, (c, qas) in enumerate(segments)]} for title, segments in chosen]}
        (folder / name).write_text(json.dumps(doc), encoding="utf-8")
    return root


# a.com: the known answer. q1 (collection) is answered in s0; s1 answers another collection question (same category),
# s2 quotes q1's answer "email address" word for word, s3 answers only a sharing question: s3 is q1's one partner.
# q2 (sharing) is answered in s3; s0, s1 and s2 answer nothing of sharing and do not quote "advertisers".
# q1 is also asked of s0 a second time (another attribute): still one Relevant row.
SMALL = [("a.com", [
    ("We collect your email address.", [qa("q1", "What do you collect?", FPC, "email address"),
                                        qa("q1b", "What do you collect?", FPC, "email")]),
    ("We collect your device id.", [qa("q3", "Do you collect device data?", FPC, "device id")]),
    ("Your email address is never sold.", []),
    ("We share data with advertisers.", [qa("q2", "Who gets my data?", TPS, "advertisers")])]),
    # b.com: its one question has no other segment that answers no retention question: no partner, dropped
    ("b.com", [("We keep logs for 30 days.", [qa("r1", "How long are logs kept?", RET, "30 days")]),
               ("Logs are deleted after a year.", [qa("r2", "When are logs deleted?", RET, "a year")])])]


def read_quietly(root):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return policyqa.read("legal", root)


def test_reader_pairs_each_answer_segment_with_the_one_same_policy_segment_that_answers_nothing_of_its_category(tmp_path):
    write_policyqa(tmp_path, SMALL)
    with pytest.warns(UserWarning, match=r"legal: dropped 2 rows: 2 with a question no other segment"):
        source = policyqa.read("legal", tmp_path)
    rows = {ex["id"]: (ex["text"], ex["label"], ex["group"]) for ex in source["examples"]}
    segments = dict(SMALL[0][1])
    q1_rel, q1_irr = "We collect your email address.", "We share data with advertisers."
    assert rows["policyqa-q1"] == (build_text("What do you collect?", q1_rel), 1, "a.com")
    assert rows["policyqa-q1-irrelevant"] == (build_text("What do you collect?", q1_irr), 0, "a.com")
    assert rows["policyqa-q2"][1] == 1 and rows["policyqa-q2-irrelevant"][1] == 0
    # q2's partner: one of the three segments without a sharing answer, chosen by hash, the same on every read
    partner = rows["policyqa-q2-irrelevant"][0].split(" [SEP] Clause: ")[1]
    assert partner in set(segments) - {q1_irr} and read_quietly(tmp_path)["examples"] == source["examples"]
    # q3's only candidates are s2 and s3 (s0 answers a collection question)
    assert rows["policyqa-q3-irrelevant"][0].split(" [SEP] Clause: ")[1] in {"Your email address is never sold.", q1_irr}
    assert set(rows) == {f"policyqa-{q}{s}" for q in ("q1", "q2", "q3") for s in ("", "-irrelevant")}  # q1b, b.com: none
    assert source["source"] | {"label_counts": None} == {
        "name": "policyqa", "dataset": "PolicyQA (Ahmad et al. 2020), OPP-115 privacy policies", "rows": 6,
        "label_counts": None, "policies": 1, "group": "policies", "relevant_without_partner": 2}
    assert source["source"]["label_counts"] == {"irrelevant": 3, "relevant": 3}
    assert [f["path"].split("/")[-1] for f in source["files"]] == ["dev.json", "test.json"]


def many_policies(n=30):
    """n policies of 4..13 segments, each segment answering one question of one of three categories, each answer a
    word found nowhere else."""
    categories = [FPC, TPS, RET]
    return [(f"site{k}.com", [(f"Site {k} clause {i} mentions fact{k}x{i}y.",
                               [qa(f"q{k}-{i}", f"Question {i % 5} of the {categories[i % 3]} kind?", categories[i % 3],
                                   f"fact{k}x{i}y")])
                              for i in range(4 + k % 10)]) for k in range(n)]


def test_splits_keep_each_policy_whole_and_limit_keeps_each_pair_whole(tmp_path):
    write_policyqa(tmp_path, many_policies())
    task = load_task("legal", tmp_path, seed=0)
    where = {}
    for name, examples in task.splits.items():
        for ex in examples:
            assert where.setdefault(ex["group"], name) == name  # no policy in two splits
    assert {name: s["policies"] for name, s in task.summary()["splits"].items()} == \
        {"test": 6, "val": 2, "weak_train": 11, "w2s_train": 11}  # 20% of 30, 10% of the 24 left, halves
    # stratified by size: the test split holds one policy of each band of 5 (by rows, largest first)
    assert sorted({ex["group"]: ex["stratum"] for ex in task.splits["test"]}.values()) == list(range(6))
    sizes = Counter(ex["group"] for examples in task.splits.values() for ex in examples)
    assert {ex["stratum"] for ex in task.splits["val"] + task.splits["test"] if sizes[ex["group"]] == 26} == {0}
    assert task.summary()["source"]["name"] == "policyqa"
    assert load_task("legal", tmp_path, seed=1).summary()["splits"] != task.summary()["splits"]
    limited = load_task("legal", tmp_path, seed=0, limit=20)
    for examples in limited.splits.values():
        ids = {ex["id"] for ex in examples}
        assert len(examples) <= 20 and Counter(ex["label"] for ex in examples)[0] == len(examples) / 2
        assert all(i + "-irrelevant" in ids for i in ids if not i.endswith("-irrelevant"))


def test_legal_prefers_legalbench_when_its_test_split_is_local_and_records_which_source(tmp_path, capsys):
    write_policyqa(tmp_path, many_policies())
    from_policyqa = load_task("legal", tmp_path)
    assert capsys.readouterr().out.startswith(f"legal: using PolicyQA from {tmp_path / 'legal' / 'policyqa'}")
    with open(tmp_path / "legal" / "test.tsv", "w", encoding="utf-8") as f:
        f.write("index\tquestion\ttext\tanswer\n")
        f.writelines(f"{i}\tq{i % 7}?\tclause {i}\t{'Relevant' if i % 2 else 'Irrelevant'}\n" for i in range(200))
    from_legalbench = load_task("legal", tmp_path)
    assert capsys.readouterr().out.startswith(f"legal: using LegalBench privacy_policy_qa from {tmp_path}")
    ids = [rundir.data_identity(t.summary()) for t in (from_policyqa, from_legalbench)]
    assert [i["source"] for i in ids] == ["policyqa", "legalbench"]
    assert "source policyqa -> legalbench" in rundir.diff(*ids)


def test_without_a_local_copy_policyqa_is_fetched_by_url_and_sha256_and_a_wrong_file_is_refused(tmp_path, monkeypatch,
                                                                                                capsys):
    """The Hub refused and no DIR/legal/policyqa: the files come from URL (here file:// URLs of files this test
    wrote), are cached, and give the rows a local copy gives; bytes with another sha256 are refused in one line."""
    import hashlib

    import data.common as common
    from core import hub
    source = tmp_path / "source"
    write_policyqa(source, many_policies())
    local = load_task("legal", source)
    capsys.readouterr()
    served = source / "legal" / "policyqa"
    monkeypatch.setattr(policyqa, "URL", served.as_uri() + "/{name}")  # str.format ignores the unused commit
    monkeypatch.setattr(policyqa, "SHA256", {n: hashlib.sha256((served / n).read_bytes()).hexdigest()
                                            for n in policyqa.REQUIRED})
    monkeypatch.setenv("W2S_CACHE", str(tmp_path / "cache"))
    def refused(*args, **kwargs):
        raise hub.OfflineError("the Hub cannot be reached (test).")
    monkeypatch.setattr("data.legal.hub_test_file", refused)
    empty = tmp_path / "empty"
    empty.mkdir()
    fetched = load_task("legal", empty)
    assert capsys.readouterr().out.startswith(f"legal: using PolicyQA from {tmp_path / 'cache' / 'legal' / 'policyqa'}")
    assert [ex["id"] for ex in fetched.splits["test"]] == [ex["id"] for ex in local.splits["test"]]
    assert fetched.summary()["files"][0]["sha256"] == local.summary()["files"][0]["sha256"]
    shutil.rmtree(tmp_path / "cache")
    monkeypatch.setitem(policyqa.SHA256, "dev.json", "0" * 64)
    with pytest.raises(DataError, match="dev.json downloaded with sha256 .* expected 0{64}: refused") as e:
        load_task("legal", empty)
    assert "\n" not in str(e.value) and not (tmp_path / "cache" / "legal" / "policyqa" / "dev.json").exists()


def test_real_policyqa_rows_are_balanced_unique_by_policy_and_never_pair_a_question_with_its_answer(shared_data):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        task = load_task("legal", shared_data)  # LegalBench's test split is not there
    assert task.source["name"] == "policyqa"
    rows = [ex for examples in task.splits.values() for ex in examples]
    assert len(rows) == 15204 and Counter(ex["label"] for ex in rows) == {0: 7602, 1: 7602}
    assert {s: v["policies"] for s, v in task.summary()["splits"].items()} == \
        {"weak_train": 15, "w2s_train": 15, "val": 1, "test": 8}
    policies = [{ex["group"] for ex in examples} for examples in task.splits.values()]
    assert sum(map(len, policies)) == len(set().union(*policies)) == 39  # disjoint; one 1-segment policy gives none
    pairs = [ex["text"] for ex in rows]
    assert len(set(pairs)) == len(pairs)
    answers = {}  # (policy, question) -> every answer text of it in that policy, from the raw files
    for name in ("dev.json", "test.json"):
        for policy in json.loads((shared_data / "legal" / "policyqa" / name).read_text())["data"]:
            for paragraph in policy["paragraphs"]:
                for q in paragraph["qas"]:
                    answers.setdefault((policy["title"], q["question"].strip()), set()).update(
                        a["text"].strip() for a in q["answers"])
    prefix = build_text("", "").split(" [SEP] Clause: ")[0]
    for ex in rows:
        question, segment = ex["text"][len(prefix):].split(" [SEP] Clause: ")
        found = [a for a in answers[(ex["group"], question)] if a in segment]
        assert bool(found) == (ex["label"] == 1), (ex["id"], found)  # Irrelevant: no answer of it, word for word
    assert [f["sha256"][:8] for f in task.files] == ["5ced8cbe", "92929068"]


@pytest.mark.parametrize("damage, message", [
    (lambda f: f.write_text('{"data": [', encoding="utf-8"), r"dev.json:1: malformed JSON"),
    (lambda f: f.write_text(f.read_text().replace('"answers": [{"text": "email address", "answer_start": 0}]',
                                                  '"answers": []'), encoding="utf-8"),
     r"question 'q1' has no answer span"),
    (lambda f: f.unlink(), r"dev.json: file not found \(PolicyQA needs dev.json and test.json there\)"),
])
def test_bad_policyqa_file_ends_in_one_line_and_a_nonzero_exit(tmp_path, damage, message):
    write_policyqa(tmp_path, SMALL, files=("dev.json",))
    shutil.copy(tmp_path / "legal" / "policyqa" / "dev.json", tmp_path / "legal" / "policyqa" / "test.json")
    (tmp_path / "legal" / "policyqa" / "test.json").write_text('{"data": []}')
    damage(tmp_path / "legal" / "policyqa" / "dev.json")
    with pytest.raises(DataError, match=message):
        policyqa.read("legal", tmp_path)
    if "malformed" in message:  # and through the command line: one line, exit status 2
        r = subprocess.run([sys.executable, "train.py", "--task", "legal", "--data-dir", str(tmp_path), "--out",
                            str(tmp_path / "out")], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert r.returncode == 2 and len(r.stderr.splitlines()) == 1 and r.stderr.startswith("error: "), r.stderr


def test_student_without_weak_labels_names_the_command_that_makes_them(tmp_path):
    write_policyqa(tmp_path, many_policies())
    r = subprocess.run([sys.executable, str(ROOT / "train.py"), "--task", "legal", "--role", "student", "--data-dir",
                        str(tmp_path), "--seed", "1"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1, r.stderr
    assert r.stderr == (f"error: weak labels not found: runs/legal/seed1/weak/predictions.json; make them first: "
                        f"python train.py --task legal --role weak --seed 1 --data-dir {tmp_path} (or every stage at "
                        f"once: python w2s.py --task legal --seeds 1 --data-dir {tmp_path})\n")
