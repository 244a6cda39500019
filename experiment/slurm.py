"""
Every stage of an experiment as a SLURM job (w2s.py --launcher slurm), through submitit (pip install -e '.[slurm]'):

    python w2s.py --sizes toy-xs,toy-s,toy-m,toy-l --chain toy-s,toy-m --launcher slurm
    python w2s.py --task safety --launcher slurm --slurm-partition gpu --slurm-gpus 1 --slurm-time 60 \\
        --slurm-student-partition a100 --slurm-student-mem 64G --slurm-student-time 600
    python w2s.py --task safety --launcher slurm --slurm-account my-lab --slurm-qos high \\
        --slurm-sbatch constraint=a100 exclusive          # any other sbatch option, KEY=VALUE or a bare KEY

Each job runs its stage's command of --print-commands (with this interpreter, from this directory, OMP_NUM_THREADS
set to its CPUs); its sbatch script, pickles and logs land in <stage>/slurm/ (<jobid>_0_log.out, <jobid>_0_log.err).
Every stage is submitted at once, each with afterok on the jobs of its inputs, so the cluster runs the graph in order
while w2s.py waits, printing a progress line whenever it changes (stages done, running, pending; job attempts
failed), then evaluates.

    finished stages  are found by content before anything is submitted (stages.stage_done: settings, outputs and
                     inputs by sha256, as train.py checks them), so a rerun after this process died submits only the
                     rest; a stage downstream of one that runs is run again too (its metrics.json removed first), as
                     the local launcher reruns it when an input was redone
    queued jobs      of an earlier w2s.py that died are taken over when their inputs are finished or taken over too,
                     and cancelled otherwise, so a stage never runs twice at once
    a failed job     (failed, cancelled, timed out, preempted, out of memory, node failure, or ended without a stage
                     that checks out) is resubmitted up to --slurm-retries times; the jobs waiting on it are cancelled
                     and submitted again after it. Ctrl-C or a stage out of retries cancels every job still queued.
Resources: the --slurm-* flags apply to every job, the --slurm-student-* ones to the stages of a strong model (ceiling,
students, chain steps, prompting), each defaulting to the former. GPUs are all or none (one numerics per experiment):
with --slurm-gpus 1, --device auto means cuda, the compute nodes' numerics, whatever node w2s.py runs on.
Job states come from sacct, as submitit reads them: the cluster needs accounting (slurmdbd). Only the take-over asks
squeue, since sacct learns of a job seconds after its submission.
"""
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field

from core.cli import UserError
from experiment import evaluation
from experiment.stages import command, stage_cfg, stage_done
from run import rundir


@dataclass
class SlurmConfig:
    slurm_partition: str = ""   # partition of every job; "" = the cluster's default
    slurm_time: int = 240       # minutes a job may run before SLURM stops it
    slurm_gpus: int = 0         # GPUs of every job, 0 or 1 (a stage computes on one); 1 makes --device auto mean cuda
    slurm_cpus: int = 1         # CPUs of every job (its torch threads: OMP_NUM_THREADS)
    slurm_mem: str = ""         # memory of every job as sbatch --mem takes it (16G, 4000M); "" = the partition's default
    slurm_student_partition: str = ""  # partition of the strong model's stages (ceiling, students, chain,
    # prompting); "" = --slurm-partition
    slurm_student_time: int = 0  # their minutes; 0 = --slurm-time
    slurm_student_cpus: int = 0  # their CPUs; 0 = --slurm-cpus
    slurm_student_mem: str = ""  # their memory; "" = --slurm-mem
    slurm_retries: int = 2      # times a failed, cancelled, timed-out or preempted job is resubmitted
    slurm_account: str = ""     # account every job is charged to (sbatch --account); "" = your default account
    slurm_qos: str = ""         # quality of service of every job (sbatch --qos); "" = your association's default
    slurm_sbatch: list[str] = field(default_factory=list)  # other sbatch options of every job, each KEY=VALUE or a
    # bare KEY (constraint=a100 exclusive): an "#SBATCH --KEY[=VALUE]" line of its script


# sacct's states of a job that may still end well (UNKNOWN: just submitted, not in sacct yet); LocalJob's RUNNING
LIVE = {"PENDING", "RUNNING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "CONFIGURING", "COMPLETING", "RESIZING",
        "SUSPENDED", "SIGNALING", "STAGE_OUT", "READY", "UNKNOWN", "RESV_DEL_HOLD"}
SUCCESS = {"COMPLETED", "FINISHED"}  # SLURM's, and submitit's LocalExecutor's (a process that exited 0)
POLL_SECONDS = 10.0  # between two looks at the jobs' states (one sacct call)
BACKEND = "slurm"  # tests: "local", submitit's LocalExecutor (no afterok: a stage is submitted once its inputs are done)


def check(cfg, base):
    """One line for a bad --slurm-* value or a cluster w2s.py cannot use (before OUT is made); with GPUs, --device
    auto becomes cuda."""
    s = cfg.slurm
    for flag, ok, why in [("jobs", cfg.jobs == 1, "is the local launcher's; SLURM runs every ready stage at once"),
                          ("slurm_time", s.slurm_time >= 1, "must be at least 1 (minutes)"),
                          ("slurm_student_time", s.slurm_student_time >= 0, "must be >= 0 (0 = --slurm-time)"),
                          ("slurm_gpus", s.slurm_gpus in (0, 1), "must be 0 or 1: a stage's train.py computes on one "
                           "GPU (w2s.py starts no torchrun)"),
                          ("slurm_cpus", s.slurm_cpus >= 1, "must be at least 1"),
                          ("slurm_student_cpus", s.slurm_student_cpus >= 0, "must be >= 0 (0 = --slurm-cpus)"),
                          ("slurm_mem", re.fullmatch(r"(\d+[KMGT]?)?", s.slurm_mem), "must be a size like 16G or 4000M"),
                          ("slurm_student_mem", re.fullmatch(r"(\d+[KMGT]?)?", s.slurm_student_mem),
                           "must be a size like 16G or 4000M"),
                          ("slurm_retries", s.slurm_retries >= 0, "must be >= 0")]:
        if not ok:
            value = getattr(cfg, flag) if flag == "jobs" else getattr(s, flag)
            raise UserError(f"argument --{flag.replace('_', '-')}: {why} (got {value})")
    sbatch_options(s.slurm_sbatch)  # refused here, in one line, not by sbatch at the first submission
    if s.slurm_gpus and base.device == "cpu":
        raise UserError("argument --slurm-gpus: the stages run with --device cpu and would not use the GPU; give 0")
    if s.slurm_gpus and base.device == "auto":  # the nodes' device, not this one's: experiment.json records it
        base.device = "cuda"
    try:
        import submitit  # noqa: F401
    except ImportError:
        raise UserError("--launcher slurm needs submitit: pip install -e '.[slurm]'") from None
    if BACKEND == "slurm" and not cfg.print_commands:
        check_cluster()


def check_cluster():
    """sbatch to submit with and sacct to read job states from (submitit's way: it needs SLURM's accounting)."""
    if shutil.which("sbatch") is None:
        raise UserError("--launcher slurm: sbatch is not on PATH; run w2s.py where SLURM jobs are submitted")
    r = subprocess.run(["sacct", "--noheader", "--parsable2", "-j", "1"], capture_output=True, text=True)
    if r.returncode != 0:
        why = (r.stderr.strip().splitlines() or ["no message"])[-1]
        raise UserError(f"--launcher slurm reads job states with sacct, which fails here: {why}")


# ----------------------------------------------------------------------------------------------------------------
# one stage's job

def resources(stage, s):
    """(partition, minutes, gpus, cpus, mem) of a stage's job: the strong model's stages get --slurm-student-*."""
    strong = getattr(stage.cfg, "role", "prompt") != "weak"  # prompting baselines prompt the strong model
    if not strong:
        return s.slurm_partition, s.slurm_time, s.slurm_gpus, s.slurm_cpus, s.slurm_mem
    return (s.slurm_student_partition or s.slurm_partition, s.slurm_student_time or s.slurm_time, s.slurm_gpus,
            s.slurm_student_cpus or s.slurm_cpus, s.slurm_student_mem or s.slurm_mem)


# sbatch options w2s.py sets itself: --slurm-sbatch may not give them (the flag of its own, where there is one)
OWN_OPTIONS = {"job-name": "", "time": "--slurm-time", "cpus-per-task": "--slurm-cpus", "partition": "--slurm-partition",
               "gpus-per-node": "--slurm-gpus", "mem": "--slurm-mem", "account": "--slurm-account",
               "qos": "--slurm-qos", "dependency": "", "output": "", "error": "", "open-mode": "", "signal": ""}


def sbatch_options(items):
    """{key: value, or True for a bare key} of --slurm-sbatch's KEY=VALUE items (sbatch's long names, no dashes)."""
    options = {}
    for item in items:
        key, eq, value = item.partition("=")
        key = key.strip().removeprefix("--")
        if not re.fullmatch(r"[a-z][a-z0-9-]*", key) or (eq and not value):
            raise UserError(f"argument --slurm-sbatch: {item!r} is not an sbatch option KEY=VALUE or KEY "
                            "(sbatch's long name: constraint=a100, exclusive)")
        if key.replace("_", "-") in OWN_OPTIONS:
            own = OWN_OPTIONS[key.replace("_", "-")]
            raise UserError(f"argument --slurm-sbatch: {key} is set by w2s.py" + (f"; give {own}" if own else ""))
        options[key] = value if eq else True
    return options


def slurm_executor(folder, stage, resources_, after, s):
    import submitit
    partition, minutes, gpus, cpus, mem = resources_
    executor = submitit.SlurmExecutor(folder=folder)
    extra = sbatch_options(s.slurm_sbatch) | ({"dependency": "afterok:" + ":".join(after)} if after else {})
    executor.update_parameters(
        job_name=f"w2s:{stage.path}", time=minutes, cpus_per_task=cpus, setup=[f"export OMP_NUM_THREADS={cpus}"],
        **({"partition": partition} if partition else {}), **({"gpus_per_node": gpus} if gpus else {}),
        **({"mem": mem} if mem else {}), **({"account": s.slurm_account} if s.slurm_account else {}),
        **({"qos": s.slurm_qos} if s.slurm_qos else {}), **({"additional_parameters": extra} if extra else {}))
    return executor


def local_executor(folder, stage, resources_, after, s):
    import submitit
    assert not after, "the local executor has no dependencies: submit a stage once its inputs are done"
    _, minutes, gpus, cpus, _ = resources_
    executor = submitit.LocalExecutor(folder=folder)
    executor.update_parameters(timeout_min=minutes, gpus_per_node=gpus, setup=[f"export OMP_NUM_THREADS={cpus}"])
    return executor


# name -> (the executor of one stage's job, whether a job can wait for others: SLURM's afterok)
BACKENDS = {"slurm": (slurm_executor, True), "local": (local_executor, False)}


def submit(stage, out, s, after):
    """The stage's job: its command (as --print-commands prints it) run from this directory, after the jobs `after`."""
    import submitit
    from submitit.core.utils import FailedJobError
    make_executor, _ = BACKENDS[BACKEND]
    executor = make_executor(out / stage.path / "slurm", stage, resources(stage, s), after, s)
    try:
        return executor.submit(submitit.helpers.CommandFunction(command(stage, out, python=sys.executable),
                                                                cwd=os.getcwd()))
    except (FailedJobError, subprocess.CalledProcessError) as e:  # sbatch refused it: a bad partition, memory, ...
        raise UserError(f"sbatch refused the job of {stage.path}: {last_line(str(e))}") from None


def refresh():
    """One sacct call for every job this process watches (submitit's own schedule slows to one per 10 minutes)."""
    if BACKEND == "slurm":
        import submitit
        submitit.SlurmJob.watcher.update()


def state_of(job):
    """SLURM's state of a job as the last refresh() saw it (CANCELLED, not "CANCELLED by 0"), or the LocalExecutor's."""
    state = job.watcher.get_state(job.job_id, mode="cache") if BACKEND == "slurm" else job.state
    return (state or "UNKNOWN").split()[0].upper()


def last_line(text):
    lines = [line for line in text.strip().splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    return (errors or lines or ["no message"])[-1].strip()


def log_of(job):
    return job.paths.stderr


# ----------------------------------------------------------------------------------------------------------------
# the stage graph as jobs

def finished_stages(stages, out):
    """The stages found done by content, in dependency order: each only when its inputs are done too."""
    done = set()
    for stage in stages:
        if all(n in done for n in stage.needs) and stage_done(stage_cfg(stage, out))[0]:
            done.add(stage.path)
    return done


def queue_states():
    """{job id: state} of this user's jobs slurmctld holds now. squeue asks slurmctld itself; sacct reads slurmdbd,
    which learns of a job seconds after its submission, so a job the dead process submitted just before dying would
    look unknown there, and be neither taken over nor cancelled while a second copy of it ran."""
    listed = subprocess.run(["squeue", "--me", "-h", "-o", "%i|%T"], capture_output=True, text=True)
    if listed.returncode:
        raise UserError(f"squeue failed: {last_line(listed.stderr or listed.stdout)}")
    return dict(line.split("|", 1) for line in listed.stdout.splitlines() if "|" in line)


def take_over(todo, out, done):
    """{path: job} of an earlier w2s.py's jobs still queued or running (its process died), taken over when each of
    their inputs is done or taken over too; a queued job whose input is neither is cancelled (it would run on stale
    labels, or wait for a job that never comes)."""
    import submitit
    candidates, jobs = [], {}
    for stage in todo:
        folder = out / stage.path / "slurm"
        ids = sorted(int(p.name.split("_")[0]) for p in folder.glob("*_submitted.pkl") if p.name.split("_")[0].isdigit())
        if ids and not list(folder.glob(f"{ids[-1]}_*_result.pkl")):  # its latest job has not ended by itself
            candidates.append((stage, submitit.SlurmJob(folder=folder, job_id=str(ids[-1]))))
    queued = queue_states() if candidates else {}
    for stage, job in candidates:
        if queued.get(job.job_id) not in LIVE - {"UNKNOWN"}:
            continue
        if all(n in done or n in jobs for n in stage.needs):
            jobs[stage.path] = job
            print(f"[slurm] {stage.path}: taking over job {job.job_id} of an earlier w2s.py", flush=True)
        else:
            job.cancel(check=False)
    return jobs


def downstream(stages, path):
    """Every stage that reads `path`'s outputs, directly or not."""
    below = {path}
    for stage in stages:  # dependency order: a stage's inputs come before it
        if any(n in below for n in stage.needs):
            below.add(stage.path)
    return below - {path}


def run_stages(stages, out, cfg, scorer):
    """Every stage not found done as a job, each after its inputs, resubmitted when it fails; w2s.py's run_stages
    for --launcher slurm. Returns each stage's seconds, from submission to its end (the queue's wait included)."""
    s, (_, afterok) = cfg.slurm, BACKENDS[BACKEND]
    by_path = {stage.path: stage for stage in stages}
    if any(n not in by_path for stage in stages for n in stage.needs):
        raise RuntimeError(f"stages wait for inputs that are never run: {[st.path for st in stages]}")
    done = finished_stages(stages, out)
    jobs = take_over([st for st in stages if st.path not in done], out, done) if afterok else {}
    for stage in stages:
        if stage.path not in done and stage.path not in jobs:
            rundir.invalidate(out / stage.path)  # a killed or failed job never passes for the old result
    print(f"[slurm] {len(done)} of {len(stages)} stages found done; {len(stages) - len(done)} to run", flush=True)
    for stage in stages:
        if stage.path in done:
            score(stage, out, scorer)
    tries, since, seconds, shown = {}, dict.fromkeys(jobs, time.time()), dict.fromkeys(done, 0.0), None
    try:
        while len(done) < len(stages):
            refresh()
            for path, job in list(jobs.items()):
                state = state_of(job)
                if state in LIVE:
                    continue
                del jobs[path]
                why = failure(job, state) or (None if stage_done(stage_cfg(by_path[path], out))[0] else
                                              "ended without a stage that checks out")
                if why is None:
                    done.add(path)
                    seconds[path] = time.time() - since[path]
                    score(by_path[path], out, scorer)
                else:
                    retry(stages, path, job, why, jobs, tries, s.slurm_retries)
            submit_ready(stages, out, s, done, jobs, since, afterok)
            line = progress_line(stages, done, jobs, sum(tries.values()))
            if line != shown:
                print(line, flush=True)
                shown = line
            if len(done) < len(stages):
                time.sleep(POLL_SECONDS)
    except BaseException:
        for job in jobs.values():
            job.cancel(check=False)
        if jobs:
            print(f"[slurm] cancelled {len(jobs)} job(s) still queued or running", flush=True)
        raise
    return seconds


def submit_ready(stages, out, s, done, jobs, since, afterok):
    """Submit every stage whose inputs are done, or with afterok, have jobs of their own (it waits on them)."""
    for stage in stages:
        if stage.path not in done and stage.path not in jobs and all(
                n in done or (afterok and n in jobs) for n in stage.needs):
            after = [jobs[n].job_id for n in stage.needs if n not in done]
            jobs[stage.path], since[stage.path] = submit(stage, out, s, after), time.time()
            print(f"[slurm] submitted {stage.path}: job {jobs[stage.path].job_id}" +
                  (f" (after {', '.join(after)})" if after else ""), flush=True)


def failure(job, state):
    """Why a job that ended failed: its state, or "failed" where its command did (the LocalExecutor's FINISHED says
    only that its process ended), or None."""
    from submitit.core.utils import pickle_load
    if state not in SUCCESS:
        return state.lower()
    result = job.paths.result_pickle
    return "failed" if result.is_file() and pickle_load(result)[0] == "error" else None


def retry(stages, path, job, why, jobs, tries, retries):
    """A job that ended without its stage done: the jobs waiting on it are cancelled (the loop submits them again
    after it), and it is resubmitted, or after `retries` resubmissions the run stops with its log's last error."""
    for waiting in downstream(stages, path) & set(jobs):
        jobs.pop(waiting).cancel(check=False)
    tries[path] = tries.get(path, 0) + 1
    if tries[path] > retries:
        log = log_of(job)
        error = last_line(log.read_text(errors="replace")) if log.is_file() else "no log"
        raise UserError(f"stage {path} failed {tries[path]} time(s), last as job {job.job_id} ({why}): {error} "
                        f"(log: {log})")
    print(f"[slurm] {path}: job {job.job_id} {why}; resubmitting ({tries[path]} of {retries})", flush=True)


def progress_line(stages, done, jobs, failed):
    running = sum(state_of(job) in ("RUNNING", "COMPLETING") for job in jobs.values())
    pending = len(stages) - len(done) - running
    return f"[slurm] {len(done)}/{len(stages)} done, {running} running, {pending} pending, {failed} failed"


def score(stage, out, scorer):
    for run in stage.scored:  # generation: test continuations -> <run>/scores.json, skipped when done
        evaluation.score_run(out / run, scorer)
