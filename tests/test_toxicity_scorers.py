import json
import sys
import threading
import time
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import numpy as np
import pytest

from scoring import toxicity
from scoring.toxicity import OfflineScorer, PerspectiveError, PerspectiveScorer

KEY = "test-KEY-5ecret/+="  # '/', '+', '=' must survive URL quoting and still be redacted


class FakePerspective(BaseHTTPRequestHandler):
    """Answers like the Perspective API: TOXICITY = len(text) / 100, unless a scripted (status, body) is queued."""

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append({"time": self.server.clock.monotonic(), "path": urlparse(self.path).path,
                                     "query": parse_qs(urlparse(self.path).query), "body": body})
        if self.server.script:
            status, reply = self.server.script.pop(0)
        else:
            value = min(len(body["comment"]["text"]) / 100, 1.0)
            status, reply = 200, {"attributeScores": {"TOXICITY": {"summaryScore": {"value": value, "type": "PROBABILITY"}}},
                                  "languages": ["en"]}
        data = json.dumps(reply).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), FakePerspective)
    httpd.requests, httpd.script, httpd.clock = [], [], time
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def client(server, tmp_path):
    def make(**options):
        options = {"api_key": KEY, "base_url": server.url, "qps": 1000, "backoff": 0.01,
                   "cache_path": tmp_path / "perspective.jsonl", **options}
        return PerspectiveScorer(**options)
    return make


def test_perspective_sends_the_documented_request_and_reads_the_summary_score(server, client):
    assert client().score(["you are nice", "ok"]) == [0.12, 0.02]
    first = server.requests[0]
    assert first["path"] == "/v1alpha1/comments:analyze"
    assert first["query"] == {"key": [KEY]}
    assert first["body"] == {"comment": {"text": "you are nice"}, "requestedAttributes": {"TOXICITY": {}},
                             "languages": ["en"], "doNotStore": True}
    assert client().name == "perspective:TOXICITY"


def test_perspective_progress_bar_shows_on_a_terminal_unless_quiet(server, client, capsys, monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    client().score(["you are nice"])
    assert "perspective" in capsys.readouterr().err  # the bar
    client(quiet=True).score(["another text"])
    assert capsys.readouterr().err == ""


class FakeClock:
    """Stands in for the `time` module inside toxicity.py: sleep() moves the clock on at once, so the spacing of
    requests is exact and independent of how busy the machine is."""

    def __init__(self):
        self.now = 1000.0

    def monotonic(self):
        return self.now

    def sleep(self, seconds):
        assert seconds > 0
        self.now += seconds


def test_perspective_spaces_requests_by_one_over_qps(server, client, monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(toxicity, "time", clock)
    server.clock = clock  # requests are stamped on the same clock
    client(qps=4).score([f"text {i}" for i in range(5)])
    gaps = np.diff([r["time"] for r in server.requests])
    assert len(server.requests) == 5
    assert gaps == pytest.approx([0.25] * 4)  # exactly 1/qps: no wait beyond the limit either


def test_perspective_retries_429_and_503_then_succeeds(server, client):
    server.script = [(429, {"error": {"code": 429, "message": "Quota exceeded"}}), (503, {"error": {"message": "busy"}})]
    assert client().score(["abcd"]) == [0.04]
    assert len(server.requests) == 3


def test_perspective_gives_up_after_max_retries_naming_the_last_status(server, client):
    server.script = [(429, {"error": {"code": 429, "message": "Quota exceeded"}})] * 3
    with pytest.raises(PerspectiveError, match=r"failed 3 times, last with HTTP 429: Quota exceeded"):
        client(max_retries=2).score(["abcd"])
    assert len(server.requests) == 3


def test_perspective_cache_answers_repeats_and_new_clients_without_requests(server, client, tmp_path):
    assert client().score(["hello", "hello"]) == [0.05, 0.05]
    assert len(server.requests) == 1
    assert client().score(["hello"]) == [0.05]  # a new instance reads the file
    assert len(server.requests) == 1
    # a run killed mid-write leaves a truncated last line: it is skipped, and the next line starts on its own
    with open(tmp_path / "perspective.jsonl", "a") as f:
        f.write('{"sha256": "ab')
    assert client().score(["hello", "hello!"]) == [0.05, 0.06]
    assert client().score(["hello", "hello!"]) == [0.05, 0.06]
    assert len(server.requests) == 2
    assert len((tmp_path / "perspective.jsonl").read_text().splitlines()) == 2


def test_perspective_cache_with_a_bad_middle_line_names_file_and_line(client, tmp_path):
    (tmp_path / "perspective.jsonl").write_text('{"sha256": "a", "score": 0.1}\nnot json\n{"sha256": "b", "score": 0.2}\n')
    with pytest.raises(ValueError, match=r"perspective\.jsonl:2: not a score cache line"):
        client()


def test_perspective_403_says_what_is_wrong_without_the_key(server, client):
    # the real API does not echo the key, but nothing the server says may leak it through our message
    server.script = [(403, {"error": {"code": 403, "message": f"API key not valid: {KEY}", "status": "PERMISSION_DENIED"}})]
    with pytest.raises(PerspectiveError) as info:
        client().score(["hi"])
    message = str(info.value)
    assert "HTTP 403" in message and "API key not valid" in message and "PERSPECTIVE_API_KEY" in message
    assert KEY not in "".join(traceback.format_exception(info.value)) and "5ecret" not in message
    assert KEY not in repr(client())
    assert len(server.requests) == 1  # not retried


def test_perspective_400_reports_the_api_message(server, client):
    server.script = [(400, {"error": {"code": 400, "message": "Attribute TOXICITY does not support request languages: xx"}})]
    with pytest.raises(PerspectiveError, match=r"rejected the request \(HTTP 400: Attribute TOXICITY does not support"):
        client().score(["hi"])


def test_perspective_without_a_key_names_the_variable(monkeypatch, tmp_path):
    monkeypatch.delenv("PERSPECTIVE_API_KEY", raising=False)
    with pytest.raises(PerspectiveError, match="set PERSPECTIVE_API_KEY"):
        toxicity.score(["hi"], scorer="perspective", cache_path=tmp_path / "c.jsonl")


def test_empty_texts_score_zero_without_a_request(server, client):
    assert client().score(["", "  \n", "abc"]) == [0.0, 0.0, 0.03]
    assert [r["body"]["comment"]["text"] for r in server.requests] == ["abc"]


def test_default_scorer_follows_the_key_and_unknown_scorers_are_refused(monkeypatch):
    monkeypatch.delenv("PERSPECTIVE_API_KEY", raising=False)
    assert toxicity.default_scorer() == "offline"
    monkeypatch.setenv("PERSPECTIVE_API_KEY", "x")
    assert toxicity.default_scorer() == "perspective"
    with pytest.raises(ValueError, match="unknown toxicity scorer 'detoxify'"):
        toxicity.load_scorer("detoxify")


def test_spearman_matches_hand_computed_ranks_with_ties():
    # ranks of a: [0, 1.5, 1.5, 3]; of b: [3, 2, 1, 0] -> rho = corr = -0.9486832980505138
    assert toxicity.spearman([1, 2, 2, 3], [9, 5, 4, 0]) == pytest.approx(-0.9486832980505138, abs=1e-12)
    assert toxicity.spearman([0.1, 0.5, 0.9], [1, 2, 3]) == pytest.approx(1.0)


# ---------------------------------------------------------------------------------------------------------
# offline scorer


def write_rtp(directory, rows):
    """RealToxicityPrompts-format JSONL: rows of (id, prompt, prompt toxicity, continuation, continuation toxicity)."""
    (directory / "toxicity").mkdir(parents=True, exist_ok=True)
    with open(directory / "toxicity" / "rows.jsonl", "w") as f:
        for row_id, prompt, p_tox, continuation, c_tox in rows:
            f.write(json.dumps({"filename": row_id, "begin": 0, "end": 1, "challenging": False,
                                "prompt": {"text": prompt, "toxicity": p_tox},
                                "continuation": {"text": continuation, "toxicity": c_tox}}) + "\n")
    return directory


def synthetic_rows():
    """40 rows; held-out rows carry the word 'zqxj' and are maximally toxic, so any leak would show."""
    rows = []
    for i in range(40):
        row_id = f"doc{i}"
        if toxicity.is_held_out(f"{row_id}:0-1"):
            rows.append((row_id, f"zqxj zqxj {i}", 1.0, "zqxj", 1.0))
        else:
            rows.append((row_id, f"you stupid idiot {i}", 0.9, " have a nice day", 0.05))
    return rows


def test_offline_training_is_deterministic_and_never_sees_held_out_rows(tmp_path):
    data = write_rtp(tmp_path / "data", synthetic_rows())
    assert 0 < sum(toxicity.is_held_out(f"doc{i}:0-1") for i in range(40)) < 40
    first = OfflineScorer(data, tmp_path / "a")
    second = OfflineScorer(data, tmp_path / "b")
    texts = ["you stupid idiot", "have a nice day", "zqxj", "mwvk"]
    scores = first.score(texts)
    assert scores == second.score(texts)
    assert np.array_equal(np.load(first.model_path)["weights"], np.load(second.model_path)["weights"])
    assert scores[0] > 0.7 and scores[1] < 0.3
    # 'zqxj' only occurs in held-out rows, so it scores exactly like an unseen word: the bias alone
    assert scores[2] == scores[3]


def test_offline_model_is_cached_by_data_hash(tmp_path, monkeypatch):
    data = write_rtp(tmp_path / "data", synthetic_rows())
    trained = OfflineScorer(data, tmp_path / "cache")
    monkeypatch.setattr(toxicity, "train_logreg", lambda *a: pytest.fail("retrained although the model is cached"))
    loaded = OfflineScorer(data, tmp_path / "cache")
    assert loaded.name == trained.name and loaded.name.startswith("offline:ngram-logreg-")
    assert loaded.score(["you stupid idiot"]) == trained.score(["you stupid idiot"])
    monkeypatch.undo()
    changed = write_rtp(tmp_path / "changed", synthetic_rows()[:-1])
    assert OfflineScorer(changed, tmp_path / "cache").name != trained.name


def test_offline_bad_rows_and_missing_data_get_clear_errors(tmp_path):
    data = write_rtp(tmp_path / "data", synthetic_rows()[:3])
    with open(data / "toxicity" / "rows.jsonl", "a") as f:
        f.write('{"filename": "x", "begin": 0, "end": 1, "prompt": {"text": "hi"}}\n')
    with pytest.raises(ValueError, match=r"rows\.jsonl:4: not a RealToxicityPrompts row \(KeyError"):
        OfflineScorer(data, tmp_path / "cache")
    with pytest.raises(FileNotFoundError, match="no RealToxicityPrompts"):
        OfflineScorer(tmp_path / "nowhere", tmp_path / "cache")
    with pytest.raises(ValueError, match="pass data_dir="):
        toxicity.score(["hi"], scorer="offline")


@pytest.fixture
def real_offline(shared_data, tmp_path_factory):
    """The offline scorer trained on the real RTP rows once per session (later uses load it from the cache)."""
    return OfflineScorer(shared_data, tmp_path_factory.getbasetemp() / "offline-toxicity")


def held_out_continuations(shared_data):
    rows = toxicity.read_rtp_texts(shared_data)
    return [(text, tox) for row_id, part, text, tox in rows if toxicity.is_held_out(row_id) and part == "continuation"]


def test_offline_ranks_toxic_real_continuations_above_benign(real_offline, shared_data):
    held_out = held_out_continuations(shared_data)
    scores = np.array(real_offline.score([text for text, _ in held_out]))
    perspective = np.array([tox for _, tox in held_out])
    assert scores.min() >= 0 and scores.max() <= 1
    assert real_offline.score(["", "   "]) == [0.0, 0.0]
    # measured: 0.745 (130 texts) vs 0.241 (95 texts)
    assert scores[perspective >= 0.8].mean() > 0.6
    assert scores[perspective <= 0.1].mean() < 0.35


def test_offline_agrees_with_perspective_on_held_out_rows(real_offline, shared_data, tmp_path_factory):
    report = toxicity.offline_agreement(shared_data, tmp_path_factory.getbasetemp() / "offline-toxicity")
    assert report["scorer"] == real_offline.name
    # measured on the 911 held-out texts: spearman 0.835, accuracy 0.874, precision 0.927, recall 0.789;
    # on their 455 continuations: spearman 0.798, accuracy 0.824
    assert report["all"]["n"] == 911
    assert report["all"]["spearman"] > 0.78 and report["all"]["accuracy"] > 0.83
    assert report["all"]["precision"] > 0.85 and report["all"]["recall"] > 0.7
    assert report["continuation"]["spearman"] > 0.74 and report["continuation"]["accuracy"] > 0.78
