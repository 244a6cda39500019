"""bench.py: its FLOPs / MFU arithmetic against a hand computation, the interleaved timing helper on a fake clock, a
smoke run of the whole suite (every section runs and gives finite numbers, and both sides of every comparison compute
the same thing), and the recipe section's two sides training on identical rows. No speed is asserted."""
import math

import pytest
import torch

import bench
from benchmarks import common, llama_family, recipe, trunk
from core.cli import UserError
from data import load_task
from model import GPT, GPTConfig

pytestmark = pytest.mark.filterwarnings("ignore:safety:UserWarning")  # the loader's notes on dropped duplicates


def gpt2_medium(n_classes):
    with torch.device("meta"):  # shapes only: no 1.4 GB of weights
        return GPT(GPTConfig(n_layer=24, n_head=16, n_embd=1024, n_classes=n_classes))


def test_train_flops_per_token_of_gpt2_medium_match_hand_computation():
    # GPT-2 medium by hand: wte 50257*1024 = 51,463,168; wpe 1024*1024 = 1,048,576; per layer 2 LayerNorms 2*2048,
    # c_attn 1024*3072+3072, attn c_proj 1024*1024+1024, c_fc 1024*4096+4096, mlp c_proj 4096*1024+1024
    # = 12,596,224, times 24 = 302,309,376; ln_f 2048. Total 354,823,168 (transformers' count for gpt2-medium).
    lm = gpt2_medium(0)
    assert lm.num_params() == 354_823_168
    # 6 * (params without wpe) + 12 * n_layer * n_embd * seq = 6 * 353,774,592 + 12 * 24 * 1024 * 512
    assert common.train_flops_per_token(lm, 512, lm_head=True) == 2_122_647_552 + 150_994_944
    # a classifier never runs the (tied) lm_head: 6 * 51,463,168 fewer, plus its 2-class head 6 * 2048
    cls = gpt2_medium(2)
    assert common.train_flops_per_token(cls, 512, lm_head=False) == 2_273_642_496 - 308_779_008 + 12_288


def test_mfu_and_datasheet_peaks():
    # 200k tokens/s at 1,964,875,776 FLOPs/token on an H100 SXM (989 TFLOP/s bf16 dense) = 3.9298e14 / 9.89e14
    assert common.mfu(200_000, 1_964_875_776, 989e12) == pytest.approx(0.397346, abs=1e-6)
    assert common.mfu(200_000, 1_964_875_776, None) is None  # unknown peak: MFU n/a, never a made-up number
    assert common.peak_flops("NVIDIA H100 80GB HBM3", "bf16") == 989e12
    assert common.peak_flops("NVIDIA H100 PCIe", "bf16") == 756e12
    assert common.peak_flops("NVIDIA H100 80GB HBM3", "fp32") == 495e12  # TF32 tensor cores
    assert common.peak_flops("NVIDIA H200", "bf16") == 989e12
    assert common.peak_flops("NVIDIA GeForce GTX 1080", "bf16") is None


def test_interleaved_alternates_the_runs_and_reports_median_min_max_of_the_rounds():
    events, now = [], [0.0]
    # each run advances the fake clock by its own duration: ours 2, 5, 3 s; ref 10, 4, 6 s over three rounds
    durations = {"ours": iter([2.0, 5.0, 3.0]), "ref": iter([10.0, 4.0, 6.0])}

    def run(name):
        def fn():
            events.append(name)
            now[0] += next(durations[name])
        return fn

    def setup(name):  # untimed: moves the clock a lot, which must not count
        def fn():
            events.append(f"setup {name}")
            now[0] += 1000.0
        return fn
    t = common.interleaved({"ours": run("ours"), "ref": run("ref")}, rounds=3, sync=lambda: events.append("sync"),
                          setup={"ref": setup("ref")}, clock=lambda: now[0])
    one_round = ["sync", "ours", "sync", "setup ref", "sync", "ref", "sync"]
    assert events == one_round * 3  # ours, ref, ours, ref, ...; setup before its run; sync around each timed call
    assert t["ours"] == {"median": 3.0, "min": 2.0, "max": 5.0, "rounds": [2.0, 5.0, 3.0]}
    assert t["ref"] == {"median": 6.0, "min": 4.0, "max": 10.0, "rounds": [10.0, 4.0, 6.0]}
    assert common.spread([4.0, 1.0, 3.0, 2.0])["median"] == 2.5  # an even count: the mean of the middle two
    # a row pairs the rounds: ours faster by ref/ours = 5, 0.8, 2 per round; as rates, work / seconds
    row = common.timing_row("s", "m", t["ours"], t["ref"], work=60, unit="tokens/s")
    assert row["speedup"] == {"median": 2.0, "min": 0.8, "max": 5.0, "rounds": [5.0, 0.8, 2.0]}
    assert row["ours"]["median"] == 20.0 and row["ref"]["max"] == 15.0 and row["higher_is_better"]


def test_quick_suite_runs_every_section_with_finite_numbers_and_equal_computations(shared_data, capsys):
    n = torch.get_num_threads()
    try:
        res = bench.main(["--suite", "--quick", "--json", "--threads", "1", "--data-dir", str(shared_data)])
    finally:
        torch.set_num_threads(n)
    gpt2 = common.FAMILIES["gpt2"]  # --suite runs every section of --family, gpt2 by default
    assert list(res["sections"]) == gpt2
    rows = res["rows"]
    assert {r["section"] for r in rows} == set(gpt2) and not [r for r in rows if r["kind"] == "skipped"]
    timings = [r for r in rows if r["kind"] == "timing"]
    assert len(timings) >= len(gpt2)
    for r in timings:
        for key in ("ours", "ref", "speedup"):
            s = r[key]
            assert len(s["rounds"]) == 3 and all(math.isfinite(v) and v > 0 for v in s["rounds"]), (r["measure"], key)
            assert s["min"] <= s["median"] <= s["max"]
    checks = [r for r in rows if r["kind"] == "check"]
    assert {r["section"] for r in checks} >= {"train", "generate", "recipe", "rtp"}
    assert all(r["ok"] for r in checks), [r for r in checks if not r["ok"]]
    assert res["checks_ok"]
    mfu = next(r for r in rows if r["measure"].startswith("MFU"))
    assert mfu["ours"] is None and mfu["ref"] is None  # CPU: no stated peak, so n/a rather than a made-up number
    pad = next(r for r in rows if r["section"] == "recipe" and r["kind"] == "value")
    assert 0 <= pad["ours"] < pad["ref"] < 1  # bucketing pads less than padding every row to max_length
    assert '"speedup"' in capsys.readouterr().out  # --json printed the result


def test_recipe_trainer_and_our_path_train_on_identical_rows(shared_data, tmp_path):
    args, cfg, device = bench.parse_args(["--quick", "--data-dir", str(shared_data)])
    ctx = common.Context(args, cfg, device, tmp_path)
    r = recipe.Recipe(ctx)
    seen = {"ours": [], "ref": []}  # what each model's forward received
    r.ours_forward.register_forward_pre_hook(lambda m, a: seen["ours"].append(a))
    r.hf_model.register_forward_pre_hook(lambda m, a, kw: seen["ref"].append(kw), with_kwargs=True)
    r.setup_ours()
    r.run_ours()
    r.setup_ref()
    r.run_ref()
    data, L, pad = r.data, cfg["max_length"], r.pad
    # the rows are the safety task's whole w2s_train split (as train.py --role ceiling trains on), each once
    task = load_task("safety", data_dir=shared_data, seed=0, limit=cfg["limit"])
    assert sorted(data["ids"][i] for i in r.order) == sorted(x["id"] for x in task.splits["w2s_train"])
    assert len(r.order) == len(set(r.order)) == cfg["limit"]
    # the same batches, in the same order, and the Trainer took one optimizer step per batch
    assert r.records["ours"] == r.records["ref"] == [r.batches] and r.same_rows()
    assert r.trainer.state.global_step == len(r.batches) == len(seen["ours"]) == len(seen["ref"])
    for b, (idx, mask), kw in zip(r.batches, seen["ours"], seen["ref"]):
        ref_ids, ref_mask, ref_labels = kw["input_ids"], kw["attention_mask"], kw["labels"]
        assert ref_ids.shape == (len(b), L)  # the recipe pads every row to max_length ...
        assert idx.shape == (len(b), max(len(data["seqs"][i]) for i in b))  # ... ours to the batch's longest row
        for j, i in enumerate(b):
            seq = data["seqs"][i]
            n = len(seq)
            assert len(seq) <= L and idx[j, :n].tolist() == seq == ref_ids[j, :n].tolist()  # same tokens
            assert (idx[j, n:] == pad).all() and (ref_ids[j, n:] == pad).all()
            assert ref_mask[j].sum() == n and (mask is None or mask[j].sum() == n)
            assert ref_labels[j] == data["labels"][i] == data["targets"][i].argmax()  # same labels
    # the recipe's settings, as yeruimeng/WTS safety/train.py sets them (fp16 only on CUDA)
    a = r.trainer.args
    assert (a.per_device_train_batch_size, a.learning_rate, a.weight_decay, a.fp16) == (cfg["batch_size"], 5e-5, 0.1,
                                                                                        False)
    assert all(g["weight_decay"] == 0.1 for g in r.trainer.optimizer.param_groups)


def run_llama_family(data_dir):
    n = torch.get_num_threads()
    try:
        return bench.main(["--family", "llama", "--quick", "--json", "--threads", "1", "--data-dir", str(data_dir)])
    finally:
        torch.set_num_threads(n)


def test_llama_family_rows_run_on_tiny_shapes_and_both_sides_compute_the_same(shared_data, smollm2_gguf):
    # smollm2_gguf: the trunk's rows are tokenized with the SmolLM2 GGUF's tokenizer (skipped where it cannot be had)
    res = run_llama_family(shared_data)
    assert list(res["sections"]) == common.FAMILIES["llama"] == ["llama-train", "llama-generate", "trunk"]
    rows = res["rows"]
    assert not [r for r in rows if r["kind"] == "skipped"]
    checks = {r["section"]: r for r in rows if r["kind"] == "check"}
    assert set(checks) == set(common.FAMILIES["llama"]) and all(r["ok"] for r in checks.values()), checks
    assert checks["llama-generate"]["value"] == 1.0 and checks["trunk"]["value"] <= 1e-5 and res["checks_ok"]
    timings = [r for r in rows if r["kind"] == "timing"]
    # 2 precisions x 3 rows, packed vs per-length bf16, and 2 bf16-vs-fp32 rows
    assert [r["section"] for r in timings].count("trunk") == 9
    for r in timings:
        for key in ("ours", "ref", "speedup"):
            s = r[key]
            assert len(s["rounds"]) == 3 and all(math.isfinite(v) and v > 0 for v in s["rounds"]), (r["measure"], key)
    # the trunk's tokens are the real rows' SmolLM2 tokens: 8 w2s_train texts, truncated to --quick's 32
    trunk = next(r for r in timings if r["section"] == "trunk")
    assert "8 safety rows" in trunk["measure"] and "random:smollm2-135m@2" in trunk["measure"]
    bf16 = next(r for r in rows if r["section"] == "trunk" and r["kind"] == "value")
    assert 0 < bf16["ours"] < 0.1 and 0 < bf16["ref"] < 0.1  # bf16 moves the features, but not far
    packed = next(r for r in rows if r["measure"].startswith("bf16: features max |packed"))
    # packed bf16 weights: autocast's numbers to bf16's own rounding (a mistake in the packing, a text attending to
    # another, moves them by O(1)); the rounding depends on the kernels: 3.2e-3 on an Intel Xeon with AMX, under its
    # bf16-vs-fp32 7.2e-3, below 1e-3 on an AMD EPYC (2026-12-07)
    assert 0 <= packed["ours"] <= bf16["ours"]
    shares = [v for r in rows if "matmul rate" in r["measure"] for v in (r["ours"], r["ref"])]
    assert len(shares) == 4 and all(0 < v < 2 for v in shares)
    # the limit of the trunk's own shapes: its matmuls alone, a share of the large matmul's rate and of its pass
    alone = [r["ours"] for r in rows if "matmuls alone" in r["measure"] or "time in those matmuls" in r["measure"]]
    assert len(alone) == 2 and all(0 < v < 2 for v in alone), alone


def test_a_perturbed_reference_weight_fails_every_llama_parity_check(shared_data, smollm2_gguf, monkeypatch, capsys):
    def perturbed(model):  # transformers' side only: its final norm's weight scaled by random factors
        with torch.no_grad():
            norm = model.model.norm if hasattr(model, "model") else model.norm
            norm.weight.mul_(1 + torch.rand(norm.weight.shape, generator=torch.Generator().manual_seed(0)))
        return model
    pair, reference = llama_family.llama_pair, trunk.trunk_reference  # patched where the sections look them up
    monkeypatch.setattr(llama_family, "llama_pair", lambda *a, **k: (lambda o, h: (o, perturbed(h)))(*pair(*a, **k)))
    monkeypatch.setattr(trunk, "trunk_reference", lambda ctx, ours: perturbed(reference(ctx, ours)))
    res = run_llama_family(shared_data)
    checks = {r["section"]: r for r in res["rows"] if r["kind"] == "check"}
    assert set(checks) == set(common.FAMILIES["llama"]) and not any(r["ok"] for r in checks.values()), checks
    assert not res["checks_ok"]  # bench.py exits 1: its timings compare different computations
    common.print_suite(res)
    out = capsys.readouterr().out
    assert out.count("CHECK FAILED") == 4  # the three rows and the closing line


def test_a_max_length_with_no_room_for_an_rtp_prompt_is_refused_before_any_work():
    with pytest.raises(UserError, match=r"argument --max-length: 20 leaves no room for a prompt before the rtp "
                                        r"section's 20 new tokens"):
        bench.parse_args(["--sections", "rtp", "--max-length", "20", "--rtp-new-tokens", "20"])
    assert bench.parse_args(["--sections", "train", "--max-length", "20", "--rtp-new-tokens", "20"])[1]["max_length"] == 20
