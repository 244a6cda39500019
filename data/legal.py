"""legal (Ye et al. 2024): LegalBench privacy_policy_qa, does a privacy-policy clause answer a question?
TSV `index question text answer` (answer Relevant / Irrelevant). The pool is LegalBench's test split
(10,923 rows, the one the paper uses) plus the 8-row train split when it is there. Read from
data_dir/legal/test.tsv (+ train.tsv), else the test file of the Hub dataset nguha/legalbench. Where neither can be
had, the same task built from PolicyQA in data_dir/legal/policyqa/, or where the network allows from PolicyQA's
repository at a fixed commit, sha256-checked (data/policyqa.py); one line says which was read,
and the run records it (Task.source), so runs on the two are never taken for one another."""
from core import cli, hub
from data import policyqa
from data.common import (DataError, file_record, hub_dataset_file, instead_of_download, local_file, parse_label,
                         read_table, warn_dropped)
from data.legal_text import LABEL_NAMES, build_text

HUB_REPO = "nguha/legalbench"
LABEL_OF_ANSWER = {"Irrelevant": 0, "Relevant": 1}

def read(name, data_dir):
    """LegalBench where its test split can be had, else PolicyQA from data_dir or its repository, else one line naming
    what to pass."""
    test = local_file(data_dir, "legal", "test.tsv")
    if test is None:
        try:
            test = hub_test_file(data_dir)
        except (hub.OfflineError, DataError) as e:
            where = policyqa.folder(data_dir)
            if where is None:
                try:  # PolicyQA from its public repository, where the network allows
                    where = policyqa.fetched(data_dir)
                except (hub.OfflineError, DataError) as fetch_error:
                    kind = DataError if isinstance(e, DataError) or isinstance(fetch_error, DataError) else type(e)
                    raise kind(f"{e} Or give PolicyQA's dev.json and test.json in DIR/legal/policyqa/ (the same task "
                           f"on OPP-115's privacy policies; data/policyqa.py): {fetch_error}") from None
            source = policyqa.read(name, data_dir, where)
            why = "the Hub cannot be reached" if isinstance(e, hub.OfflineError) else "the Hub has no test TSV"
            info = source["source"]
            cli.note_once(f"legal: using PolicyQA from {where} ({info['rows']:,} rows, "
                          f"{info['policies']} policies): LegalBench's privacy_policy_qa test split is not in "
                          f"{data_dir}/legal/test.tsv and {why}")
            return source
    source = read_legalbench(name, test, data_dir)
    cli.note_once(f"legal: using LegalBench privacy_policy_qa from {test} ({source['source']['rows']:,} rows)")
    return source


def read_legalbench(name, test, data_dir):
    paths = [test] + [p for p in [local_file(data_dir, "legal", "train.tsv")] if p is not None]
    examples, empty = [], []
    for path in paths:
        for line, row in read_table(path, ["index", "question", "text", "answer"], delimiter="\t"):
            label = parse_label(row["answer"], LABEL_OF_ANSWER, path, line, "answer")
            if not row["question"].strip() or not row["text"].strip():
                empty.append(f"{path.name}:{line}")
                continue
            examples.append({"id": f"legal-{path.stem}-{row['index']}", "text": build_text(row["question"], row["text"]),
                             "label": label})
    warn_dropped(name, {"empty question or clause": empty})
    counts = {label: sum(ex["label"] == i for ex in examples) for i, label in enumerate(LABEL_NAMES)}
    source = {"name": "legalbench", "dataset": "LegalBench privacy_policy_qa", "rows": len(examples),
              "label_counts": counts}
    return {"kind": "classification", "label_names": LABEL_NAMES, "examples": examples, "source": source,
            "files": [file_record(p) for p in paths]}


def hub_test_file(data_dir):
    """privacy_policy_qa's test TSV in nguha/legalbench, found by listing the repo (its layout is not fixed)."""
    instead = instead_of_download(data_dir, "legal/test.tsv")
    try:
        files = hub.repo_files(HUB_REPO, repo_type="dataset")
    except Exception as e:  # HTTP errors, a connection lost after the probe: all mean "use a local file"
        raise hub.OfflineError(f"legal needs LegalBench's privacy_policy_qa test split, which is not local and cannot "
                               f"be listed on the Hub dataset {HUB_REPO} ({type(e).__name__}): pass {instead} "
                               f"instead.") from None
    task_files = [f for f in files if "privacy_policy_qa" in f.split("/")[:-1] and f.split("/")[-1].startswith("test")]
    tsv = [f for f in task_files if f.endswith(".tsv")]
    if not tsv and not hub.reachable():
        raise hub.OfflineError(f"legal needs LegalBench's privacy_policy_qa test split, which is neither local nor in "
                               f"the Hugging Face cache, and {hub.why_unreachable()}: pass {instead} instead.")
    if not tsv:
        raise DataError(f"the Hub dataset {HUB_REPO} has no privacy_policy_qa test TSV (found {task_files or 'nothing'}): "
                        f"convert its test split to a TSV with columns index, question, text, answer and pass "
                        f"{instead} instead.")
    return hub_dataset_file(HUB_REPO, tsv[0], instead)
