"""PolicyQA (Ahmad et al. 2020, MIT licence) as LegalBench privacy_policy_qa's task: does this privacy-policy segment
answer this question? The legal task reads it when LegalBench's test split cannot be had (data/legal.py).

Files: data_dir/legal/policyqa/dev.json and test.json (+ train.json when there), PolicyQA's SQuAD v1 format:
{"data": [{"title": <policy website>, "paragraphs": [{"context": <segment>, "index", "qas": [{"question", "id",
"type": "Category|||Attribute|||Value" (OPP-115), "answers": [{"text", "answer_start"}]}]}]}]}.

Rows, in the paper's text format (legal_text.build_text):
    Relevant    a question with a segment that holds an answer span of it; a question asked of one segment several
                times (other attributes, other annotators) is one row.
    Irrelevant  one per Relevant row: the same question with another segment of the same policy that holds no answer
                to it, no answer to any question of the same OPP-115 category, and no answer text of the question
                word for word; the candidate with the lowest hash of (row id, segment) not yet paired with the
                question, so no seed is involved. A Relevant row without a candidate is dropped (a warning counts them).
Classes are balanced by construction, and no (question, segment text) pair is emitted twice (PolicyQA repeats a few
segments word for word, within a policy and across two sister sites). group = policy, so no policy is in two splits;
stratum = the policy's size band (policies by rows, largest first, in bands of 5), so the test split takes one policy of
each band; unit = a Relevant row and its Irrelevant partner, which --limit keeps together.
"""
import hashlib
import json
from pathlib import Path

from data.common import DataError, cache_dir, fetch_url, file_record, not_utf8, warn_dropped
from data.legal_text import LABEL_NAMES, build_text

FOLDER = Path("legal") / "policyqa"
REQUIRED = ("dev.json", "test.json")
OPTIONAL = ("train.json",)  # PolicyQA's train split, absent from the public snapshot here
BAND = 5  # policies per size band
# where the network allows, the same files from PolicyQA's public repository at a fixed commit, checked by sha256
COMMIT = "775538bc6d932e9d0dd16975d4373659cf8964fe"
URL = "https://raw.githubusercontent.com/wasiahmad/PolicyQA/{commit}/data/{name}"
SHA256 = {"dev.json": "5ced8cbe6617c132999a57b3ab910fc242501357fc99cbc5a1802f0a1b9ce4bf",
          "test.json": "92929068b7dffa1843f81d661f23da86a64f4a35ffae59fa8d78878277ab9a7f"}


def folder(data_dir):
    """data_dir/legal/policyqa when it exists, else None."""
    path = Path(data_dir) / FOLDER if data_dir is not None else None
    return path if path is not None and path.is_dir() else None


def fetched(data_dir):
    """PolicyQA's dev.json and test.json downloaded once from its repository (URL at COMMIT) into the w2s cache, each
    refused unless its sha256 is SHA256's; the cache folder. Offline: hub.OfflineError naming the local layout."""
    for name in REQUIRED:
        fetch_url(URL.format(commit=COMMIT, name=name), SHA256[name], str(FOLDER / name),
                  instead=f"--data-dir DIR with DIR/{FOLDER / name}" + (f" (not under {data_dir})" if data_dir else ""))
    return cache_dir() / FOLDER


def read(name, data_dir, where=None):
    """The rows of the PolicyQA files in `where` (default: data_dir/legal/policyqa)."""
    where = where or folder(data_dir)
    if where is None:
        raise DataError(f"{Path(data_dir or '.') / FOLDER}: folder not found (PolicyQA's dev.json and test.json).")
    missing = [f for f in REQUIRED if not (where / f).is_file()]
    if missing:
        raise DataError(f"{where / missing[0]}: file not found (PolicyQA needs {' and '.join(REQUIRED)} there).")
    paths = [where / f for f in REQUIRED + OPTIONAL if (where / f).is_file()]
    policies = {}
    for path in paths:
        for title, segments in read_policies(path):
            if title in policies:
                raise DataError(f"{path}: policy {title!r} appears twice (each policy must be in one place).")
            policies[title] = segments
    relevant = {(q["question"], text) for segments in policies.values() for text, qas in segments.items() for q in qas}
    examples, emitted, unpaired = [], set(), []
    for title, segments in policies.items():
        examples += policy_rows(title, segments, relevant, emitted, unpaired)
    warn_dropped(name, {"a question no other segment of its policy leaves unanswered (no Irrelevant partner)": unpaired})
    add_strata(examples)
    n_policies = len({ex["group"] for ex in examples})
    counts = {label: sum(ex["label"] == i for ex in examples) for i, label in enumerate(LABEL_NAMES)}
    source = {"name": "policyqa", "dataset": "PolicyQA (Ahmad et al. 2020), OPP-115 privacy policies",
              "rows": len(examples), "label_counts": counts, "policies": n_policies, "group": "policies",
              "relevant_without_partner": len(unpaired)}
    return {"kind": "classification", "label_names": LABEL_NAMES, "examples": examples, "source": source,
            "files": [file_record(p) for p in paths]}


def read_policies(path):
    """[(title, {segment text: [{"id", "question", "category", "answers"}]})] of one PolicyQA file; segments with the
    same text in one policy are one segment."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: malformed JSON ({e.msg} at column {e.colno}).") from None
    except UnicodeDecodeError as e:
        raise not_utf8(path, 1, e) from None
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise DataError(f"{path}: expected SQuAD format, an object with a list \"data\" of policies.")
    policies = []
    for i, policy in enumerate(data["data"]):
        at = f"{path}: data[{i}]"
        if not isinstance(policy, dict) or not isinstance(policy.get("title"), str) or \
                not isinstance(policy.get("paragraphs"), list):
            raise DataError(f"{at}: expected a policy with a \"title\" and a list \"paragraphs\".")
        segments = {}
        for j, paragraph in enumerate(policy["paragraphs"]):
            if not isinstance(paragraph, dict) or not isinstance(paragraph.get("context"), str) or \
                    not isinstance(paragraph.get("qas"), list):
                raise DataError(f"{at}.paragraphs[{j}]: expected a \"context\" string and a list \"qas\".")
            qas = segments.setdefault(paragraph["context"].strip(), [])
            qas += [question(q, f"{at}.paragraphs[{j}].qas[{k}]") for k, q in enumerate(paragraph["qas"])]
        segments.pop("", None)  # an empty segment can be neither relevant nor a partner
        policies.append((policy["title"], segments))
    return policies


def question(q, at):
    """One PolicyQA question, checked: it must have text, an OPP-115 type and at least one answer span."""
    if not isinstance(q, dict) or not all(isinstance(q.get(k), str) for k in ("id", "question", "type")):
        raise DataError(f"{at}: expected a question with strings \"id\", \"question\" and \"type\".")
    answers = q.get("answers")
    if not isinstance(answers, list) or not answers or \
            not all(isinstance(a, dict) and isinstance(a.get("text"), str) and a["text"].strip() for a in answers):
        raise DataError(f"{at}: question {q['id']!r} has no answer span (PolicyQA's questions all have one: "
                        "this is not PolicyQA's format).")
    if not q["question"].strip():
        raise DataError(f"{at}: question {q['id']!r} has an empty text.")
    return {"id": q["id"], "question": q["question"].strip(), "category": q["type"].split("|||")[0],
            "answers": {a["text"].strip() for a in answers}}


def policy_rows(title, segments, relevant, emitted, unpaired):
    """The Relevant rows of one policy, each followed by its Irrelevant partner. `relevant`: every (question, segment)
    that holds an answer in any policy; `emitted`: the pairs already made (updated)."""
    categories = {text: {q["category"] for q in qas} for text, qas in segments.items()}
    answers = {}
    for qas in segments.values():
        for q in qas:
            answers.setdefault(q["question"], set()).update(q["answers"])
    rows = []
    for text, qas in segments.items():
        first = {}  # question text -> (its first id here, every category it is asked under here)
        for q in qas:
            first.setdefault(q["question"], (q["id"], set()))[1].add(q["category"])
        for asked, (qid, cats) in first.items():
            if (asked, text) in emitted:
                continue
            candidates = [other for other in segments if other != text and (asked, other) not in relevant
                          and not categories[other] & cats and (asked, other) not in emitted
                          and not any(a in other for a in answers[asked])]
            if not candidates:
                unpaired.append(f"{title}: {qid}")
                continue
            partner = min(candidates, key=lambda other: digest(f"{qid}|{other}"))
            emitted.update({(asked, text), (asked, partner)})
            rid = f"policyqa-{qid}"
            rows.append({"id": rid, "text": build_text(asked, text), "label": 1, "group": title, "unit": rid})
            rows.append({"id": f"{rid}-irrelevant", "text": build_text(asked, partner), "label": 0, "group": title,
                         "unit": rid})
    return rows


def digest(s):
    return hashlib.sha256(s.encode("utf-8")).hexdigest()


def add_strata(examples):
    """stratum = the size band of the example's policy: policies by number of rows, largest first, BAND a band."""
    sizes = {}
    for ex in examples:
        sizes[ex["group"]] = sizes.get(ex["group"], 0) + 1
    order = sorted(sizes, key=lambda title: (-sizes[title], title))
    band = {title: rank // BAND for rank, title in enumerate(order)}
    for ex in examples:
        ex["stratum"] = band[ex["group"]]
