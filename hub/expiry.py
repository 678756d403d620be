"""Session time limits: deadline, warning, extend within the group's limit, end.

Pure functions over numbers (epoch seconds); the limits come from the policy's groups
(most generous group wins) or the defaults. ``phase`` tells the watcher what to do now:
nothing, send the warning event (once), or stop the session.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


class ExpiryError(ValueError):
    """A request beyond the limits; the message names the limit."""


@dataclass(frozen=True)
class TimeLimits:
    default_hours: float = 8.0  # a session's length when the form asks for none
    max_hours: float = 24.0  # the longest a session may run in all, extensions included
    warn_minutes: float = 15.0  # the warning comes this long before the end

    def __post_init__(self):
        if not (0 < self.default_hours <= self.max_hours):
            raise ExpiryError(f"time limits: expected 0 < default_hours <= max_hours, got "
                              f"default_hours={self.default_hours}, max_hours={self.max_hours}")
        if self.warn_minutes < 0:
            raise ExpiryError(f"time limits: warn_minutes must be >= 0, got {self.warn_minutes}")


def limits_for(groups: list[str], by_group: dict[str, TimeLimits], default: TimeLimits) -> TimeLimits:
    """The most generous limits among the user's groups (a workshop group cannot shorten staff)."""
    mine = [by_group[g] for g in groups if g in by_group]
    return max(mine, key=lambda t: (t.max_hours, t.default_hours)) if mine else default


def deadline(started: float, requested_hours: float | None, limits: TimeLimits) -> float:
    hours = limits.default_hours if requested_hours is None else float(requested_hours)
    if hours <= 0:
        raise ExpiryError(f"time_limit_hours: expected a positive number of hours, got {hours}")
    if hours > limits.max_hours:
        raise ExpiryError(f"time_limit_hours: {hours} h is beyond your limit of {limits.max_hours} h")
    return started + hours * 3600


def extend(started: float, end: float, extra_hours: float, limits: TimeLimits) -> float:
    """The new end, or ExpiryError naming the limit when it would pass ``max_hours``."""
    if extra_hours <= 0:
        raise ExpiryError(f"hours: expected a positive number of hours, got {extra_hours}")
    new_end = end + extra_hours * 3600
    if new_end - started > limits.max_hours * 3600 + 1e-6:
        left = max(0.0, (started + limits.max_hours * 3600 - end) / 3600)
        raise ExpiryError(f"extend by {extra_hours} h refused: sessions may run at most {limits.max_hours} h "
                          f"in all ({left:.2f} h left to extend)")
    return new_end


def within_site(limits: TimeLimits, site_max_hours: float | None) -> TimeLimits:
    """The limits on a site whose batch system ends jobs after `site_max_hours` (e.g. Slurm's
    --time): neither the session nor its extensions may outlast it."""
    if not site_max_hours or site_max_hours >= limits.max_hours:
        return limits
    return TimeLimits(default_hours=min(limits.default_hours, site_max_hours), max_hours=site_max_hours,
                      warn_minutes=limits.warn_minutes)


def phase(now: float, end: float, limits: TimeLimits) -> str:
    """'running', 'warning' (within warn_minutes of the end) or 'expired'."""
    if now >= end:
        return "expired"
    if end - now <= limits.warn_minutes * 60:
        return "warning"
    return "running"


# ------------------------------------------------------------------ the watcher (API service)

LIMITS_FILE = "time-limits.json"  # next to the state dir: {"default": {...}, "groups": {"name": {...}}}
STATE_FILE = "expiry.json"


def load_limits(path) -> tuple[TimeLimits, dict[str, TimeLimits]]:
    import json
    from pathlib import Path
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return TimeLimits(), {}
    except ValueError as e:
        raise ExpiryError(f"{path}: expected JSON ({e})") from None
    try:
        default = TimeLimits(**raw.get("default", {}))
        groups = {g: TimeLimits(**v) for g, v in raw.get("groups", {}).items()}
    except TypeError as e:
        raise ExpiryError(f"{path}: keys are default_hours, max_hours, warn_minutes ({e})") from None
    return default, groups


class ExpiryWatcher:
    """Tracks each running session's end, records the warning once, stops it at the end."""

    def __init__(self, store, state_dir, groups_of, stop_server, log=None):
        from pathlib import Path
        self.store, self.groups_of, self.stop_server, self.log = store, groups_of, stop_server, log
        self.path = Path(state_dir) / STATE_FILE
        try:
            self.default, self.by_group = load_limits(Path(state_dir).parent / LIMITS_FILE)
        except ExpiryError as e:  # a bad limits file must not take the API down: defaults, loudly
            if log:
                log.error("expiry: %s; using the default time limits", e)
            self.default, self.by_group = TimeLimits(), {}
        self.sessions: dict[str, dict] = self._load()

    def _load(self) -> dict:
        import json
        try:
            return json.loads(self.path.read_text())
        except (FileNotFoundError, ValueError):
            return {}

    def _save(self) -> None:
        import json
        import os
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.sessions))
        os.replace(tmp, self.path)

    async def limits(self, user: str) -> TimeLimits:
        if not self.by_group:
            return self.default
        return limits_for(await self.groups_of(user), self.by_group, self.default)

    async def poll(self, now: float) -> None:
        live = {f"{s['user']}/{s.get('server_name', '')}": s for s in self.store.read().get("sessions", [])
                if s.get("status") == "running" and "user" in s}
        changed = False
        for key in [k for k in self.sessions if k not in live]:
            del self.sessions[key]
            changed = True
        for key, s in live.items():
            rec = self.sessions.get(key)
            if rec is None or rec["since"] != s.get("since"):
                lim = within_site(await self.limits(s["user"]), s.get("site_max_hours"))
                started = float(s.get("since") or now)
                try:  # the spawn form checked the hours; limits changed since then: the limit wins
                    end = deadline(started, s.get("time_limit_hours"), lim)
                except ExpiryError:
                    end = deadline(started, lim.max_hours, lim)
                rec = self.sessions[key] = {"user": s["user"], "server_name": s.get("server_name", ""),
                                            "since": s.get("since"), "started": started, "end": end,
                                            "limits": asdict(lim), "events": []}
                changed = True
            p = phase(now, rec["end"], TimeLimits(**rec["limits"]))
            if p == "warning" and not any(e["kind"] == "warning" and e["end"] == rec["end"] for e in rec["events"]):
                rec["events"].append({"kind": "warning", "time": now, "end": rec["end"],
                                      "message": f"This session ends in {max(0, rec['end'] - now) / 60:.1f} "
                                                 "minutes; extend it or save your work."})
                changed = True
            elif p == "expired" and not any(e["kind"] == "ended" for e in rec["events"]):
                rec["events"].append({"kind": "ended", "time": now, "end": rec["end"],
                                      "message": "The session reached its time limit and was stopped."})
                changed = True
                try:
                    await self.stop_server(rec["user"], rec["server_name"])
                except Exception as e:  # one session that will not stop must not stop the watcher
                    if self.log:
                        self.log.warning("expiry: could not stop %s: %s", key, e)
        if changed:
            self._save()

    def extend(self, user: str, server_name: str, hours: float) -> dict:
        rec = self.sessions.get(f"{user}/{server_name}")
        if rec is None:
            raise ExpiryError("no running session to extend")
        rec["end"] = extend(rec["started"], rec["end"], hours, TimeLimits(**rec["limits"]))
        rec["events"].append({"kind": "extended", "end": rec["end"], "message": f"Extended by {hours} h"})
        self._save()
        return rec
