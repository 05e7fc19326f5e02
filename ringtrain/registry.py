"""The model registry on the store: immutable versions, aliases, and the full history. Core.

Layout under `<store.root>/models/<name>/`:

    versions/v000001/        one registered model, never modified once an event names it:
        model.pt2 | model.ts     the exported program (copied from the run's model folder)
        state_dict.pt            the weights (warm starts read them)
        artifact.json            what training wrote (inputs, metrics, config)
        features.json            the statistics that encode new rows exactly as in training
        version.json             written last: source run, dataset version, files
    history/e000001.json     one registry change per file, numbered, created exclusively
    retrain/                 the retrain job's per-date records and lock (ringtrain.jobs.retrain)

The history is the registry: a version exists once an event registers it, and every alias is the
replay of the events that moved it. So each change (register + decide, promote, rollback) is one
exclusive file creation, which is atomic on every store, local or object: a killed writer leaves
either no event (and an unregistered version folder that the next registration overwrites) or the
whole change. Two writers that race for the same event number: one creates the file, the other
re-reads the history and tries the next number.

Aliases are stacks: `promote` pushes a version, `rollback` pops back to the one before.
"""
from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass

from ringtrain.errors import ModelNotFound
from ringtrain.publish import atomic_write_bytes, atomic_write_json, create_exclusive
from ringtrain.store import exists, join, listdir, read_bytes, read_json, rmtree

CHAMPION = "champion"
VERSION_MARKER = "version.json"
FEATURES = "features.json"
_VERSION = re.compile(r"^v\d{6}$")
_EVENT = re.compile(r"^e(\d{6})\.json$")
_COPIED = ("model.pt2", "model.ts", "state_dict.pt", "artifact.json")


@dataclass(frozen=True)
class RegistryState:
    """The replay of the history: registered versions, alias stacks, and the events themselves."""

    versions: dict[str, dict]      # version -> its register event's `version_info`
    alias_stacks: dict[str, list]  # alias -> versions it pointed to, current last
    events: list[dict]

    def alias(self, name: str) -> str | None:
        stack = self.alias_stacks.get(name) or []
        return stack[-1] if stack else None

    def aliases(self) -> dict[str, str]:
        return {name: stack[-1] for name, stack in sorted(self.alias_stacks.items()) if stack}

    def decisions(self, date: str | None = None) -> list[dict]:
        return [e for e in self.events if e["action"] == "decide" and (date is None or e.get("date") == date)]


def replay(events: list[dict]) -> RegistryState:
    versions: dict[str, dict] = {}
    stacks: dict[str, list] = {}
    for event in events:
        if event.get("registers"):
            versions[event["registers"]] = event.get("version_info", {})
        for alias, version in (event.get("pushes") or {}).items():
            stacks.setdefault(alias, []).append(version)
        for alias in event.get("pops") or []:
            stacks[alias].pop()
    return RegistryState(versions, stacks, events)


class Registry:
    """The versions and aliases of one model name under `<store.root>/models/<name>`."""

    def __init__(self, store_root: str, name: str):
        self.name, self.store_root = name, store_root
        self.root = join(store_root, "models", name)

    # ------------------------------------------------------------------ reading
    def events(self) -> list[dict]:
        folder = join(self.root, "history")
        return [read_json(join(folder, n)) for n in listdir(folder) if _EVENT.match(n)]

    def state(self) -> RegistryState:
        return replay(self.events())

    def version_dir(self, version: str) -> str:
        return join(self.root, "versions", version)

    def resolve(self, ref: str) -> str:
        """A version folder from an alias (`champion`) or a version name (`v000003`)."""
        state = self.state()
        version = ref if ref in state.versions else state.alias(ref)
        if version is None:
            known = ", ".join(sorted(state.versions)) or "none"
            aliases = ", ".join(f"{a}={v}" for a, v in state.aliases().items()) or "none"
            raise ModelNotFound(f"model {self.name!r} has no version or alias {ref!r} (versions: {known}; "
                                f"aliases: {aliases}); see `ringtrain models list`")
        return self.version_dir(version)

    # ------------------------------------------------------------------ writing
    def stage_version(self, model_dir: str, features_json: str, info: dict) -> str:
        """Copy a run's model artifact into the next version folder; invisible until `commit` registers it.

        Only the retrain job, which holds the model's lock, stages versions; a folder left by a killed
        run under the same name was never registered and is replaced.
        """
        state = self.state()
        numbers = [int(v[1:]) for v in state.versions]
        version = f"v{max(numbers, default=0) + 1:06d}"
        folder = self.version_dir(version)
        rmtree(folder)
        files = []
        for name in _COPIED:
            if exists(join(model_dir, name)):
                atomic_write_bytes(join(folder, name), read_bytes(join(model_dir, name)))
                files.append(name)
        atomic_write_bytes(join(folder, FEATURES), read_bytes(features_json))
        atomic_write_json(join(folder, VERSION_MARKER), {**info, "version": version, "files": files + [FEATURES]})
        return version

    def commit(self, event: dict) -> dict:
        """Append one event (atomically, numbered); returns it with its number and time."""
        folder = join(self.root, "history")
        while True:
            numbers = [int(m.group(1)) for n in listdir(folder) if (m := _EVENT.match(n))]
            seq = max(numbers, default=0) + 1
            full = {**event, "seq": seq, "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            if create_exclusive(join(folder, f"e{seq:06d}.json"),
                                json.dumps(full, indent=2, sort_keys=True).encode()):
                return full

    def promote(self, version: str, *, alias: str = CHAMPION, reason: str = "manual promotion") -> dict:
        state = self.state()
        if version not in state.versions:
            raise ModelNotFound(f"model {self.name!r} has no version {version!r} "
                                f"(versions: {', '.join(sorted(state.versions)) or 'none'})")
        return self.commit({"action": "promote", "pushes": {alias: version}, "alias": alias, "version": version,
                            "previous": state.alias(alias), "reason": reason})

    def rollback(self, *, alias: str = CHAMPION, reason: str = "manual rollback") -> dict:
        stack = self.state().alias_stacks.get(alias) or []
        if len(stack) < 2:
            raise ModelNotFound(f"alias {alias!r} of model {self.name!r} has no earlier version to roll back to "
                                f"(history of the alias: {stack or 'empty'})")
        return self.commit({"action": "rollback", "pops": [alias], "alias": alias, "version": stack[-2],
                            "previous": stack[-1], "reason": reason})


def is_version(name: str) -> bool:
    return bool(_VERSION.match(name))
