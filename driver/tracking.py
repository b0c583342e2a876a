"""Where the metrics go: ``metrics.jsonl`` in the run folder and the optional W&B run."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from aits import Config, NormScales


class Tracker:
    """metrics.jsonl plus the optional W&B run.

    ``keep_until``: rows of later epochs are dropped (a resume repeats them). W&B cannot take a step
    twice, so epochs repeated within one run (after a learner rebuild) go to metrics.jsonl only; the
    repeat is exact, so W&B already holds their values.
    """

    def __init__(self, cfg: Config, run_dir: Path, scales: NormScales, keep_until: int, wandb_id: str | None):
        self.path = run_dir / "metrics.jsonl"
        self.rewind(keep_until)
        self.wandb_last = 0  # newest epoch given to W&B by this run
        self.run = None
        w = cfg.wandb
        if w.mode != "disabled":
            import wandb

            mode = w.mode
            if mode == "online" and not wandb_credentials():
                print("warning: wandb.mode=online: no W&B API key (WANDB_API_KEY or netrc); logging offline "
                      "instead, upload later with `wandb sync`", file=sys.stderr, flush=True)
                mode = "offline"
            kwargs = dict(project=w.project, entity=w.entity, name=w.name or cfg.run.name, tags=w.tags,
                          dir=str(run_dir), config={**cfg.to_dict(), "norm_scales": scales.to_dict()},
                          settings=wandb.Settings(quiet=True, console="off", disable_git=True))
            resume = dict(id=wandb_id, resume="allow") if (wandb_id and mode == "online") else {}
            try:
                self.run = wandb.init(mode=mode, **kwargs, **resume)
            except Exception as exc:  # noqa: BLE001 - e.g. online with no network: keep the run going
                if mode != "online":
                    raise
                print(f"warning: wandb.mode=online: W&B unreachable ({type(exc).__name__}); logging offline "
                      "instead, upload later with `wandb sync`", file=sys.stderr, flush=True)
                self.run = wandb.init(mode="offline", **kwargs)

    @property
    def wandb_id(self) -> str | None:
        return self.run.id if self.run is not None else None

    def rewind(self, keep_until: int) -> None:
        """Drop the rows of epochs after ``keep_until`` (atomically: a kill here keeps the rest)."""
        rows = [seed_names(r) for r in read_rows(self.path)] if keep_until else []
        text = "".join(json.dumps(r) + "\n" for r in rows if r["epoch"] <= keep_until)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, self.path)

    def log(self, row: dict) -> None:
        with self.path.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
        if self.run is not None and row["epoch"] > self.wandb_last:
            self.run.log(row, step=row["epoch"])
            self.wandb_last = row["epoch"]

    def close(self) -> None:
        if self.run is not None:
            import wandb

            self.run.finish()
            wandb.teardown()  # wait for the W&B service to write the run out before returning


# Metric prefixes this project logged before it went back to the seed's (a resumed old run's rows)
RENAMED = {"collect/": "part1/", "generalize/": "part2/"}


def seed_names(row: dict) -> dict:
    """``row`` with the keys of an older run (``collect/*``, ``generalize/*``) under the seed's prefixes."""
    out = {}
    for key, value in row.items():
        old = next((p for p in RENAMED if key.startswith(p)), None)
        out[RENAMED[old] + key[len(old):] if old else key] = value
    return out


def read_rows(path: Path) -> list[dict]:
    """metrics.jsonl rows; a last line cut short by a killed driver is dropped."""
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return rows


def wandb_credentials() -> bool:
    """Whether an online W&B run could authenticate: WANDB_API_KEY or a netrc entry for the W&B host."""
    import netrc
    from urllib.parse import urlparse

    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False
