"""The README's entry points run as a new user runs them: `python <script> --help` from the repository root, in a
plain environment (no PYTHONPATH, no test fixtures), exits 0 and documents the flags the README uses."""
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
FLAGS = {  # flags that the README and the issues name for each script
    "w2s.py": ["--task", "--weak", "--strong", "--ensemble", "--seeds", "--out", "--scorer", "--track"],
    "train.py": ["--task", "--role", "--model", "--out", "--data-dir", "--seed", "--device", "--limit",
                 "--weak-labels", "--hard-labels", "--loss", "--linear-probe", "--ensemble", "--vote",
                 "--grad-checkpoint", "--compile", "--max-new-tokens", "--samples", "--top-p", "--loss-on", "--track"],
    "eval.py": ["--n-boot"],
    "bench.py": ["--device", "--json", "--quick", "--data-dir", "--compile", "--suite", "--sections", "--memory"],
}


@pytest.mark.parametrize("script", list(FLAGS))
def test_script_help_exits_zero_and_lists_the_readme_flags(script):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([sys.executable, script, "--help"], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("usage:")
    missing = [flag for flag in FLAGS[script] if flag not in r.stdout]
    assert not missing, f"{script} --help does not mention {missing}"


@pytest.mark.parametrize("script", ["w2s.py", "train.py", "eval.py", "bench.py"])
def test_help_describes_every_flag_with_its_default(script):
    r = subprocess.run([sys.executable, script, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    # one entry per flag: "  --flag ..." then its help text, wrapped; every entry ends with its default
    entries = re.split(r"\n  (?=-)", r.stdout.split("options:", 1)[1])[1:]
    flags = [e.split()[0].rstrip(",") for e in entries]
    assert len(flags) > {"w2s.py": 40, "train.py": 40, "eval.py": 4, "bench.py": 20}[script]
    for flag, entry in zip(flags, entries):
        if flag in ("-h", "--help"):
            continue
        text = " ".join(entry.split())
        assert "(default:" in text, f"{script} {flag} shows no default"
        assert len(text.split(")", 1)[0]) > len(flag) + 12, f"{script} {flag} has no description"


def test_each_flags_help_is_its_own_field_comment_never_a_group_heading():
    import inspect

    import w2s
    from core import cli
    from run import config
    for cls in (config.TrainConfig, w2s.W2SConfig):
        headings = [line.strip()[len("# ----"):].strip() for line in inspect.getsource(cls).splitlines()
                    if line.strip().startswith("# ----")]
        comments = cli.field_comments(cls)
        assert all(not text.endswith(h) for text in comments.values() for h in headings), comments
    comments = cli.field_comments(config.TrainConfig)
    assert comments["quiet"] == "plain log lines instead of progress bars"
    assert comments["max_steps"] == "> 0: stop after this many optimizer steps (smoke tests, benchmarks)"
    assert comments["threads"].endswith("a busy machine slows many threads down far more (the toy task sets 1)")


@pytest.mark.parametrize("script, flag, choices", [("train.py", "--loss", "{xent,logconf,entropy,product,window}"),
                                                   ("train.py", "--role", "{weak,ceiling,student}"),
                                                   ("w2s.py", "--task", "{")])
def test_help_lists_the_choices_of_a_flag(script, flag, choices):
    r = subprocess.run([sys.executable, script, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert re.search(rf"\n  {re.escape(flag)} {re.escape(choices)}", r.stdout), r.stdout


def test_w2s_help_lists_the_train_flags_it_passes_on():
    r = subprocess.run([sys.executable, "w2s.py", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert "training (train.py flags, applied to every stage)" in r.stdout
    for flag in ("--epochs", "--lr", "--batch-size", "--limit", "--max-length", "--aux-coef", "--protocol"):
        assert flag in r.stdout.split("training (train.py flags", 1)[1]


@pytest.mark.parametrize("script", ["w2s.py", "train.py", "bench.py"])
def test_abbreviated_flags_are_rejected(script):
    flag = "--round" if script == "bench.py" else "--epoch"
    r = subprocess.run([sys.executable, script, flag, "1"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and f"unrecognized arguments: {flag} 1" in r.stderr and "Traceback" not in r.stderr


def test_random_shape_specs_build_the_shapes_parameter_count(shared_data):
    from model import GPT, SHAPES
    from models import checkpoints
    from run import job
    for spec, expected in [("random:gpt2", 124_439_808), ("random:2x64", None)]:
        model = GPT.from_pretrained(spec, n_classes=2) if expected is None else None
        if expected is None:
            c = model.config
            assert (c.n_layer, c.n_embd, c.n_head, c.vocab_size) == (2, 64, 2, 257)
            d = c.n_embd
            # a block: two LayerNorms (2d each), qkv (3d^2 + 3d), attention out (d^2 + d), MLP (4d^2 + 4d, 4d^2 + d)
            per_block = 12 * d * d + 13 * d
            # embeddings (bytes + <|endoftext|>, 1024 positions), 2 blocks, final LayerNorm, 2-class head (no bias)
            assert model.num_params() == 257 * d + 1024 * d + 2 * per_block + 2 * d + 2 * d
        else:  # GPT-2 small's published count (tied embeddings, no classification head); built on the meta device
            with torch.device("meta"):
                assert GPT.from_pretrained(spec).num_params() == expected
    assert set(SHAPES) == {"gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", "openai-gpt"}
    source, tokenizer, _ = checkpoints.resolve("random:gpt2-medium", str(shared_data))
    assert source == "random:gpt2-medium" and tokenizer.endswith("tokenizers/gpt2")
    assert checkpoints.resolve("random:gpt2-medium:/some/tokenizer", None) == ("random:gpt2-medium", "/some/tokenizer", None)
    assert checkpoints.resolve("random:3x96", None) == ("random:3x96", "bytes", None)
    # a width that 32-channel heads do not divide gets as many heads as divide it; a zero size is refused
    assert (GPT.from_pretrained("random:1x100").config.n_head, GPT.from_pretrained("random:1x16").config.n_head) == (2, 1)
    from model import CheckpointError
    for bad in ("random:0x16", "random:1x0", "random:2x"):
        with pytest.raises(CheckpointError, match="unknown random model shape"):
            checkpoints.resolve(bad, None)


@pytest.mark.slow
def test_installing_puts_no_module_on_other_projects_import_path(tmp_path):
    # the project's wheel, built offline from a copy of its sources, installed into a fresh venv; then `import model`
    # and co. from another directory must find nothing (with py-modules = ["model"] they would)
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".*", "runs", "tests", "build", "*.egg-info",
                                                               "__pycache__"))
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                        str(tmp_path / "wheel"), str(source)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=300)
    python = str(venv / "bin" / "python")
    r = subprocess.run([sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps", "--no-index",
                        *map(str, (tmp_path / "wheel").glob("w2s-*.whl"))], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert list((venv / "lib").glob("python3*/site-packages/w2s-0.1.0.dist-info"))
    for module in ("model", "train", "eval", "data", "hub", "losses", "w2s", "cli"):
        r = subprocess.run([python, "-c", f"import {module}"], cwd=tmp_path, capture_output=True, text=True)
        assert f"No module named '{module}'" in r.stderr, (module, r.stderr[-500:])


def test_an_unreachable_hub_ends_the_run_within_seconds_with_one_line(tmp_path, shared_data):
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "PYTHONPATH")}
    env |= {"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(tmp_path / "hf")}  # nothing listens on port 9
    t0 = time.time()
    r = subprocess.run([sys.executable, "w2s.py", "--task", "safety", "--data-dir", str(shared_data),
                        "--weak", "gpt2", "--strong", "gpt2-medium", "--out", str(tmp_path / "out")], cwd=ROOT,
                       capture_output=True, text=True, timeout=120, env=env)
    assert time.time() - t0 < 15  # 2-3 s here, most of it importing torch: not 25-30 s of retries per file
    assert r.returncode == 2 and "Traceback" not in r.stderr and not (tmp_path / "out").exists()
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "openai-community/gpt2" in errors[0] and "cannot be reached" in errors[0]
