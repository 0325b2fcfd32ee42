"""What a run shows and records while it trains: the progress bar, each epoch's line in
RUN_DIR/metrics.jsonl (and TensorBoard with --tensorboard), the stop on a non-finite loss, and the
collapse an epoch shows (`collapse`: warned about here, acted on by the engine's --on-collapse).

Per step it only adds the loss and z-std to sums kept on the device; it reads them back (a host
sync) every `log_every` steps and at the end of the epoch.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import torch

from . import checkpoint
from .config import Config
from .doctor import COLLAPSED_RANK_Z, HEALTHY, epoch_state
from .errors import ConfigError, DataError, NonFinite
from .methods.base import StepOutput
from .optim import global_step
from .parallel import is_main, mean_over_ranks
from .records import EpochStats, MetricsRow, Partial
from .runtime import Bar, log


class Monitor:
    def __init__(self, cfg: Config, run_dir: Path, steps_per_epoch: int, start_epoch: int, z_healthy: float):
        self.cfg, self.run_dir, self.z_healthy = cfg, run_dir, z_healthy
        self.steps_per_epoch = steps_per_epoch
        self.writer = _tensorboard(run_dir) if cfg.tensorboard and is_main() else None
        self.low_epochs = 0  # consecutive epochs with z-std under the collapse threshold
        self.warned: str | None = None  # the collapse last warned about (once per stretch)
        self.shown: dict[str, str] = {}  # what the progress line shows after the bar
        self.bar = Bar(
            total=steps_per_epoch * cfg.epochs,
            initial=start_epoch * steps_per_epoch,
            unit="step",
            dynamic_ncols=True,
            mininterval=1.0,
            file=sys.stderr,
            disable=not is_main(),
        )

    def start_epoch(self, epoch: int, device: torch.device, partial: Partial | None = None) -> None:
        """A new epoch, or the rest of one a resume enters (with the sums of `partial`)."""
        self.epoch, self.t0, self.steps = epoch, time.perf_counter(), 0
        self.loss_sum = torch.zeros((), device=device)
        self.zstd_sum = torch.zeros((), device=device)
        if partial:
            self.steps, self.t0 = partial.steps, self.t0 - partial.seconds
            self.loss_sum += partial.loss_sum.to(device)
            self.zstd_sum += partial.zstd_sum.to(device)
        self.bar.set_description(f"epoch {epoch + 1}/{self.cfg.epochs}")

    def rewind(self, epoch: int) -> None:
        """A recovery went back to the end of `epoch` (0 = the start): the bar and the collapse watch too."""
        self.bar.n = epoch * self.steps_per_epoch
        self.bar.refresh()
        self.low_epochs, self.warned = 0, None

    def partial(self) -> dict:
        """The unfinished epoch's sums and time, for a mid-epoch checkpoint (`records.Partial`)."""
        return {
            "steps": self.steps,
            "seconds": time.perf_counter() - self.t0,
            "loss_sum": self.loss_sum.cpu(),
            "zstd_sum": self.zstd_sum.cpu(),
        }

    def step(self, step: int, out: StepOutput) -> None:
        self.loss_sum += out.loss.detach().float()
        self.zstd_sum += out.z_std
        self.steps += 1
        self.bar.update(1)
        if (step + 1) % self.cfg.log_every == 0:
            loss = self._finite(mean_over_ranks(out.loss), step)
            if self.writer is not None:
                done = global_step(self.epoch, step + 1, self.steps_per_epoch)
                self.writer.add_scalar("step/loss", loss, done)
                self.writer.add_scalar("step/z_std", out.z_std.item(), done)
            images_per_second = (step + 1) * self.cfg.batch_size / (time.perf_counter() - self.t0)
            self.shown.update(loss=f"{loss:.4f}", z_std=f"{out.z_std.item():.4f}", img_s=f"{images_per_second:.0f}")
            self.bar.set_postfix(self.shown, refresh=False)

    def end_epoch(self) -> EpochStats:
        """The epoch's mean loss and z-std (over the processes too), its speed and duration; never
        a non-finite epoch."""
        if self.steps == 0:
            raise DataError(f"epoch {self.epoch + 1} trained no step: no batch of its images could be read")
        loss = self._finite(mean_over_ranks(self.loss_sum) / self.steps, self.steps - 1)  # any step's NaN shows here
        seconds = time.perf_counter() - self.t0
        return EpochStats(
            loss=loss,
            z_std=(mean_over_ranks(self.zstd_sum) / self.steps).item(),
            images_per_second=self.steps * self.cfg.batch_size / seconds,
            epoch_seconds=seconds,
        )

    def show_rank(self, rank_backbone: float, rank_z: float | None) -> None:
        """The last measured effective ranks, on the progress line from now on."""
        self.shown["rank"] = f"{rank_backbone:.1f}"
        if rank_z is not None:
            self.shown["rank_z"] = f"{rank_z:.1f}"
        self.bar.set_postfix(self.shown, refresh=False)

    def collapse(self, row: MetricsRow) -> str | None:
        """The collapse this epoch's line shows, to act on (--on-collapse): "complete collapse" or
        "dimensional collapse" where the rank of z was measured (`doctor.epoch_state`), "diverged"
        for a NaN rank, or without the rank a "complete collapse" once z-std has been under the line
        for --collapse-patience epochs in a row. Warns once per stretch, a head collapse (no BN in the
        heads: the features are fine) included, which is not acted on: stepping back cannot mend it."""
        threshold = self.cfg.collapse_fraction * self.z_healthy
        self.low_epochs = self.low_epochs + 1 if row.z_std < threshold else 0
        state = epoch_state(row, self.cfg.collapse_fraction)
        if row.rank_z is None and state == "complete collapse":
            state = state if self.low_epochs >= self.cfg.collapse_patience else None
        if state in (None, HEALTHY):
            self.warned = None if state == HEALTHY else self.warned
            return None
        if state != self.warned:
            self.warned = state
            rank = "" if row.rank_z is None else f"rank of z {row.rank_z:.1f} (<= {COLLAPSED_RANK_Z:g}: collapsed), "
            log(
                f"warning: epoch {row.epoch}: {state}: {rank}z-std {row.z_std:.4f} = "
                f"{row.z_std / self.z_healthy:.2f} x 1/sqrt(d), loss {row.loss:.3f}; "
                f"`simsiam doctor {self.run_dir}` names the likely causes"
            )
        return None if state == "head collapse" else state

    def record(self, row: MetricsRow) -> None:
        """Append the epoch's row to metrics.jsonl (and TensorBoard)."""
        if is_main():
            checkpoint.append_line(self.run_dir / "metrics.jsonl", json.dumps(row.to_json()))
        if self.writer is not None:
            for key, value in row.to_json().items():
                if isinstance(value, (int, float)) and key != "epoch":
                    self.writer.add_scalar(f"epoch/{key}", value, row.epoch)
            for name, value in row.lr_groups.items():
                self.writer.add_scalar(f"lr/{name}", value, row.epoch)
            self.writer.flush()

    def close(self) -> None:
        self.bar.close()
        if self.writer is not None:
            self.writer.close()

    def _finite(self, loss: torch.Tensor, step: int) -> float:
        value = loss.item()
        if not math.isfinite(value):
            raise NonFinite(
                f"loss is {value} at epoch {self.epoch + 1}, step {step + 1}; lower --lr (now {self.cfg.lr:g}) "
                f"or check the data; {checkpoint.newest(self.run_dir)}"
            )
        return value


def _tensorboard(run_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError("--tensorboard needs the tensorboard package: pip install tensorboard") from None
    return SummaryWriter(str(run_dir / "tensorboard"))
