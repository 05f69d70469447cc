"""Rich progress bars for folds, epochs and steps; silent when disabled."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=True)


class TrainingProgress:
    def __init__(self, enabled: bool, num_folds: int):
        self.enabled = enabled
        self.console = console
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
            disable=not enabled,
            transient=False,
        )
        self.folds = self.progress.add_task("folds", total=num_folds)
        self.epochs = None
        self.steps = None

    def __enter__(self) -> "TrainingProgress":
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()

    def start_fold(self, fold: int, epochs: int, steps_per_epoch: int) -> None:
        for task in (self.epochs, self.steps):
            if task is not None:
                self.progress.remove_task(task)
        self.epochs = self.progress.add_task(f"fold {fold} epochs", total=epochs)
        self.steps = self.progress.add_task("  steps", total=steps_per_epoch)

    def step(self) -> None:
        self.progress.advance(self.steps)

    def end_epoch(self, fold: int, epoch: int, metrics: dict[str, float]) -> None:
        self.progress.reset(self.steps)
        self.progress.update(
            self.epochs,
            advance=1,
            description=f"fold {fold} epoch {epoch + 1}: loss {metrics['train_loss']:.3f} "
            f"val acc {metrics['val_acc']:.3f}",
        )

    def end_fold(self) -> None:
        self.progress.advance(self.folds)
