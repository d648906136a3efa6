"""The embedded default's worker processes: one `graft worker` child per lane, restarted
when it exits."""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from graft.config import Config

log = logging.getLogger(__name__)


class WorkerSupervisor:
    """Runs one `graft worker` child process for `lane` and restarts it when it exits."""

    def __init__(self, config: Config, lane: str = "trainer", restart_delay: float = 1.0) -> None:
        self.config = config
        self.lane = lane
        self.restart_delay = restart_delay
        self.process: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"{lane}-supervisor", daemon=True)
        self._config_file = config.data_dir / f"worker-config-{lane}.json"

    def start(self) -> None:
        self.write_config()
        self._thread.start()

    def write_config(self) -> Path:
        """The file the worker reads its config from: the whole config, the store URL's
        password too, so readable by this user alone."""
        self._config_file.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self._config_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            os.fchmod(f.fileno(), 0o600)  # also when the file was there already
            f.write(self.config.to_json())
        return self._config_file

    def _spawn(self) -> subprocess.Popen[bytes]:
        cmd = [
            sys.executable,
            "-m",
            "graft.worker",
            "--config-file",
            str(self._config_file),
        ]
        proc = subprocess.Popen(cmd)
        log.info("started %s worker process pid %d", self.lane, proc.pid)
        return proc

    def _run(self) -> None:
        while not self._stop.is_set():
            self.process = self._spawn()
            while self.process.poll() is None:
                if self._stop.wait(0.2):
                    return
            log.warning(
                "%s worker pid %d exited with %s; restarting",
                self.lane,
                self.process.pid,
                self.process.returncode,
            )
            self.restarts += 1
            if self._stop.wait(self.restart_delay):
                return

    def request_stop(self) -> None:
        """SIGTERM the worker now: it stops at its next checkpoint and hands its work back."""
        self._stop.set()
        proc = self.process
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)

    def stop(self, timeout: float) -> None:
        self.request_stop()
        proc = self.process
        if proc is not None and proc.poll() is None:
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("worker pid %d did not stop in %.0fs; killing it", proc.pid, timeout)
                proc.kill()
                proc.wait()
        self._thread.join(timeout=5)


def embedded_supervisors(config: Config) -> list[WorkerSupervisor]:
    """One supervised worker per lane: its own process, so an Advise never waits behind a
    fine-tune and a crash in one lane leaves the other running. The advisor's /metrics port
    is the trainer's + 1 (both 0: each picks a free one)."""
    port = config.worker_metrics_port
    return [
        WorkerSupervisor(dataclasses.replace(config, lanes=("trainer",)), "trainer"),
        WorkerSupervisor(
            dataclasses.replace(config, lanes=("advisor",), worker_metrics_port=port and port + 1),
            "advisor",
        ),
    ]
