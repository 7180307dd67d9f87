"""What a search shows while it runs: on a terminal a bar of trials and one of the current
fine-tune, and everywhere one line per finished trial (:mod:`searchcomp.console`)."""

from __future__ import annotations

import sys
from typing import Any

from searchcomp import console
from searchcomp.search.states import DUPLICATE_OF, STOPPED_REASON


class Progress:
    """A live bar of trials (done / total, ETA, front size) and one of the current fine-tune's
    steps, plus one summary line per finished trial. ``quiet``, or a stream that is not a
    terminal (a log file, a pipe), keeps only the lines."""

    def __init__(self, total: int | None, done: int, quiet: bool, stream=None) -> None:
        self.stream = stream or sys.stderr
        self.quiet = quiet or not console.is_terminal(self.stream)
        self.trials = console.bar(total, "trials", "trial", enabled=not self.quiet,
                                  stream=self.stream, initial=done)
        self.steps = console.bar(1, "fine-tune", "step", enabled=not self.quiet,
                                 stream=self.stream, leave=False, position=1)

    def start_trial(self, number: int, total_steps: int) -> None:
        self.steps.reset(total=total_steps)
        self.steps.set_description(f"trial {number} fine-tune")

    def step(self, step: int, total: int, loss: float | None) -> None:
        """One fine-tune step; ``loss``: the last loss read from the device (None: none yet)."""
        self.steps.update(1)
        if (step % 5 == 0 or step == total) and console.loss_text(loss):
            self.steps.set_postfix(loss=console.loss_text(loss), refresh=False)

    def write(self, line: str) -> None:
        """A log line, above the bars when they are drawn."""
        if self.quiet:
            print(line, file=self.stream, flush=True)
        else:
            self.trials.write(line, file=self.stream)

    def rung(self, number: int, rung: int, steps: tuple[int, ...], accuracy: float) -> None:
        """Trial ``number`` scored ``accuracy`` at ``rung``: the bar follows its next rung."""
        if rung + 1 < len(steps):
            self.steps.reset(total=max(1, steps[rung + 1]))
            self.steps.set_description(f"trial {number} rung {rung + 1} (rung {rung}: "
                                       f"{accuracy:.3f})")

    def finished(self, line: str, front_size: int, counted: bool = True) -> None:
        """One trial ended: its line; the bar moves when it counts toward the budget."""
        if counted:
            self.trials.update(1)
        self.trials.set_postfix(front=front_size)
        self.write(line)

    def close(self) -> None:
        self.steps.close()
        self.trials.close()


def format_line(row: dict[str, Any]) -> str:
    """One line per finished trial for the log."""
    n, state = row["trial"], row["state"]
    if state != "complete":
        why = row.get("fail_reason") or row.get(STOPPED_REASON) or ""
        return f"trial {n:>4} {state:<8} {row.get('summary', '')}  {why}"
    feas = "" if row.get("feasible", True) else " (infeasible)"
    if row.get(DUPLICATE_OF) is not None:
        feas += (f" (same choices as trial {row[DUPLICATE_OF]}: answered from it, not run "
                 "again and not counted)")
    return (f"trial {n:>4} acc {row['accuracy']:.4f}  params {row['params'] / 1e6:6.2f} M  "
            f"{row['size_mib']:7.2f} MiB  {row['latency_ms']:7.2f} ms  "
            f"{row.get('finetune_seconds', 0):5.1f} s  {row.get('summary', '')}{feas}")
