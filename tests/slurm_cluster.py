"""A throw-away SLURM cluster on localhost for tests: munged, slurmctld and two slurmd nodes.

Needs Debian's ``slurm-wlm`` and ``munge`` (``apt-get install slurm-wlm munge``; ``.ci/run`` installs
them when it runs as root) and root (slurmd starts job steps as the submitting user; root needs no
user database). Every daemon runs in the foreground as a child of this process (``-D`` / ``-F``)
with its state, logs, key and sockets in one temporary directory, on free ports: nothing of the
machine's own configuration is read or changed. :func:`local_slurm` stops every daemon it started,
also when the test fails, and removes the directory.

The two nodes are ``n1`` and ``n2``, both ``NodeHostname=localhost`` on their own ``Port``, with
``CPUs=4`` each whatever the machine has (``SlurmdParameters=config_overrides``: CPUs
oversubscribed), ``select/cons_tres``, and a backfill scheduler that runs every second (a
heterogeneous job's components are placed by backfill).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "sinfo", "scancel", "squeue")
NODES = ("n1", "n2")
CPUS_PER_NODE = 4


def unavailable_reason():
    """Why a local SLURM cannot be started here (a skip reason), or None."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "needs root (slurmd runs job steps as the submitting user; CI runs as root)"
    missing = [name for name in DAEMONS + CLIENTS if shutil.which(name) is None and
               not os.path.exists(os.path.join("/usr/sbin", name))]
    if missing:
        return (f"SLURM/munge not installed ({', '.join(missing)} missing): apt-get install slurm-wlm munge "
                "(.ci/run does it when run as root with apt)")
    return None


def _which(name):
    return shutil.which(name) or os.path.join("/usr/sbin", name)


def _free_ports(n):
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def _plugin_dir():
    for path in ("/usr/lib/x86_64-linux-gnu/slurm-wlm", "/usr/lib/aarch64-linux-gnu/slurm-wlm", "/usr/lib/slurm"):
        if os.path.isdir(path):
            return path
    return None


def slurm_conf(root, ctld_port, node_ports):
    """The text of ``slurm.conf`` for a cluster whose files are all under ``root``."""
    plugins = _plugin_dir()
    lines = [
        "ClusterName=stagelearn-test", "SlurmctldHost=localhost", f"SlurmctldPort={ctld_port}",
        "SlurmUser=root", "SlurmdUser=root", "AuthType=auth/munge", "CredType=cred/munge",
        f"AuthInfo=socket={root}/munge.sock", f"StateSaveLocation={root}/state", f"SlurmdSpoolDir={root}/spool/%n",
        f"SlurmctldPidFile={root}/slurmctld.pid", f"SlurmdPidFile={root}/slurmd.%n.pid",
        f"SlurmctldLogFile={root}/slurmctld.log", f"SlurmdLogFile={root}/slurmd.%n.log",
        "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none", "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_CPU", "SlurmdParameters=config_overrides", "MpiDefault=none",
        "SwitchType=switch/none", "SchedulerType=sched/backfill", "SchedulerParameters=bf_interval=1",
        "ReturnToService=2", "JobAcctGatherType=jobacct_gather/none", "AccountingStorageType=accounting_storage/none",
        "JobCompType=jobcomp/none", "SlurmctldTimeout=30", "SlurmdTimeout=30", "InactiveLimit=0", "KillWait=5",
        "MinJobAge=300", "MessageTimeout=30",
    ]
    if plugins:
        lines.append(f"PluginDir={plugins}")
    for name, port in zip(NODES, node_ports):
        lines.append(f"NodeName={name} NodeHostname=localhost NodeAddr=127.0.0.1 Port={port} CPUs={CPUS_PER_NODE} "
                     "State=UNKNOWN")
    lines.append(f"PartitionName=debug Nodes={','.join(NODES)} Default=YES MaxTime=INFINITE State=UP")
    return "\n".join(lines) + "\n"


class LocalSlurm:
    """A started cluster: ``env`` (with ``SLURM_CONF``) for the clients, :meth:`sbatch`, :meth:`logs`."""

    def __init__(self, root):
        self.root = root
        self.conf = os.path.join(root, "slurm.conf")
        self.env = dict(os.environ, SLURM_CONF=self.conf)
        self.procs = []  # (name, Popen), in start order

    def _start(self, name, argv):
        log = open(os.path.join(self.root, f"{name}.stdout"), "w")
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self.env)
        log.close()
        self.procs.append((name, proc))
        return proc

    def start(self, timeout=60):
        root = self.root
        for d in ("state", "spool"):
            os.makedirs(os.path.join(root, d), exist_ok=True)
        key = os.path.join(root, "munge.key")
        with open(key, "wb") as f:
            f.write(os.urandom(1024))
        os.chmod(key, 0o600)
        ctld_port, *node_ports = _free_ports(1 + len(NODES))
        with open(self.conf, "w") as f:
            f.write(slurm_conf(root, ctld_port, node_ports))
        self._start("munged", [_which("munged"), "-F", "--force", f"--socket={root}/munge.sock", f"--key-file={key}",
                               f"--log-file={root}/munged.log", f"--pid-file={root}/munged.pid",
                               f"--seed-file={root}/munged.seed"])
        self._wait(lambda: os.path.exists(os.path.join(root, "munge.sock")), timeout, "munged socket")
        self._start("slurmctld", [_which("slurmctld"), "-D", "-f", self.conf])
        for name in NODES:
            self._start(f"slurmd-{name}", [_which("slurmd"), "-D", "-N", name, "-f", self.conf])
        self._wait(self._nodes_idle, timeout, "both nodes idle (sinfo)")
        return self

    def _nodes_idle(self):
        for name, proc in self.procs:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode} at start:\n{self.logs()}")
        out = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %T"], capture_output=True, text=True, env=self.env,
                             timeout=30).stdout.split()
        return out.count("idle") == len(NODES)

    def _wait(self, ready, timeout, what):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ready():
                return
            time.sleep(0.5)
        raise RuntimeError(f"local SLURM: no {what} after {timeout} s:\n{self.logs()}")

    def sbatch(self, script, *, cwd, output, args=(), timeout=180, env_path="/usr/local/bin:/usr/bin:/bin"):
        """``sbatch --wait`` (returns when the job ended): ``(exit code, job output text)``.

        ``sbatch`` runs with ``PATH=env_path`` (plus the SLURM clients' directory) and without
        ``VIRTUAL_ENV``: the job finds ``stagelearn`` only through the script's own activation.
        """
        cmd = [_which("sbatch"), "--wait", "--parsable", "-o", str(output), *map(str, args), str(script)]
        env = {k: v for k, v in self.env.items() if k != "VIRTUAL_ENV"}
        env["PATH"] = f"{env_path}:{os.path.dirname(_which('sbatch'))}"
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(cwd), timeout=timeout,
                                  stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            subprocess.run(["scancel", "--full", "--user=root"], env=self.env, timeout=30, capture_output=True)
            text = open(output).read() if os.path.exists(output) else ""
            raise AssertionError(f"sbatch --wait {script}: no end after {timeout} s\n{text}\n{self.logs()}") from None
        text = open(output).read() if os.path.exists(output) else ""
        return proc.returncode, text + proc.stderr

    def logs(self, tail=40):
        """The last lines of every daemon log (for failure messages)."""
        out = []
        for name in sorted(os.listdir(self.root)):
            if name.endswith((".log", ".stdout")):
                with open(os.path.join(self.root, name), errors="replace") as f:
                    out.append(f"== {name}\n" + "".join(f.readlines()[-tail:]))
        return "\n".join(out)

    def stop(self):
        """Cancel every job, then stop the daemons in reverse start order (SIGTERM, then SIGKILL)."""
        with contextlib.suppress(Exception):
            subprocess.run(["scancel", "--full", "--user=root"], env=self.env, timeout=20, capture_output=True)
        for _, proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=15)


@contextlib.contextmanager
def local_slurm():
    """Start a :class:`LocalSlurm` in a fresh temporary directory; always stop it and remove the directory."""
    root = tempfile.mkdtemp(prefix="slurm-", dir="/tmp")  # short: the munge socket path must fit sockaddr_un
    cluster = LocalSlurm(root)
    try:
        try:
            started = cluster.start()
        except RuntimeError as exc:  # installed, but this machine cannot run the daemons (e.g. no cgroups)
            import pytest

            pytest.skip(f"local SLURM installed but it did not start here: {exc}")
        yield started
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
