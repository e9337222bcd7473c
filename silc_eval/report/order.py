"""The order of benchmark groups and benchmarks in every report: as the papers group them."""

from __future__ import annotations

from typing import Sequence

# The groups of benchmarks/definitions/*.yaml, in the order the SILC / SF-CLIP tables use.
GROUP_ORDER = ["classification", "few-shot", "retrieval", "multilingual retrieval (XM3600)",
               "multilingual retrieval (XTD10)", "multilingual retrieval (Flickr30k-200)", "zero-shot segmentation",
               "zero-shot segmentation (ClearCLIP protocol)", "zero-shot segmentation (NACLIP protocol)",
               "open-vocabulary segmentation", "linear segmentation", "compositionality (SugarCrepe)",
               "compositionality (Winoground)", "DataComp: ImageNet", "DataComp: ImageNet dist. shifts",
               "DataComp: VTAB", "DataComp: retrieval", "DataComp: others"]


def suite_order() -> list[str]:
    """Return every benchmark named by a suite, suites in name order, first mention kept ([] if unreadable)."""
    try:
        from silc_eval.core.errors import UserError
        from silc_eval.registry import load_suites

        suites = load_suites(on_error=lambda _: None)  # a malformed suite only loses its own order
    except (UserError, OSError):
        return []
    return list(dict.fromkeys(name for suite in suites.values() for name in suite.benchmarks))


def order_groups(groups: Sequence[str]) -> list[str]:
    """Return the distinct groups in GROUP_ORDER, unknown groups after them in name order."""
    known = [g for g in GROUP_ORDER if g in set(groups)]
    return known + sorted(set(groups) - set(GROUP_ORDER))


def order_benchmarks(group_of: dict[str, str], preferred: Sequence[str] | None = None) -> list[str]:
    """Return the benchmarks of group_of ordered by group, then by preferred (else suite) order, then name."""
    preferred = list(preferred) if preferred else suite_order()
    rank = {name: i for i, name in enumerate(preferred)}
    groups = order_groups(list(group_of.values()))
    return sorted(group_of, key=lambda b: (groups.index(group_of[b]), rank.get(b, len(rank)), b))
