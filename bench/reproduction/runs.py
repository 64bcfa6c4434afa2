"""Training runs: ``rupq/main.py`` subprocesses, reused when finished, several at a time.

Each run is a :class:`Job`. A quantized job starts from its FP job's ``model.ckpt`` (``--load``),
so it waits for it; otherwise jobs run in the order given, ``workers`` at a time, each with
``threads`` intra-op threads. On 2 cores a small_resnet QAT step took 175 ms on one thread and
123 ms on two (small convolutions do not keep two threads busy, and each run's Python and data
loading overlap with the other's arithmetic): two one-thread runs side by side do about 1.4× the work. When a job finishes,
``on_finish`` may add jobs (the ablations of a cell RUPQ does not win). A failed run stops the
report at once: the runs beside it are stopped (:meth:`Runner.stop`) rather than waited for.
"""

import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

from .budgets import REPO
from .derive import DerivedRun

MAIN = REPO / "rupq" / "main.py"


@dataclass
class Job:
    """One training run of the report. ``key`` = (model, method, bits, seed); ``method`` is ``fp``,
    ``lsqplus``, ``rupq`` or ``rupq:<ablation>``."""

    key: tuple
    derived: DerivedRun
    logdir: Path
    config_copy: Path  # where the effective config is written for inspection
    needs: "Job | None" = None  # the FP job whose model.ckpt this one loads
    result: dict | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        model, method, bits, seed = self.key
        return f"{model} {method}" + (f" w{bits}a{bits}" if bits else "") + f" seed {seed}"


def finished_run(logdir: Path, config_text: str) -> Path | None:
    """The newest version folder of ``logdir`` that finished with exactly this config (to reuse).

    Newest first, so that after ``--fresh`` the retrained run is the one reused and reported.
    """
    versions = [v for v in logdir.glob("version_*") if v.name.removeprefix("version_").isdigit()]
    for version in sorted(versions, key=lambda v: int(v.name.removeprefix("version_")), reverse=True):
        if (version / "results.json").is_file() and (version / "config.yaml").read_text() == config_text:
            return version
    return None


class Runner:
    """Starts the ``rupq/main.py`` processes of jobs; ``run(job)`` returns its results.json plus wall and
    CPU seconds, or ``None`` with ``report_only`` when the run has not finished yet."""

    #: Seconds a stopped run has to write its checkpoint and exit after SIGTERM before SIGKILL.
    stop_grace_s = 10.0

    def __init__(self, extra_args: list[str], threads: int, fresh: bool, quiet: bool, report_only: bool):
        self.extra_args, self.threads = extra_args, threads
        self.fresh, self.quiet, self.report_only = fresh, quiet, report_only
        self.print_lock = threading.Lock()
        # The processes started and not reaped yet; their pids cannot be reused, so that stop()
        # signals only them. A process leaves the set (and is reaped) with the lock held.
        self.process_lock = threading.Lock()
        self.processes: set[subprocess.Popen] = set()
        self.stopping = False

    def say(self, text: str) -> None:
        with self.print_lock:
            print(f"[reproduce] {text}", flush=True)

    def run(self, job: Job) -> dict | None:
        config_text = job.derived.effective_text()
        job.config_copy.parent.mkdir(parents=True, exist_ok=True)
        job.config_copy.write_text(config_text)
        # --report-only reports what has finished, even with --fresh.
        version = None if self.fresh and not self.report_only else finished_run(job.logdir, config_text)
        if version is not None:
            self.say(f"{job.name}: reusing {version}")
        elif self.report_only:
            self.say(f"{job.name}: not finished in {job.logdir}")
            return None
        else:
            version = self._train(job)
        results = json.loads((version / "results.json").read_text())
        best = ", ".join(f"{key} {value:.2f}" for key, value in results.items() if key.startswith("best_val_"))
        self.say(f"{job.name}: {best} ({version})")
        # A run started by hand with the same config has no record of its wall-clock and CPU time:
        # count its training time for both.
        timing = version / "reproduce.json"
        results.update(json.loads(timing.read_text()) if timing.is_file()
                       else {"wall_s": results["time_s"], "cpu_s": float("nan")})
        results["version_dir"] = str(version)
        return results

    def command(self, job: Job) -> list[str]:
        """The ``rupq/main.py`` command line of ``job``."""
        load = ["--load", str(Path(job.needs.result["version_dir"]) / "model.ckpt")] if job.needs else []
        return [sys.executable, str(MAIN), "--config", str(job.derived.source), "--logdir", str(job.logdir),
                "--set", *job.derived.overrides, *load, *self.extra_args]

    def stop(self) -> None:
        """Stop the runs under way and start no other: SIGTERM (a run finishes its iteration, writes a
        checkpoint and exits), then SIGKILL for any still running ``stop_grace_s`` later."""
        with self.process_lock:
            self.stopping = True
            if self.processes:
                self.say(f"stopping {len(self.processes)} run(s) under way")
            self._signal(signal.SIGTERM)
        deadline = time.monotonic() + self.stop_grace_s
        while time.monotonic() < deadline:
            with self.process_lock:
                if not self.processes:
                    return
            time.sleep(0.05)
        with self.process_lock:
            self._signal(signal.SIGKILL)

    def _signal(self, signum: int) -> None:
        # With process_lock held: every process in the set is ours and not reaped (os.kill, not
        # Popen.send_signal, which would reap it under the thread that waits for it).
        for process in self.processes:
            os.kill(process.pid, signum)

    def _start(self, command: list[str]) -> subprocess.Popen:
        env = dict(os.environ)
        env.pop("PYTHONPATH", None)
        env.update(OMP_NUM_THREADS=str(self.threads), MKL_NUM_THREADS=str(self.threads))
        with self.process_lock:
            if self.stopping:
                raise SystemExit("error: the report stopped before this run started")
            process = subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.DEVNULL if self.quiet else None,
                                       stderr=subprocess.PIPE if self.quiet else None, text=True)
            self.processes.add(process)
        return process

    def _wait(self, process: subprocess.Popen):
        """``(exit code, rusage)`` once ``process`` has exited; it is reaped with the lock held."""
        os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOWAIT)
        with self.process_lock:
            self.processes.discard(process)
            # wait4 gives this child's own CPU time (RUSAGE_CHILDREN would mix in the runs beside it).
            _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        return process.returncode, usage

    def _train(self, job: Job) -> Path:
        # A fresh folder per attempt: two jobs never share a logdir, and version_N is picked by main.py.
        before = set(job.logdir.glob("version_*"))
        command = self.command(job)
        self.say(f"{job.name}: $ {shlex.join(command)}")
        started = time.time()
        process = self._start(command)
        stderr = process.stderr.read() if process.stderr else ""
        _, usage = self._wait(process)
        wall, cpu = time.time() - started, usage.ru_utime + usage.ru_stime
        if process.returncode != 0:
            detail = f": {stderr.strip().splitlines()[-1]}" if stderr.strip() else ""
            raise SystemExit(f"error: run {job.name} failed with exit status {process.returncode}{detail}")
        (version,) = set(job.logdir.glob("version_*")) - before
        (version / "reproduce.json").write_text(json.dumps({"wall_s": wall, "cpu_s": cpu}) + "\n")
        return version


def half_wave_input_offsets(version_dir: Path) -> list[float]:
    """The learned offsets of the half-wave input quantizers in a run's ``model.ckpt`` (the inputs
    that follow a ReLU, whose zeros sit on the lower clip bound while the offset is 0)."""
    import torch

    saved = torch.load(Path(version_dir) / "model.ckpt", map_location="cpu", weights_only=True)
    state = saved["state_dict"]
    offsets = []
    for name, settings in (saved.get("quantizers") or {}).items():
        if not (settings["half_wave"] and name.endswith("input_quantizer")):
            continue
        # A model saved from inside a wrapper (compiled, DataParallel) prefixes its keys.
        keys = [key for key in state if key == f"{name}.offset" or key.endswith(f".{name}.offset")]
        offsets += [float(value) for key in keys for value in state[key].flatten()]
    return offsets


def run_jobs(jobs: list[Job], runner: Runner, workers: int, on_finish=None) -> list[Job]:
    """Run ``jobs`` (and any that ``on_finish(job)`` returns), ``workers`` at a time, a job only after
    the FP job it needs; returns every job, finished or not (``result`` None). The first run that
    fails stops the others (``runner.stop()``) and its error is raised at once."""
    pending, running, everything = list(jobs), {}, list(jobs)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        while pending or running:
            for job in list(pending):
                if len(running) >= workers:
                    break
                if job.needs is not None and job.needs.result is None:
                    if job.needs in pending or job.needs in running.values():
                        continue  # its FP model is still to come
                    pending.remove(job)  # its FP run did not finish (--report-only): nothing to load
                    continue
                pending.remove(job)
                running[pool.submit(runner.run, job)] = job
            if not running:
                break
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                job = running.pop(future)
                try:
                    job.result = future.result()  # a failed run raises SystemExit here and stops the report
                except BaseException:
                    runner.stop()  # the runs beside it: leaving the pool would wait for them to finish
                    raise
                for follow_up in (on_finish(job) if on_finish and job.result is not None else []):
                    pending.append(follow_up)
                    everything.append(follow_up)
    return everything
