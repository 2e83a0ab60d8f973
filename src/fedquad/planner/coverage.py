"""Coverage option (docs/design.md, "Planner"): keep every block trained by someone.

Shallow plans leave the blocks nearest the input untrained; if that lasts, those adapters never
move. When a block has had no trainer for K rounds and nobody trains it in the planned
assignment, the device that can reach it at least cost is raised to the depth that reaches it.
Trainable segments always end at the output, so reaching the lowest starving block also covers
every block above it: one raise per round suffices. Least cost = smallest resulting round time,
then smallest increase of that device's own time, then input order (deterministic).
"""

from __future__ import annotations


def apply_coverage(pop, k: list[int], rounds_without_trainer: list[int], coverage_rounds: int) -> dict[int, str]:
    """Raise one device in place in `k` (depth per participant) if a block starves; {participant: reason}.

    Any feasible depth may be used here, also one the greedy's walk skips as not worth it: reaching
    the block is the point."""
    if not k:
        return {}
    L = len(rounds_without_trainer)
    covered_from = L - max(k)
    starving = [b for b in range(covered_from) if rounds_without_trainer[b] >= coverage_rounds]
    if not starving:
        return {}
    round_time = max(pop.time(j, kj) for j, kj in enumerate(k))
    for block in starving:  # lowest first: reaching it covers everything above
        need = L - block
        best = None
        for j, es in enumerate(pop.sets):
            if es.max_depth < need:
                continue
            t_new = pop.time(j, need)
            key = (max(round_time, t_new), t_new - pop.time(j, k[j]), j)
            if best is None or key < best:
                best = key
        if best is not None:
            j = best[2]
            old = k[j]
            k[j] = need
            return {j: f"raised d={old} -> d={need} for coverage: block {block} had no trainer for "
                       f"{rounds_without_trainer[block]} rounds"}
    return {}
