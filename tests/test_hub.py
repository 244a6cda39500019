"""An unreachable Hub, with no HF_HUB_OFFLINE: found once per process within seconds, then one line naming what was
wanted and what to pass instead; never huggingface_hub's ~25 s of "Retrying in 8s [Retry 4/5]" per request."""
import os
import shutil
import socket
import subprocess
import sys
import time

import pytest

from conftest import ROOT
from core import hub

# a dataset listing, a tokenizer and a model file, asked one after the other in one process
ASK_ALL_THREE = """
import sys, time

import data
from core import cli, hub
from models import tokenizer
t0 = time.time()
for ask in (lambda: data.load_task("legal", sys.argv[1]), lambda: tokenizer.load_tokenizer("gpt2"),
            lambda: hub.hub_file("openai-community/gpt2", "config.json", instead="a local directory")):
    try:
        ask()
    except cli.UserError as e:
        print(cli.error_line(e))
print(time.time() - t0)
"""


def online_env(tmp_path, endpoint):
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "PYTHONPATH")}
    return env | {"HF_ENDPOINT": endpoint, "HF_HOME": str(tmp_path / "hf")}  # an empty Hub cache


@pytest.fixture
def silent_endpoint():
    """A Hub that accepts the connection and never answers: only a timeout can tell."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(16)
        yield f"http://127.0.0.1:{server.getsockname()[1]}"


def legalbench_train_only(tmp_path, shared_data):
    """A data dir with LegalBench's train.tsv and neither its test split nor PolicyQA: the Hub is the one source."""
    (tmp_path / "data" / "legal").mkdir(parents=True)
    shutil.copy(shared_data / "legal" / "train.tsv", tmp_path / "data" / "legal" / "train.tsv")
    return tmp_path / "data"


def test_train_on_legal_with_a_refused_hub_ends_in_one_line_within_seconds(tmp_path, shared_data):
    # the command: legal/train.tsv but not test.tsv, so the test split is asked of the Hub
    t0 = time.time()
    r = subprocess.run([sys.executable, "train.py", "--task", "legal", "--role", "student", "--data-dir",
                        str(legalbench_train_only(tmp_path, shared_data)), "--out", str(tmp_path / "out")], cwd=ROOT,
                       capture_output=True, text=True,
                       timeout=120, env=online_env(tmp_path, "http://127.0.0.1:9"))  # nothing listens on port 9
    elapsed = time.time() - t0
    assert r.returncode == 2 and "Retry" not in r.stderr and len(r.stderr.splitlines()) == 1, r.stderr
    assert r.stderr.startswith("error: legal needs LegalBench's privacy_policy_qa test split")
    assert "cannot be reached (ConnectError" in r.stderr and "--data-dir DIR with DIR/legal/test.tsv" in r.stderr
    assert elapsed < 12, elapsed  # 2.5 s on an idle machine, most of it importing torch; 26 s of retries before


def test_a_hub_that_never_answers_is_found_once_within_seconds_for_data_tokenizers_and_models(
        tmp_path, shared_data, silent_endpoint):
    r = subprocess.run([sys.executable, "-c", ASK_ALL_THREE, str(legalbench_train_only(tmp_path, shared_data))],
                       cwd=ROOT, capture_output=True,
                       text=True, timeout=120, env=online_env(tmp_path, silent_endpoint))
    assert r.returncode == 0 and r.stderr == "", r.stderr  # no retry lines, no warnings
    *lines, elapsed = r.stdout.splitlines()
    assert len(lines) == 3 and all(f"the Hub ({silent_endpoint}) cannot be reached (ReadTimeout" in l for l in lines)
    assert "legal/test.tsv" in lines[0] and "'openai-community/gpt2' file 'vocab.json'" in lines[1]
    assert "vocab.json + merges.txt" in lines[1] and "file 'config.json'" in lines[2] and "a local directory" in lines[2]
    # the three calls took one probe of hub.PROBE_TIMEOUT (3 s) together, not one each
    assert hub.PROBE_TIMEOUT - 0.1 < float(elapsed) < 5, elapsed


def test_offline_the_legal_listing_comes_from_the_cached_snapshot(tmp_path, monkeypatch):
    from huggingface_hub import constants
    snapshot = tmp_path / "datasets--nguha--legalbench" / "snapshots" / "abc123"
    (snapshot / "data" / "privacy_policy_qa").mkdir(parents=True)
    (snapshot / "data" / "privacy_policy_qa" / "test.tsv").write_text("x")
    (tmp_path / "datasets--nguha--legalbench" / "refs").mkdir()
    (tmp_path / "datasets--nguha--legalbench" / "refs" / "main").write_text("abc123")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(hub, "_unreachable", "HF_HUB_OFFLINE is set")
    monkeypatch.setattr(hub, "list_repo_files", lambda *a, **k: pytest.fail("listed online"))
    assert hub.repo_files("nguha/legalbench", repo_type="dataset") == ["data/privacy_policy_qa/test.tsv"]
    assert hub.repo_files("nguha/other", repo_type="dataset") == []
