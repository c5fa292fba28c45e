"""How a pass's misses enter the cache: the three insert variants of the replay (param `rank`).

Every variant gets the pass's misses grouped by set (`order`: a stable sort by set, so ids ascend
within a set) after the hits were touched with this pass's tick.
  rank 1 `_insert_ranked`  the project's batch semantics (RowCache.insert, host_index.plan): the k-th
         miss of a set takes the set's k-th best victim by the scores at the insert's start; slots hit
         this pass are pinned (ranked after every other slot); no admission, no segments. Held equal
         to RowCache (tests/bench/test_policy_lab.py). pin_scored 1 is the first lab's ranking, which
         ranked pinned slots by their scores: the same for LRU (a hit's stamp is the newest), but
         under LFU a miss could displace a row hit in its pass with few uses. Issue 17's decode
         figures are the same either way to their 4 digits (1,048,576 tokens, Brown and MSRA, 1% and
         5%); its prefill LFU ones (passes of 64 prompts) are pin_scored 1's, which
         policies.P["lfu-d1024-pin-scored"] reproduces.
  rank 2 `_insert_merged`  per set, keep the `ways` best of its residents and its misses (residents
         hit this pass never leave; a newcomer loses a tie against a resident).
  rank 0 `_insert_sequential`  one miss after the other within a set, with admission (admit,
         adm_src), a window (win: new ids enter LRU window ways whose overflow competes with the main
         victim), SLRU segments (prot: protected ways; the main victim comes from probation first)
         and ghosts (ghost: a set's last evicted tags; a ghost hit skips admission, enters protected).
"""
from __future__ import annotations

import numba
import numpy as np

from .scores import _freq, _newcomer_score, _score


@numba.njit(cache=True)
def _fill(tags, stamp, uses, born, at, x, tick):
    tags[at], stamp[at], uses[at], born[at] = x, tick, 1, tick


@numba.njit(cache=True)
def _demote(tags, seg, stamp, base, ways, prot, keep):
    """More than `prot` protected slots in the set: its least recent protected one (not `keep`) goes
    back to probation."""
    cnt, lw, ls = 0, -1, 1 << 62
    for w in range(ways):
        at = base + w
        if tags[at] >= 0 and seg[at] == 2:
            cnt += 1
            if stamp[at] < ls and at != keep:
                ls, lw = stamp[at], at
    if cnt > prot and lw >= 0:
        seg[lw] = 1


@numba.njit(cache=True)
def _insert_ranked(P, miss_ids, miss_sets, order, nm, tags, stamp, uses, born, tick, ways,
                   sk, depth, mask, width, prior):
    scores = np.empty(ways, dtype=np.float64)
    ranked = np.empty(ways, dtype=np.int64)
    usable = ways
    k, prev = 0, -1
    for j in range(nm):
        i = order[j]
        s = miss_sets[i]
        if s != prev:
            for w in range(ways):
                at = s * ways + w
                if tags[at] < 0:
                    scores[w] = -1.0
                elif stamp[at] == tick and P[16] == 0:  # hit this pass: pinned, ranked last (as RowCache)
                    scores[w] = 1e300
                else:
                    scores[w] = _score(P, at, tags, stamp, uses, born, tick, sk, depth, mask, width, prior)
            # distinct scores with way index as the tie-break (as RowCache)
            ranked[:] = np.argsort(scores, kind="mergesort")
            usable = 0
            for w in range(ways):  # this pass's hits are pinned (stamp == tick before inserts)
                if not (tags[s * ways + w] >= 0 and stamp[s * ways + w] == tick):
                    usable += 1
            k, prev = 0, s
        if k < usable:
            _fill(tags, stamp, uses, born, s * ways + ranked[k], miss_ids[i], tick)
        k += 1


@numba.njit(cache=True)
def _insert_merged(P, miss_ids, miss_sets, order, nm, tags, stamp, uses, born, tick, ways,
                   sk, depth, mask, width, prior):
    j = 0
    while j < nm:
        s = miss_sets[order[j]]
        j2 = j
        while j2 < nm and miss_sets[order[j2]] == s:
            j2 += 1
        k = j2 - j
        cs = np.empty(ways + k, dtype=np.float64)
        for w in range(ways):
            at = s * ways + w
            if tags[at] < 0:
                cs[w] = -1.0
            elif stamp[at] == tick:  # hit this pass: pinned, never displaced
                cs[w] = 1e300
            else:
                cs[w] = _score(P, at, tags, stamp, uses, born, tick, sk, depth, mask, width, prior) * 2 + 1
        for m in range(k):
            x = miss_ids[order[j + m]]
            # a newcomer loses a tie against a resident (residents hit this pass have stamp == tick)
            cs[ways + m] = _newcomer_score(P, x, tick, sk, depth, mask, width, prior) * 2
        rk = np.argsort(-cs, kind="mergesort")
        keep = np.zeros(ways + k, dtype=np.bool_)
        for r in range(ways):
            keep[rk[r]] = True
        free = 0
        frees = np.empty(ways, dtype=np.int64)
        for w in range(ways):
            if not keep[w]:
                frees[free] = s * ways + w
                free += 1
        f = 0
        for m in range(k):
            if keep[ways + m]:
                _fill(tags, stamp, uses, born, frees[f], miss_ids[order[j + m]], tick)
                f += 1
        j = j2


@numba.njit(cache=True)
def _insert_sequential(P, miss_ids, miss_sets, order, nm, tags, stamp, uses, born, seg, ghosts, gpos, tick,
                       ways, sk, depth, mask, width, prior):
    admit, win, prot, ghost_n = P[1], P[7], P[8], P[14]
    for j in range(nm):
        i = order[j]
        x, s = miss_ids[i], miss_sets[i]
        base = s * ways
        empty = -1
        nwin = 0
        for w in range(ways):
            at = base + w
            if tags[at] < 0:
                if empty < 0:
                    empty = at
            elif seg[at] == 0:
                nwin += 1
        ghost_hit = False
        if ghost_n > 0:
            for g in range(ghost_n):
                if ghosts[s * ghost_n + g] == x:
                    ghost_hit = True
                    ghosts[s * ghost_n + g] = -1
                    break
        if empty >= 0:
            _fill(tags, stamp, uses, born, empty, x, tick)
            seg[empty] = 0 if win > 0 else 1
            if win > 0 and nwin + 1 > win:  # window overflow moves its LRU to probation
                lw, ls = -1, 1 << 62
                for w in range(ways):
                    at = base + w
                    if tags[at] >= 0 and seg[at] == 0 and stamp[at] < ls and at != empty:
                        ls, lw = stamp[at], at
                if lw >= 0:
                    seg[lw] = 1
            continue
        # candidate: the new id, or (with a window) the window's LRU
        cand = -1
        if win > 0:
            ls = 1 << 62
            for w in range(ways):
                at = base + w
                if seg[at] == 0 and stamp[at] < ls:
                    ls, cand = stamp[at], at
            if nwin < win:
                cand = -1  # window not full (cannot happen once full, kept for safety)
        # main victim: probation first, then protected, by score
        v, vs, vseg = -1, 1e300, 9
        for w in range(ways):
            at = base + w
            sg = seg[at]
            if sg == 0:
                continue
            sc = _score(P, at, tags, stamp, uses, born, tick, sk, depth, mask, width, prior)
            if sg < vseg or (sg == vseg and sc < vs):
                v, vs, vseg = at, sc, sg
        if win > 0 and cand >= 0:
            if v < 0:  # all ways are window
                evict = cand
            else:
                fc = _freq(P, tags[cand], sk, depth, mask, width, prior)
                fv = _freq(P, tags[v], sk, depth, mask, width, prior)
                if admit == 0 or (admit == 1 and fc > fv) or (admit == 2 and fc >= fv):
                    seg[cand] = 1
                    evict = v
                else:
                    evict = cand
            if ghost_n > 0:
                ghosts[s * ghost_n + gpos[s] % ghost_n] = tags[evict]
                gpos[s] += 1
            _fill(tags, stamp, uses, born, evict, x, tick)
            seg[evict] = 0
        else:
            ok = True
            if admit > 0 and not ghost_hit:
                fx = _freq(P, x, sk, depth, mask, width, prior)
                fv = _freq(P, tags[v], sk, depth, mask, width, prior)
                ok = (admit == 1 and fx > fv) or (admit == 2 and fx >= fv)
            if ok:
                if ghost_n > 0:
                    ghosts[s * ghost_n + gpos[s] % ghost_n] = tags[v]
                    gpos[s] += 1
                _fill(tags, stamp, uses, born, v, x, tick)
                seg[v] = 2 if (ghost_hit and prot > 0) else 1
                if ghost_hit and prot > 0:
                    _demote(tags, seg, stamp, base, ways, prot, v)
