"""Victim scores and admission frequencies of the lab's policies (param vector P, sim.PARAM).

`_score` orders a resident slot as a victim, lower evicted first (the replay puts empty slots
before every score):
  score 0 lru (stamp) | 1 slot-lfu (uses, then stamp) | 2 sketch-lfu (est(tag), then stamp)
        3 prior (prior[tag], then stamp) | 4 hyperbolic (uses/(tick-born+1), then stamp)
        5 sketch+prior (est + prior_w/16*prior, then stamp)
`_freq` is what admission compares (newcomer against victim): the sketch estimate (adm_src 0), the
static prior (1), or est + prior_w/16*prior (2).
"""
from __future__ import annotations

import numba

from .sketch import _est


@numba.njit(cache=True)
def _score(P, slot, tags, stamp, uses, born, tick, sk, depth, mask, width, prior):
    mode = P[0]
    if mode == 0:
        return float(stamp[slot])
    elif mode == 1:
        return float(min(uses[slot], 1 << 16)) * 1e9 + stamp[slot]
    elif mode == 2:
        return float(_est(sk, tags[slot], depth, mask, width)) * 1e9 + stamp[slot]
    elif mode == 3:
        return float(prior[tags[slot]]) * 1e9 + stamp[slot]
    elif mode == 4:
        return float(uses[slot]) / float(tick - born[slot] + 1) * 1e12 + stamp[slot]
    else:
        return (float(_est(sk, tags[slot], depth, mask, width)) + P[12] / 16.0 * prior[tags[slot]]) * 1e9 + stamp[slot]


@numba.njit(cache=True)
def _newcomer_score(P, x, tick, sk, depth, mask, width, prior):
    """A miss's score as if resident since this tick (the merge insert compares it with residents')."""
    score_mode = P[0]
    if score_mode == 0:
        return float(tick)
    elif score_mode == 2:
        return float(_est(sk, x, depth, mask, width)) * 1e9 + tick
    elif score_mode == 5:
        return (float(_est(sk, x, depth, mask, width)) + P[12] / 16.0 * prior[x]) * 1e9 + tick
    elif score_mode == 3:
        return float(prior[x]) * 1e9 + tick
    return 1e9 + tick


@numba.njit(cache=True)
def _freq(P, x, sk, depth, mask, width, prior):
    if P[11] == 0:
        return float(_est(sk, x, depth, mask, width))
    elif P[11] == 1:
        return float(prior[x])
    return float(_est(sk, x, depth, mask, width)) + P[12] / 16.0 * prior[x]
