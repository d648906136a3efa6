"""Live progress of a fine-tuning job on a stream."""

from __future__ import annotations

import time
from typing import IO

from graft.cli.render import fmt_duration, fmt_metrics, state_name
from graft_client import pb


class ProgressPrinter:
    """Renders progress events on a stream: a live bar on a terminal (redrawn in place),
    one line every `interval` seconds otherwise; evaluations, state changes and messages
    always get their own line."""

    BAR_WIDTH = 24

    def __init__(self, out: IO[str], *, tty: bool | None = None, interval: float = 10.0) -> None:
        self.out = out
        self.tty = out.isatty() if tty is None else tty
        self.interval = interval
        self._last_line = float("-inf")
        self._bar_shown = False

    def __call__(self, event: pb.ProgressEvent) -> None:
        if event.kind == pb.EVENT_KIND_STEP:
            self._step(event)
        elif event.kind == pb.EVENT_KIND_EVALUATION:
            trained = event.train_accuracy  # 0: not measured (an older worker)
            self.line(
                f"epoch {event.epoch}/{event.total_epochs} evaluated: "
                + fmt_metrics(event.metrics)
                + (f"  (training accuracy {trained:.1%})" if trained else "")
            )
        elif event.kind == pb.EVENT_KIND_STATE:
            text = f"job {event.job_id}: {state_name(event.state)}"
            self.line(text + (f" - {event.message}" if event.message else ""))
        elif event.message:
            self.line(event.message)

    def step_text(self, event: pb.ProgressEvent) -> str:
        steps = max(event.steps_per_epoch, 1)
        epochs = max(event.total_epochs, 1)
        done = ((max(event.epoch, 1) - 1) * steps + min(event.step, steps)) / (epochs * steps)
        filled = round(self.BAR_WIDTH * min(done, 1.0))
        bar = "#" * filled + "-" * (self.BAR_WIDTH - filled)
        text = (
            f"epoch {event.epoch}/{event.total_epochs} [{bar}] {done:4.0%} "
            f"step {event.step}/{event.steps_per_epoch}  loss {event.loss:.4f}"
        )
        if event.images_per_second:
            text += f"  {event.images_per_second:.0f} img/s"
        if event.eta_seconds > 0:
            text += f"  ETA {fmt_duration(event.eta_seconds)}"
        return text

    def _step(self, event: pb.ProgressEvent) -> None:
        text = self.step_text(event)
        if self.tty:
            self.out.write("\r" + text + "\x1b[K")
            self.out.flush()
            self._bar_shown = True
            return
        now = time.monotonic()
        if now - self._last_line >= self.interval:
            self._last_line = now
            print(text, file=self.out, flush=True)

    def line(self, text: str) -> None:
        if self._bar_shown:
            self.out.write("\r\x1b[K")
            self._bar_shown = False
        print(text, file=self.out, flush=True)

    def finish(self) -> None:
        if self._bar_shown:
            self.out.write("\n")
            self.out.flush()
            self._bar_shown = False
