"""The run recorder: one owner of what a run keeps in its folder, for `simulate`, every run of a
`compare` and the Flower server.

A run folder holds `config.json` (written once the run is known to start), `history.json` and
`checkpoint/` (both after every round), and -- when the config names no profile -- the profile
measured for the run, `profile.json`. `RunRecorder` does all of it:

- opening: a new run creates and probes the folder; an earlier run there is refused or, when
  asked (`overwrite`), cleared. A resume reads the saved config (plus the settings a resume may
  change) and the checkpoint, and knows when the run is already finished;
- pinning: a profile measured into the folder is named in the config from then on
  (`pin_profile`), so config.json, the checkpoint and every resume plan with exactly that file.
  A profile.json that is not the run's own -- a fresh run into a folder that holds one -- is
  never picked up silently: it is refused, or (asked) removed and measured again;
- recording: the evaluation cadence (every `eval_every` rounds and after the last), the
  history, a checkpoint and history.json after every round, and cleaning up a run that failed
  before its first checkpoint (no folder is left holding only a config.json).

The folder rules of the command line (`open`) and of the Flower server (`open_server`, which
has no overwrite and keeps its own config.json layout) differ only in what they refuse and how
they say so; everything after opening is shared.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field, fields

from fedquad.errors import FedquadError
from fedquad.sim.checkpoint import CHECKPOINT_DIRS, Checkpoint, find_checkpoint, read_checkpoint, save_checkpoint
from fedquad.sim.files import probe_writable, write_json_atomic
from fedquad.sim.config import SimConfig, run_config_from_dict
from fedquad.sim.round import RoundState

# Settings a resume may change: when to stop, and the target the plots mark. Anything else
# would make the continued run a different experiment from the one it started as.
RESUMABLE_SETTINGS = ("rounds", "time_budget_s", "target_accuracy")
RUN_FILES = ("config.json", "history.json", "accuracy_vs_time.png", "memory.png")
PROFILE_FILE = "profile.json"


def is_finished(config: SimConfig, state: RoundState) -> bool:
    return state.round_index >= config.rounds or (
        config.time_budget_s is not None and state.clock_s >= config.time_budget_s)


def evaluation_due(config: SimConfig, round_index: int, state: RoundState) -> bool:
    """Whether round `round_index` (which brought the run to `state`) ends with a central
    evaluation: every `eval_every` rounds, and after the last one."""
    return (round_index + 1) % config.eval_every == 0 or is_finished(config, state)


# -- run folders ---------------------------------------------------------------------------------
def prepare_out_dir(path: str) -> list[str]:
    """Create `path` (with parents) and check this process can write there; returns the folders it
    created, parents first. One-line errors for a file, an unwritable place, /proc and the like."""
    if not str(path).strip():
        raise FedquadError("the output folder is empty: give --out a folder")
    if os.path.exists(path) and not os.path.isdir(path):
        raise FedquadError(f"{path} is a file, not a folder: give --out a folder")
    missing, p = [], os.path.abspath(path)
    while not os.path.exists(p):
        missing.append(p)
        p = os.path.dirname(p)
    if not os.path.isdir(p):
        raise FedquadError(f"cannot create folder {path}: {p} is a file, not a folder")
    created: list[str] = []
    try:
        for folder in reversed(missing):
            os.mkdir(folder)
            created.append(folder)
        probe_writable(path)
    except OSError as exc:
        remove_created(created)
        raise FedquadError(f"cannot write to folder {path}: {exc.strerror or exc}") from None
    return created


def remove_created(created: list[str]) -> None:
    """Remove the folders `prepare_out_dir` created, deepest first, as far as they are empty."""
    for folder in reversed(created):
        try:
            os.rmdir(folder)
        except OSError:
            return


def run_markers(run_dir: str) -> list[str]:
    """What in `run_dir` shows an earlier run there (empty: none)."""
    return [n for n in ("config.json", "history.json", *CHECKPOINT_DIRS) if os.path.exists(os.path.join(run_dir, n))]


def clear_run(run_dir: str, keep_profile: str | None = None) -> None:
    """Remove a run's own files from `run_dir` (nothing else there); `keep_profile`: a profile path
    in use that must stay even if it is the run's profile.json."""
    keep = os.path.abspath(keep_profile) if keep_profile else None
    for name in (*RUN_FILES, PROFILE_FILE):
        for path in (os.path.join(run_dir, name), os.path.join(run_dir, name + ".tmp")):
            if os.path.isfile(path) and os.path.abspath(path) != keep:
                os.remove(path)
    for name in CHECKPOINT_DIRS:
        shutil.rmtree(os.path.join(run_dir, name), ignore_errors=True)


def refuse_or_clear(out_dir: str, markers: list[str], overwrite: bool, what: str, clear) -> None:
    if not markers:
        return
    if not overwrite:
        raise FedquadError(f"{out_dir} already holds {what} ({', '.join(markers)}): continue it with "
                           f"--resume {out_dir}, or replace it with --overwrite")
    clear()


# -- the measured profile ------------------------------------------------------------------------
def profile_path(folder: str) -> str:
    """Where a run (or a comparison) in `folder` keeps the profile it measured."""
    return os.path.abspath(os.path.join(folder, PROFILE_FILE))


def pinned_profile(config: SimConfig, folder: str) -> SimConfig:
    """`config` with the profile it runs with: the configured one, else `folder`'s profile.json."""
    return config if config.profile else config.replace(profile=profile_path(folder))


CLI_PROFILE_HINT = "use it with --set profile={path}, or measure a new one with --overwrite"
SERVER_PROFILE_HINT = "set profile={path} in the run config to use it, or choose another run-dir"


def refuse_leftover_profile(config: SimConfig, folder: str, *, overwrite: bool = False,
                            hint: str = CLI_PROFILE_HINT) -> None:
    """A fresh run that names no profile measures one into `folder`/profile.json: one already there
    belongs to an earlier run (or was put there by hand) and is not silently taken for this run's.
    Refused in one line; `overwrite` removes it (the run measures a new one)."""
    path = os.path.join(folder, PROFILE_FILE)
    if config.profile is not None or not os.path.isfile(path):
        return
    if not overwrite:
        raise FedquadError(f"{folder} already holds a profile.json from an earlier run, and this run names no "
                           f"profile: {hint.format(path=profile_path(folder))}")
    os.remove(path)


# -- resuming ------------------------------------------------------------------------------------
def _resume_point(given: SimConfig | None, run_dir: str, changes: dict | None) -> tuple[SimConfig, Checkpoint | None]:
    """The config to continue `run_dir` with and its checkpoint (None: killed before the first one)."""
    if run_dir is None:
        raise FedquadError("resume needs the run folder")
    if not os.path.isdir(run_dir):
        raise FedquadError(f"nothing to resume: {run_dir} " + ("is a file, not a run folder" if os.path.exists(run_dir)
                                                              else "does not exist"))
    bad = sorted(set(changes or {}) - set(RESUMABLE_SETTINGS))
    if bad:
        raise FedquadError(f"a resume keeps the run's saved settings; only {', '.join(RESUMABLE_SETTINGS)} may change, "
                           f"not {', '.join(bad)}")
    ck = None
    if find_checkpoint(run_dir) is not None:
        ck = read_checkpoint(run_dir)
        saved = run_config_from_dict(ck.config, f"{run_dir}/checkpoint")
    elif os.path.isfile(os.path.join(run_dir, "config.json")):
        path = os.path.join(run_dir, "config.json")
        try:
            with open(path) as f:
                data = json.load(f)
        except (OSError, ValueError) as exc:
            raise FedquadError(f"cannot read {path}: {exc}") from None
        saved = run_config_from_dict(data, path)
    else:
        raise FedquadError(f"nothing to resume in {run_dir}: no checkpoint and no config.json")
    if given is not None:  # compare: the run must be the experiment it is asked to continue
        diffs = [f"{f.name}: saved {getattr(saved, f.name)!r}, now {getattr(given, f.name)!r}"
                 for f in fields(SimConfig)
                 if f.name not in RESUMABLE_SETTINGS and getattr(saved, f.name) != getattr(given, f.name)]
        if diffs:
            raise FedquadError(f"{run_dir} was run with other settings ({'; '.join(diffs[:3])}): "
                               "start it again with --overwrite")
        changes = {k: getattr(given, k) for k in RESUMABLE_SETTINGS}
    return saved.replace(**(changes or {})), ck


def _history_of_finished(run_dir: str, ck: Checkpoint) -> list[dict]:
    """history.json when it matches the checkpoint (it has the final host times), else the checkpoint's."""
    try:
        with open(os.path.join(run_dir, "history.json")) as f:
            history = json.load(f)
        if isinstance(history, list) and len(history) == len(ck.history):
            return history
    except (OSError, ValueError):
        pass
    return ck.history


def _finished_without_checkpoint(config: SimConfig, run_dir: str) -> tuple[list[dict], RoundState]:
    """A run whose checkpoint is gone (committed results keep only history.json and config.json):
    finished, it is reported as such; unfinished, it cannot continue."""
    path = os.path.join(run_dir, "history.json")
    try:
        with open(path) as f:
            history = json.load(f)
        rounds = [h for h in history if h["round"] >= 0]
        state = RoundState(rounds[-1]["round"] + 1 if rounds else 0, rounds[-1]["clock_s"] if rounds else 0.0)
    except (OSError, ValueError, TypeError, KeyError, IndexError) as exc:
        raise FedquadError(f"cannot read {path}: {exc}") from None
    if not is_finished(config, state):
        raise FedquadError(f"{run_dir} has no checkpoint (only history.json, {state.round_index} of {config.rounds} "
                           "rounds): it cannot be continued; run it again with --overwrite")
    return history, state


def _saved_server_config(run_dir: str) -> SimConfig | None:
    """The SimConfig in a server run's config.json ({"config": ..., "server": ...}); None: none readable."""
    try:
        with open(os.path.join(run_dir, "config.json")) as f:
            return run_config_from_dict(json.load(f)["config"], "config.json")
    except (OSError, ValueError, KeyError, TypeError, FedquadError):
        return None


# -- the recorder --------------------------------------------------------------------------------
@dataclass
class RunRecorder:
    """One run's folder, its config (with the pinned profile), its history and checkpoints.
    `run_dir` None: a run that keeps nothing on disk (the history is still recorded)."""

    config: SimConfig
    run_dir: str | None = None
    checkpoint: Checkpoint | None = None  # the checkpoint a resume continues from
    resumed: bool = False
    history: list[dict] = field(default_factory=list)
    created: list[str] = field(default_factory=list)  # folders `open` made (removed again by `discard`)
    keep_profile: str | None = None  # the profile `discard` leaves in place (one that was there before)

    @classmethod
    def open(cls, run_dir: str | None, config: SimConfig | None, *, resume: bool = False, overwrite: bool = False,
             changes: dict | None = None) -> RunRecorder:
        """The command line's rules. A new run into a folder that holds one is refused unless
        `overwrite`; `resume` continues the run in `run_dir` with its saved config plus `changes`
        (only RESUMABLE_SETTINGS); a `config` given with `resume` must match the saved one apart
        from those."""
        if resume:
            config, ck = _resume_point(config, run_dir, changes)
            return cls(config, run_dir, ck, True, keep_profile=cls._present_profile(run_dir, config))
        if run_dir is None:
            return cls(config)
        created = prepare_out_dir(run_dir)
        refuse_or_clear(run_dir, run_markers(run_dir), overwrite, "a run",
                        lambda: clear_run(run_dir, keep_profile=config.profile))
        refuse_leftover_profile(config, run_dir, overwrite=overwrite)
        return cls(config, run_dir, created=created, keep_profile=cls._present_profile(run_dir, config))

    @classmethod
    def open_server(cls, run_dir: str, config: SimConfig, *, resume: bool) -> RunRecorder:
        """The Flower server's rules: `resume` continues from the checkpoint (required) with the
        saved config; a new run is refused where a checkpoint is already there, or a profile.json
        it did not measure. One it did measure -- the same run started again before its first
        checkpoint (no nodes in time, say): its config.json pins that file -- is used again."""
        if resume:
            ck = read_checkpoint(run_dir)
            config = run_config_from_dict(ck.config, f"{run_dir}/checkpoint")
            return cls(config, run_dir, ck, True)
        if find_checkpoint(run_dir) is not None:
            raise FedquadError(f"{run_dir} already holds a checkpoint: set resume=true to continue it, "
                               "or choose another run-dir")
        if config.profile is None and _saved_server_config(run_dir) == pinned_profile(config, run_dir):
            config = pinned_profile(config, run_dir)
        refuse_leftover_profile(config, run_dir, hint=SERVER_PROFILE_HINT)
        os.makedirs(run_dir, exist_ok=True)
        return cls(config, run_dir)

    @staticmethod
    def _present_profile(run_dir: str, config: SimConfig) -> str | None:
        path = os.path.join(run_dir, PROFILE_FILE)
        return path if os.path.isfile(path) else config.profile

    def finished(self) -> tuple[list[dict], RoundState] | None:
        """(history, final state) of a resumed run with nothing left to do; None otherwise. A run
        without a checkpoint but with a history.json is finished, or cannot continue (an error)."""
        if not self.resumed:
            return None
        ck = self.checkpoint
        if ck is not None:
            return (_history_of_finished(self.run_dir, ck), ck.state) if is_finished(self.config, ck.state) else None
        if os.path.isfile(os.path.join(self.run_dir, "history.json")):
            return _finished_without_checkpoint(self.config, self.run_dir)
        return None

    def pin_profile(self) -> None:
        """After the workload is built: a profile it measured into the run folder is the run's, and
        the config names it from now on (config.json, checkpoints, resumes)."""
        if self.config.profile is None and self.run_dir is not None:
            self.config = self.config.replace(profile=profile_path(self.run_dir))

    def start(self, record: dict | None = None) -> None:
        """Write config.json (`record`: the server's own layout; default the config), once the run is
        known to start: a kill from here on resumes."""
        if self.run_dir is not None:
            write_json_atomic(os.path.join(self.run_dir, "config.json"),
                              self.config.to_dict() if record is None else record)

    def resume_state(self) -> RoundState | None:
        """The checkpoint's state, with its history and torch's RNG state restored (call it when
        only the rounds' own draws follow); None: the run starts at round 0."""
        if self.checkpoint is None:
            return None
        self.checkpoint.restore_rng()
        self.history = self.checkpoint.history
        return self.checkpoint.state

    def evaluation_due(self, round_index: int, state: RoundState) -> bool:
        return evaluation_due(self.config, round_index, state)

    def is_finished(self, state: RoundState) -> bool:
        return is_finished(self.config, state)

    def record_round(self, state: RoundState, report: dict) -> float:
        """Append a round's report; with a folder, write the checkpoint and history.json. Returns
        the host seconds the writes took."""
        self.history.append(report)
        if self.run_dir is None:
            return 0.0
        start = time.perf_counter()
        save_checkpoint(self.run_dir, state, self.config.to_dict(), self.history)
        write_json_atomic(os.path.join(self.run_dir, "history.json"), self.history)
        return time.perf_counter() - start

    def close(self) -> None:
        """history.json as the run ends (with the last round's complete host times)."""
        if self.run_dir is not None:
            write_json_atomic(os.path.join(self.run_dir, "history.json"), self.history)

    def discard(self) -> None:
        """A run that failed before its first checkpoint: remove what it wrote and the folders it
        made. One that has a checkpoint (now, or when it was resumed) keeps everything."""
        if self.run_dir is None or self.checkpoint is not None or find_checkpoint(self.run_dir) is not None:
            return
        clear_run(self.run_dir, keep_profile=self.keep_profile)
        remove_created(self.created)
