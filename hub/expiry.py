"""Session time limits: deadline, warning, extend within the group's limit, end.

Pure functions over numbers (epoch seconds); the limits come from the policy's groups
(most generous group wins) or the defaults. ``phase`` tells the watcher what to do now:
nothing, send the warning event (once), or stop the session.
"""

from __future__ import annotations

from dataclasses import dataclass


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


def phase(now: float, end: float, limits: TimeLimits) -> str:
    """'running', 'warning' (within warn_minutes of the end) or 'expired'."""
    if now >= end:
        return "expired"
    if end - now <= limits.warn_minutes * 60:
        return "warning"
    return "running"
