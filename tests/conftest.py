import os
import sys
from pathlib import Path

import pytest

# No test may reach the network; huggingface_hub reads this at import and fails fast instead of hanging.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# Real public data lives beside the project (../shared/data); tests that need it skip when absent.
SHARED_DATA = Path(os.environ.get("W2S_SHARED_DATA", ROOT.parent / "shared" / "data"))


@pytest.fixture
def shared_data():
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA} (set W2S_SHARED_DATA)")
    return SHARED_DATA
