"""Notification categories and the rules that come with each.

A category decides whether a send respects opt-outs, quiet hours and
frequency caps, and what happens to it when Redis is unreachable. Users opt
out per category; caps count per user and category over a rolling day.
"""

from __future__ import annotations

from dataclasses import dataclass

from pushflow.domain.errors import InvalidRequest


@dataclass(frozen=True, slots=True)
class Category:
    name: str
    # Transactional pushes (a receipt, a login code) bypass caps and quiet hours.
    transactional: bool
    # Default pushes per user per rolling 24 hours; None: uncapped.
    daily_cap: int | None
    # Users may opt out of it (everything but security/transactional).
    can_opt_out: bool = True

    @property
    def at_least_once(self) -> bool:
        """When SNS's answer cannot say whether a push went: pushed again (a missing
        login code costs more than one shown twice; the push carries a collapse id),
        or, for every other category, never pushed again and recorded `unknown`."""
        return self.transactional


CATEGORIES: dict[str, Category] = {
    c.name: c
    for c in (
        Category("transactional", transactional=True, daily_cap=None, can_opt_out=False),
        Category("security", transactional=True, daily_cap=None, can_opt_out=False),
        Category("social", transactional=False, daily_cap=10),
        Category("reminders", transactional=False, daily_cap=5),
        Category("news", transactional=False, daily_cap=3),
        Category("marketing", transactional=False, daily_cap=2),
    )
}


def category(name: str, field: str = "category") -> Category:
    try:
        return CATEGORIES[name]
    except KeyError:
        known = ", ".join(sorted(CATEGORIES))
        raise InvalidRequest(f"unknown category {name!r}; known: {known}", field) from None
