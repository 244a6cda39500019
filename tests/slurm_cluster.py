"""A real one-node SLURM cluster on this machine, for tests/test_slurm.py: Debian's slurm-wlm (slurmctld, slurmd),
slurmdbd on a private MariaDB (submitit reads job states with sacct, which needs accounting) and munge, each with
its own directory, ports and munge socket, so it touches no system daemon and two test sessions do not meet.

    apt-get install -y slurm-wlm slurmdbd munge mariadb-server     # Debian 12: about a minute; .ci/run does it

start(directory) starts the daemons as root (SlurmUser=root, no cgroups: proctrack/linuxproc, task/none) and returns
the SLURM_CONF path that sbatch, sacct, squeue and scancel read; stop(directory) ends them.
"""
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

DAEMONS = ("munged", "mariadbd", "mariadb-install-db", "slurmdbd", "slurmctld", "slurmd", "sbatch", "sacct")
STOP_ORDER = ("slurmd", "slurmctld", "slurmdbd", "mariadbd", "munged")  # pid files under <directory>/run


def missing():
    """Why this machine cannot run the cluster, or None."""
    absent = [name for name in DAEMONS if shutil.which(name) is None and not Path("/usr/sbin", name).exists()]
    if absent:
        return (f"SLURM is not installed ({', '.join(absent)} missing: "
                "apt-get install slurm-wlm slurmdbd munge mariadb-server)")
    if os.geteuid() != 0:
        return "the test cluster's daemons run as root (SlurmUser=root), and this is not root"
    return None


def free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def sbin(name):
    return shutil.which(name) or str(Path("/usr/sbin", name))


def start(directory):
    d = Path(directory)
    for sub in ("munge", "db", "state", "spool", "log", "run"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    ctld, slurmd, db, dbd = free_ports(4)
    (d / "munge/key").write_bytes(os.urandom(1024))
    (d / "munge/key").chmod(0o600)
    sock = d / "munge/sock"
    subprocess.run([sbin("munged"), f"--key-file={d}/munge/key", f"--socket={sock}", f"--pid-file={d}/run/munged.pid",
                    f"--log-file={d}/log/munged.log", f"--seed-file={d}/munge/seed", "--force"], check=True)
    subprocess.run([sbin("mariadb-install-db"), "--user=root", f"--datadir={d}/db",
                    "--auth-root-authentication-method=normal"], check=True, capture_output=True)
    subprocess.Popen([sbin("mariadbd"), "--user=root", f"--datadir={d}/db", f"--port={db}", "--bind-address=127.0.0.1",
                      f"--socket={d}/run/mysql.sock", f"--pid-file={d}/run/mariadbd.pid",
                      f"--log-error={d}/log/mariadb.log"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: (d / "run/mysql.sock").exists(), "MariaDB", d)
    subprocess.run(["mariadb", f"--socket={d}/run/mysql.sock", "-uroot", "-e",
                    "CREATE USER 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm'; GRANT ALL ON *.* TO 'slurm'@'127.0.0.1';"],
                   check=True)
    auth = f"AuthType=auth/munge\nAuthInfo=socket={sock}\nSlurmUser=root\n"
    (d / "slurmdbd.conf").write_text(
        auth + f"DbdHost=localhost\nDbdPort={dbd}\nStorageType=accounting_storage/mysql\nStorageHost=127.0.0.1\n"
        f"StoragePort={db}\nStorageUser=slurm\nStoragePass=slurm\nStorageLoc=slurm_acct\n"
        f"PidFile={d}/run/slurmdbd.pid\nLogFile={d}/log/slurmdbd.log\n")
    (d / "slurmdbd.conf").chmod(0o600)
    (d / "slurm.conf").write_text(
        auth + f"ClusterName=w2stest\nSlurmctldHost=localhost\nSlurmdUser=root\nSlurmctldPort={ctld}\n"
        f"SlurmdPort={slurmd}\nStateSaveLocation={d}/state\nSlurmdSpoolDir={d}/spool\n"
        f"SlurmctldPidFile={d}/run/slurmctld.pid\nSlurmdPidFile={d}/run/slurmd.pid\n"
        f"SlurmctldLogFile={d}/log/slurmctld.log\nSlurmdLogFile={d}/log/slurmd.log\n"
        "ProctrackType=proctrack/linuxproc\nTaskPlugin=task/none\nSelectType=select/cons_tres\n"
        "SelectTypeParameters=CR_CPU\nSchedulerType=sched/backfill\nAccountingStorageType=accounting_storage/slurmdbd\n"
        f"AccountingStorageHost=localhost\nAccountingStoragePort={dbd}\nAccountingStoragePass={sock}\n"
        "JobAcctGatherType=jobacct_gather/none\nMpiDefault=none\nReturnToService=2\n"
        f"NodeName=w2snode NodeHostname=localhost NodeAddr=127.0.0.1 CPUs={os.cpu_count()} RealMemory=1000 "
        "State=UNKNOWN\nPartitionName=debug Nodes=w2snode Default=YES MaxTime=INFINITE State=UP\n")
    env = dict(os.environ, SLURM_CONF=str(d / "slurm.conf"))
    subprocess.run([sbin("slurmdbd")], env=env, check=True)
    wait_for(lambda: subprocess.run(["sacctmgr", "-i", "add", "cluster", "w2stest"], env=env, capture_output=True,
                                    timeout=10).returncode == 0, "slurmdbd", d)
    subprocess.run([sbin("slurmctld"), "-f", str(d / "slurm.conf")], env=env, check=True)
    subprocess.run([sbin("slurmd"), "-f", str(d / "slurm.conf"), "-N", "w2snode"], env=env, check=True)
    wait_for(lambda: subprocess.run(["sinfo", "-h", "-o", "%t"], env=env, capture_output=True, text=True,
                                    timeout=10).stdout.strip() == "idle", "the node", d)
    return str(d / "slurm.conf")


def wait_for(ready, what, d, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if ready():
                return
        except subprocess.TimeoutExpired:
            pass
        time.sleep(0.2)
    logs = {p.name: p.read_text(errors="replace")[-800:] for p in (d / "log").glob("*.log")}
    raise RuntimeError(f"{what} did not come up within {timeout} s; logs: {logs}")


def stop(directory):
    """End every daemon start() started (by the pids their pid files hold), SIGKILL after 10 s."""
    d = Path(directory)
    pids = []
    for name in STOP_ORDER:
        pid_file = d / "run" / f"{name}.pid"
        if pid_file.is_file() and pid_file.read_text().strip().isdigit():
            pid = int(pid_file.read_text().strip())
            try:
                os.kill(pid, 15)
                pids.append(pid)
            except ProcessLookupError:
                pass
    deadline = time.time() + 10
    for pid in pids:
        while alive(pid) and time.time() < deadline:
            time.sleep(0.1)
        if alive(pid):
            os.kill(pid, 9)


def alive(pid):
    try:
        os.waitpid(pid, os.WNOHANG)  # MariaDB is this process's child: reap it
    except ChildProcessError:
        pass
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False
