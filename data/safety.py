"""safety (Ye et al. 2024): is a user prompt safe to answer? The paper's CSV `prompt,is_safe`
(11,468 rows: 6,421 False / 5,047 True), read from data_dir/safety/safety.csv or downloaded once from the
paper's repository at a pinned commit."""
from data.common import fetch_url, file_record, instead_of_download, local_file, parse_label, read_table, warn_dropped

URL = "https://raw.githubusercontent.com/yeruimeng/WTS/c909377793e53081b9161a94f8d381a18d07bb49/safety.csv"
SHA256 = "d56cff21184ec83b9b5e655e3da5ad055d9113a117e4c56a836ed792308a2289"

# Label 1 = unsafe: the class a safety classifier must catch, so f1 (positive class 1) measures catching it.
# (The paper's code uses 1 = safe; accuracy and balanced accuracy do not depend on the choice.)
LABEL_NAMES = ["safe", "unsafe"]
LABEL_OF_IS_SAFE = {"True": 0, "False": 1}


def read(name, data_dir):
    path = local_file(data_dir, "safety", "safety.csv")
    if path is None:
        path = fetch_url(URL, SHA256, "safety/safety.csv", instead=instead_of_download(data_dir, "safety/safety.csv"))
    examples, empty = [], []
    for row_number, (line, row) in enumerate(read_table(path, ["prompt", "is_safe"])):
        label = parse_label(row["is_safe"], LABEL_OF_IS_SAFE, path, line, "is_safe")
        if not row["prompt"].strip():
            empty.append(f"{path.name}:{line}")  # the paper's file has one such row (line 11853)
            continue
        examples.append({"id": f"safety-{row_number}", "text": row["prompt"], "label": label})
    warn_dropped(name, {"empty prompt": empty})
    return {"kind": "classification", "label_names": LABEL_NAMES, "examples": examples, "files": [file_record(path)]}
