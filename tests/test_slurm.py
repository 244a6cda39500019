"""w2s.py --launcher slurm (slurm.py): every stage a job through submitit, after its inputs, resubmitted when it fails,
found done by content on a rerun. The fast tests run the jobs through submitit's LocalExecutor (local processes); the
cluster tests through a real one-node SLURM cluster (tests/slurm_cluster.py), skipped where SLURM is not installed."""
import os
import re
import subprocess
import sys
import threading
import time
import types

import pytest

import slurm_cluster
import w2s
from core.cli import UserError
from experiment import slurm
from helpers import kill_w2s_after, run_script, without_paths

ARGS = ["--task", "toy", "--limit", "40", "--epochs", "1", "--n-boot", "50", "--ensemble", "0", "--students", "naive",
        "--lr", "1e-3", "--quiet"]
PAIR = ARGS + ["--weak", "random:1x16", "--strong", "random:1x32"]
# three models, every pair's naive student and a chain through the middle one: 8 stages, three deep
SWEEP = ARGS + ["--sizes", "random:1x16,random:1x32,random:2x32", "--chain", "random:1x32"]
FAIL = "import sys; print('error: this job fails', file=sys.stderr); sys.exit(3)"


@pytest.fixture(scope="module")
def pair_results(tmp_path_factory):
    """The pair's results run the local way (--jobs 1, in this process)."""
    return without_paths(w2s.main(PAIR + ["--out", str(tmp_path_factory.mktemp("local"))]))


@pytest.fixture
def local_jobs(monkeypatch):
    """--launcher slurm through submitit's LocalExecutor; every submission recorded: (stage, its inputs finished?)."""
    pytest.importorskip("submitit")
    monkeypatch.setattr(slurm, "BACKEND", "local")
    monkeypatch.setattr(slurm, "POLL_SECONDS", 0.2)
    submitted, real = [], slurm.submit

    def recording(stage, out, s, after):
        submitted.append((stage.path, all((out / n / "metrics.json").is_file() for n in stage.needs)))
        return real(stage, out, s, after)
    monkeypatch.setattr(slurm, "submit", recording)
    return submitted


def failing(monkeypatch, path, times):
    """The job of stage `path` fails its first `times` runs (a command that exits 3 with an error line)."""
    real, runs = slurm.command, []

    def command(stage, out, python="python"):
        runs.append(stage.path)
        return [python, "-c", FAIL] if stage.path == path and runs.count(path) <= times else real(stage, out, python)
    monkeypatch.setattr(slurm, "command", command)


@pytest.mark.slow
def test_each_stage_is_a_job_after_its_inputs_running_its_printed_command_and_a_rerun_submits_nothing(
        tmp_path, local_jobs, pair_results, capsys):
    out = tmp_path / "slurm"
    assert without_paths(w2s.main(PAIR + ["--launcher", "slurm", "--out", str(out)])) == pair_results
    assert sorted(path for path, _ in local_jobs) == ["seed0/ceiling", "seed0/student_naive", "seed0/weak"]
    assert all(inputs_done for _, inputs_done in local_jobs)  # the student only once the weak labels were written
    printed = capsys.readouterr().out
    assert "[slurm] 3/3 done, 0 running, 0 pending, 0 failed" in printed
    w2s.main(PAIR + ["--launcher", "slurm", "--out", str(out), "--print-commands"])
    commands = [line.split(" ", 1)[1] for line in capsys.readouterr().out.splitlines() if "train.py" in line]
    logs = [(out / "seed0" / stage / "slurm").glob("*_log.out") for stage in ("weak", "ceiling", "student_naive")]
    sent = [re.search(r'The following command is sent: "(.*)"', log.read_text()).group(1) for g in logs for log in g]
    assert [c.split(" ", 1)[1] for c in sent] == commands  # the job's command is the printed one, with this python
    local_jobs.clear()
    assert without_paths(w2s.main(PAIR + ["--launcher", "slurm", "--out", str(out)])) == pair_results
    assert local_jobs == [] and "[slurm] 3 of 3 stages found done; 0 to run" in capsys.readouterr().out


@pytest.mark.slow
def test_a_failed_job_is_resubmitted_and_the_results_do_not_change(tmp_path, local_jobs, pair_results, monkeypatch,
                                                                     capsys):
    failing(monkeypatch, "seed0/weak", times=1)
    assert without_paths(w2s.main(PAIR + ["--launcher", "slurm", "--out", str(tmp_path)])) == pair_results
    assert [path for path, _ in local_jobs].count("seed0/weak") == 2
    assert re.search(r"\[slurm\] seed0/weak: job \d+ failed; resubmitting \(1 of 2\)", capsys.readouterr().out)


def test_a_job_out_of_retries_stops_the_run_with_its_error_and_cancels_the_rest(tmp_path, local_jobs, monkeypatch):
    failing(monkeypatch, "seed0/weak", times=2)
    with pytest.raises(UserError, match=r"stage seed0/weak failed 2 time\(s\), last as job \d+ \(failed\): "
                                        r"error: this job fails \(log: .*seed0/weak/slurm/\d+_0_log.err\)"):
        w2s.main(PAIR + ["--launcher", "slurm", "--slurm-retries", "1", "--out", str(tmp_path)])
    assert "seed0/student_naive" not in [path for path, _ in local_jobs]  # its input never came


@pytest.mark.parametrize("flags, error", [
    (["--slurm-retries", "-1"], "argument --slurm-retries: must be >= 0 (got -1)"),
    (["--slurm-time", "0"], "argument --slurm-time: must be at least 1 (minutes) (got 0)"),
    (["--slurm-gpus", "2"], "argument --slurm-gpus: must be 0 or 1"),
    (["--slurm-cpus", "0"], "argument --slurm-cpus: must be at least 1 (got 0)"),
    (["--slurm-student-mem", "lots"], "argument --slurm-student-mem: must be a size like 16G or 4000M (got lots)"),
    (["--jobs", "2"], "argument --jobs: is the local launcher's; SLURM runs every ready stage at once (got 2)"),
    (["--slurm-gpus", "1", "--device", "cpu"], "argument --slurm-gpus: the stages run with --device cpu"),
    (["--slurm-sbatch", "time=10"], "argument --slurm-sbatch: time is set by w2s.py; give --slurm-time"),
    (["--slurm-sbatch", "dependency=afterok:1"], "argument --slurm-sbatch: dependency is set by w2s.py"),
    (["--slurm-sbatch", "constraint="], "argument --slurm-sbatch: 'constraint=' is not an sbatch option KEY=VALUE"),
    (["--slurm-sbatch", "-x node1"], "argument --slurm-sbatch: '-x node1' is not an sbatch option KEY=VALUE")])
def test_bad_slurm_values_are_refused_in_one_line(flags, error):
    with pytest.raises(UserError) as e:
        w2s.parse_args(["--launcher", "slurm"] + flags)
    assert str(e.value).startswith(error)


def test_with_a_gpu_per_job_device_auto_means_the_nodes_cuda_whatever_this_machine_has():
    from run import runtime
    pytest.importorskip("submitit")
    _, base = w2s.parse_args(["--launcher", "slurm", "--slurm-gpus", "1", "--print-commands"])
    assert base.device == "cuda" and runtime.numerics(base) == {"device": "cuda", "dtype": "bf16"}
    _, base = w2s.parse_args(["--launcher", "slurm", "--print-commands"])
    assert base.device == "auto"


def test_account_qos_and_other_sbatch_options_are_every_jobs_parameters(tmp_path):
    pytest.importorskip("submitit")
    cfg, _ = w2s.parse_args(["--launcher", "slurm", "--print-commands", "--slurm-account", "lab", "--slurm-qos", "high",
                             "--slurm-sbatch", "constraint=a100", "exclusive", "mail-type=END,FAIL"])
    for role in ("weak", "student"):
        stage = types.SimpleNamespace(path=f"seed0/{role}", cfg=types.SimpleNamespace(role=role))
        executor = slurm.slurm_executor(tmp_path, stage, slurm.resources(stage, cfg.slurm), ["11", "12"], cfg.slurm)
        assert executor.parameters["account"] == "lab" and executor.parameters["qos"] == "high"
        assert executor.parameters["additional_parameters"] == {
            "constraint": "a100", "exclusive": True, "mail-type": "END,FAIL", "dependency": "afterok:11:12"}
    plain, _ = w2s.parse_args(["--launcher", "slurm", "--print-commands"])
    executor = slurm.slurm_executor(tmp_path, stage, slurm.resources(stage, plain.slurm), [], plain.slurm)
    assert not {"account", "qos", "additional_parameters"} & set(executor.parameters)


def test_without_sbatch_the_run_stops_in_one_line_before_it_makes_its_directory(tmp_path):
    pytest.importorskip("submitit")
    code, out, err = run_script("w2s.py", PAIR + ["--launcher", "slurm", "--out", tmp_path / "run"],
                                env={"PATH": os.path.dirname(sys.executable)})
    assert code == 2 and err.strip().splitlines() == [
        "error: --launcher slurm: sbatch is not on PATH; run w2s.py where SLURM jobs are submitted"]
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------------------------------------------
# a real SLURM cluster

@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A one-node SLURM cluster for this module's tests (SLURM_CONF set for them and their subprocesses)."""
    why = slurm_cluster.missing()
    if why:
        pytest.skip(why)
    pytest.importorskip("submitit")
    directory, before = tmp_path_factory.mktemp("cluster"), os.environ.get("SLURM_CONF")
    try:
        os.environ["SLURM_CONF"] = slurm_cluster.start(directory)
        yield directory
    finally:
        subprocess.run(["scancel", "--user", "root"], capture_output=True)
        slurm_cluster.stop(directory)
        os.environ.pop("SLURM_CONF") if before is None else os.environ.update(SLURM_CONF=before)


@pytest.fixture(scope="module")
def sweep_results(tmp_path_factory):
    return without_paths(w2s.main(SWEEP + ["--out", str(tmp_path_factory.mktemp("local"))]))


def scancel_when_running(job_name, killed, timeout=120):
    """scancel the job named `job_name` as soon as SLURM runs it; its id goes into `killed`."""
    deadline = time.time() + timeout
    while time.time() < deadline and not killed:
        queue = subprocess.run(["squeue", "-h", "-o", "%i|%j|%T"], capture_output=True, text=True).stdout
        for job_id, name, state in (line.split("|") for line in queue.splitlines()):
            if name == job_name and state == "RUNNING":
                subprocess.run(["scancel", job_id], check=True)
                killed.append(job_id)
        time.sleep(0.2)


@pytest.mark.slow
def test_a_sweep_with_a_chain_on_slurm_gives_the_jobs_1_results_with_a_job_scancelled_mid_run(
        tmp_path, cluster, sweep_results, monkeypatch, capsys):
    """Also: the jobs are charged to --slurm-account under --slurm-qos (as sacct records them), and every job's script
    carries the --slurm-sbatch options."""
    monkeypatch.setattr(slurm, "POLL_SECONDS", 0.5)
    for command in (["add", "account", "w2slab"], ["add", "user", "root", "account=w2slab"]):
        subprocess.run(["sacctmgr", "-i", *command], check=True, capture_output=True)
    victim, killed = "seed0/random-1x16__random-1x32/student_naive", []  # the chain's first step: two stages wait on it
    killer = threading.Thread(target=scancel_when_running, args=(f"w2s:{victim}", killed))
    killer.start()
    results = w2s.main(SWEEP + ["--launcher", "slurm", "--slurm-account", "w2slab", "--slurm-qos", "normal",
                                "--slurm-sbatch", "comment=w2s-test", "nice=5", "--out", str(tmp_path)])
    killer.join()
    assert without_paths(results) == sweep_results
    printed = capsys.readouterr().out
    assert killed and f"[slurm] {victim}: job {killed[0]} cancelled; resubmitting (1 of 2)" in printed
    assert re.search(r"\[slurm\] submitted seed0/chain/2_random-2x32: job \d+ \(after \d+\)", printed)  # afterok
    scripts = sorted(tmp_path.glob("seed0/**/slurm/*_submission.sh"))
    assert len(scripts) >= 9 and all({"#SBATCH --comment=w2s-test", "#SBATCH --nice=5", "#SBATCH --account=w2slab",
                                      "#SBATCH --qos=normal"} <= set(p.read_text().splitlines()) for p in scripts)
    ids = [p.name.split("_")[0] for p in scripts]
    deadline = time.time() + 60
    while True:  # sacct learns of a job seconds after it ends
        rows = subprocess.run(["sacct", "-X", "-n", "-P", "-o", "JobID,Account,QOS", "-j", ",".join(ids)],
                              capture_output=True, text=True).stdout.split()
        if len(rows) == len(ids) or time.time() > deadline:
            break
        time.sleep(1)
    assert sorted(rows) == sorted(f"{i}|w2slab|normal" for i in ids)


@pytest.mark.slow
def test_a_rerun_after_the_submitting_process_died_takes_over_its_queued_jobs(tmp_path, cluster, sweep_results,
                                                                             monkeypatch, capsys):
    monkeypatch.setattr(slurm, "POLL_SECONDS", 0.5)
    args = SWEEP + ["--launcher", "slurm", "--out", str(tmp_path)]
    kill_w2s_after(args, tmp_path / "seed0" / "random-1x16" / "weak" / "metrics.json")
    assert without_paths(w2s.main(args)) == sweep_results
    printed = capsys.readouterr().out
    assert "of an earlier w2s.py" in printed and "[slurm] 8/8 done" in printed
