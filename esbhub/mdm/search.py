"""Customer search: the in-memory fuzzy name index behind ``GET /v1/customers?q=…``.

The fuzzy part of :meth:`esbhub.mdm.service.MdmService.search` ranks the active golden records
by rapidfuzz ``WRatio`` (cut-off 60) of their core name (字号) and of their name against the
query. It used to reload every active golden record's names whenever any golden record had
changed (~1.2 s at 359k golden records, so under real-time ingestion nearly every search) and
score all of them, twice (~0.3 s each; docs/benchmarks.md, "Customer search"). Here:

* **The index follows the store incrementally.** It is loaded once; before each search it reads
  the golden records of the history rows above the newest it has seen — one statement on the
  ``mdm_golden_history`` primary key joined to ``mdm_golden``. Every change of a golden record's
  name or status writes a history row, and MDM writers are serialized (the ``writer`` row,
  :func:`esbhub.mdm.service._bump_writer`), so history ids grow in commit order: what this
  process, a worker or a bulk load committed is seen by the next search, a rolled-back
  transaction never is (the matcher index follows other processes the same way,
  ``MdmService._catch_up``), and the ingest path does nothing more for it.
* **Candidates from an inverted index, scored by rapidfuzz, best first.** Names are compared
  folded (:func:`esbhub.mdm.standardize.fold`: NFKC, traditional → simplified, spaces and
  punctuation removed, Latin upper case) on both sides, so 華信 finds 华信 and a name is one
  token. ``WRatio`` of two such strings is then bounded by how many characters they share
  (:func:`max_wratio`). An inverted index — each occurrence of a character its own token —
  counts the characters every name shares with the query in one ``numpy.bincount``; only
  names whose bound reaches the cut-off are candidates, scored by decreasing bound in chunks,
  and scoring stops once no candidate left can enter the best ``limit``. So the answer is the
  one scoring every name would give (``tests/mdm/test_search.py`` checks both the bound and
  the answers against scoring everything).
"""

from __future__ import annotations

import heapq
import threading
from array import array
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import sqlalchemy as sa

from esbhub.mdm.store import Golden, GoldenHistory

CUTOFF = 60.0
"""The least WRatio a fuzzy name hit scores."""

COMMON_SHARE = 0.5
"""A character (occurrence) in more than this share of the names is counted as shared with every
name instead of being looked up: its posting list (有, 限, 公, 司 are in nearly every name) costs
more to count than the few extra candidates let through."""

STALE_SHARE = 0.2
"""Postings left behind by names that changed (they only over-count) are dropped by rebuilding
the inverted index from the names once they are this share of all postings."""

Row = Sequence[Any]
"""A golden record as the index reads it: (golden id, status, name, core name)."""

_CHUNK = 512  # candidates scored in the first round; ×4 each round after
_OCC = 1 << 16  # token = code point × _OCC + occurrence (0 for a character's first in the string)

_CHANGED = (
    sa.select(GoldenHistory.id, Golden.golden_id, Golden.status, Golden.name, Golden.core_name)
    .join(Golden, Golden.golden_id == GoldenHistory.golden_id)
    .where(GoldenHistory.id > sa.bindparam("since"))
    .order_by(GoldenHistory.id)
    .limit(sa.bindparam("n"))
)
_NEWEST = sa.select(sa.func.max(GoldenHistory.id))
_ALL = sa.select(Golden.golden_id, Golden.status, Golden.name, Golden.core_name).order_by(Golden.golden_id)


def max_wratio(lq: int, ls: np.ndarray, shared: np.ndarray) -> np.ndarray:
    """An upper bound of ``rapidfuzz.fuzz.WRatio(q, s)`` for strings without whitespace, from
    their lengths ``lq`` and ``ls`` and ``shared``, at least the size of the multiset intersection
    of their characters (which bounds their longest common subsequence, LCS).

    Without whitespace each string is one token, so WRatio is the largest of: ``ratio`` =
    200·LCS / (lq + ls); the token ratios (``ratio`` again, or 100 for equal strings, whose
    ``ratio`` is 100) × 0.95; and, when the longer is at least 1.5 × the shorter (length
    ``lmin``), ``partial_ratio`` × 0.9 (× 0.6 beyond 8 ×) — the ratio of the shorter and a window
    of the longer at most ``lmin`` long, 200·c / (lmin + w) with c ≤ min(LCS, w): at most
    200·LCS / (lmin + LCS).
    """
    ls = ls.astype(np.float64)
    lmin = np.minimum(ls, float(lq))
    m = np.minimum(shared.astype(np.float64), lmin)
    with np.errstate(divide="ignore", invalid="ignore"):
        full = np.where(ls > 0, 200.0 * m / (lq + ls), 0.0)
        partial = np.where((m > 0) & (np.maximum(ls, lq) >= 1.5 * lmin), 180.0 * m / (lmin + m), 0.0)
    return np.maximum(full, partial)  # type: ignore[no-any-return]


def _tokens(s: str) -> set[int]:
    """Each occurrence of a character its own token: 司 and, for a second 司, 司 + 1."""
    return {ord(ch) * _OCC + i for ch, n in Counter(s).items() for i in range(n)}


def _grown(a: np.ndarray, n: int) -> np.ndarray:
    """``a`` with room for ``n`` entries: itself, or a copy doubled (at least 1,024), zero-filled."""
    if n <= len(a):
        return a
    bigger = np.zeros(max(n, 2 * len(a), 1024), dtype=a.dtype)
    bigger[: len(a)] = a
    return bigger


class _Field:
    """One folded string per slot (the core name, or the name) with its inverted index.

    Compact, for a long-lived API process: the strings of the last (re)build are one ``str``
    with offsets (``blob``, ``off``; hundreds of thousands of small ``str`` objects took ~3 × the
    memory, and their churn at load left the heap fragmented), the strings set since in
    ``over``. The inverted index likewise: a base built from every string at once (numpy) and
    per-token lists of slots added since (``extra``). A slot whose string changes is added to
    the tokens it did not hold; it stays listed under those it no longer holds, which only
    over-counts what it shares (the bound stays a bound) until :meth:`rebuild` drops them."""

    def __init__(self) -> None:
        self.blob = ""
        self.off = np.zeros(1, dtype=np.int64)
        self.over: dict[int, str] = {}
        self.length = np.zeros(0, dtype=np.int32)
        self.base: dict[int, tuple[int, int]] = {}  # token → its range in base_slots
        self.base_slots = np.zeros(0, dtype=np.int32)
        self.extra: dict[int, array[int]] = {}
        self.postings = 0
        self.stale = 0
        self.n = 0  # slots

    def text(self, slot: int) -> str:
        s = self.over.get(slot)
        if s is not None:
            return s
        if slot + 1 < len(self.off):
            return self.blob[self.off[slot] : self.off[slot + 1]]
        return ""

    def grow(self, n: int) -> None:
        self.n = max(self.n, n)
        self.length = _grown(self.length, n)

    def set(self, slot: int, text: str) -> None:
        old = self.text(slot)
        if old == text:
            return
        held, now = _tokens(old), _tokens(text)
        for tok in now - held:
            lst = self.extra.get(tok)
            if lst is None:
                lst = self.extra[tok] = array("i")
            lst.append(slot)
        self.postings += len(now - held)
        self.stale += len(held - now)
        self.over[slot] = text
        self.length[slot] = len(text)
        if self.stale > 1000 and self.stale > STALE_SHARE * self.postings:
            self.rebuild()

    def rebuild(self) -> None:
        """Strings and inverted index as they are now, built afresh."""
        texts = [self.text(i) for i in range(self.n)]
        self.build([np.fromiter((len(t) for t in texts), dtype=np.int64, count=len(texts))], ["".join(texts)])

    def build(self, lens: list[np.ndarray], blobs: list[str]) -> None:
        """Take slots ``0 …`` with the strings of ``blobs`` (cut by ``lens``), in slot order, and
        build the inverted index at once: every character with its slot, sorted by (character,
        slot) — a stable radix sort on dense character numbers, the slots being in order
        already; a character's later occurrences in one string (rare) are tokens of their own."""
        ls = np.concatenate(lens) if lens else np.zeros(0, dtype=np.int64)
        self.blob = "".join(blobs)
        self.off = np.r_[0, np.cumsum(ls)].astype(np.int64)
        self.over = {}
        self.grow(len(ls))
        self.length[: len(ls)] = ls
        cps = np.frombuffer(self.blob.encode("utf-32-le"), dtype=np.uint32).astype(np.int64)
        slots = np.repeat(np.arange(len(ls), dtype=np.int32), ls)
        present = np.bincount(cps, minlength=1) > 0
        dense = np.cumsum(present) - 1  # code point → its rank among the characters present
        ranks = dense[cps]
        order = np.argsort(ranks.astype(np.uint16) if present.sum() <= 1 << 16 else ranks, kind="stable")
        cps, slots = cps[order], slots[order]
        at = np.arange(len(cps))
        same = np.r_[False, (cps[1:] == cps[:-1]) & (slots[1:] == slots[:-1])]
        occ = at - np.maximum.accumulate(np.where(same, 0, at))  # rank in its run of one character in one string
        toks = cps * _OCC + occ
        if same.any():  # later occurrences sit among the first ones: in (token, slot) order
            order = np.argsort(toks, kind="stable")
            toks, slots = toks[order], slots[order]
        first = np.flatnonzero(np.r_[True, toks[1:] != toks[:-1]]) if len(toks) else np.zeros(0, dtype=np.int64)
        ends = np.r_[first[1:], len(toks)].astype(np.int64)
        self.base = dict(zip(toks[first].tolist(), zip(first.tolist(), ends.tolist(), strict=True), strict=True))
        self.base_slots = slots
        self.extra = {}
        self.postings = len(toks)
        self.stale = 0

    def shared(self, q: str, n: int) -> tuple[np.ndarray, int]:
        """Per slot (the first ``n``): how many characters it shares with ``q``, not counting the
        ``common`` ones (the second value) that are counted as shared with every slot."""
        parts = []
        common = 0
        limit = max(64, int(n * COMMON_SHARE))
        for tok in _tokens(q):
            span = self.base.get(tok)
            lst = self.extra.get(tok)
            size = (span[1] - span[0] if span else 0) + (len(lst) if lst is not None else 0)
            if size > limit:
                common += 1
                continue
            if span:
                parts.append(self.base_slots[span[0] : span[1]])
            if lst is not None:
                parts.append(np.array(lst, dtype=np.int32))
        counts = np.bincount(np.concatenate(parts), minlength=n)[:n] if parts else np.zeros(n, dtype=np.int64)
        return counts, common


@dataclass(frozen=True)
class Hit:
    golden_id: str
    score: float  # rounded to 6 decimals
    on: str  # "core_name" | "name"


class NameIndex:
    """Folded core names and names of the golden records, following the store (:meth:`refresh`).

    Thread-safe through :attr:`lock` (searches and refreshes hold it). Slots are handed out in
    golden-id order — every golden record at the load, new ones in id order as they appear (ids
    grow with the golden sequence, and a transaction's new ids all come after the ones committed
    before it) — so slot order is golden-id order, which breaks score ties."""

    def __init__(self, fold_many: Callable[[Sequence[str]], list[str]]) -> None:
        self._fold_many = fold_many  # esbhub.mdm.standardize.fold_many: fold over many strings
        self.lock = threading.Lock()
        self.loaded = False
        self.seen = 0  # the newest golden history id read
        self.slot: dict[str, int] = {}
        self.gids: list[str] = []
        self.active = np.zeros(0, dtype=bool)
        self.core = _Field()
        self.name = _Field()
        self.reread = 0  # golden records read again since (tests, benchmarks)

    def __len__(self) -> int:
        """Active golden records indexed."""
        return int(self.active[: len(self.gids)].sum())

    # -------------------------------------------------------------- following the store
    def refresh(self, conn: sa.Connection, batch: int = 20_000) -> int:
        """Bring the index up to what the store has committed: at the first call every golden
        record, then those with a history row above :attr:`seen`. Returns how many were read."""
        if not self.loaded:
            return self._load(conn)
        n = 0
        while True:
            rows = conn.execute(_CHANGED, {"since": self.seen, "n": batch}).all()
            latest = {row[1]: tuple(row[1:]) for row in rows}  # the golden row as it is now, once per record
            if latest:
                self._apply([latest[gid] for gid in sorted(latest)])
                self.seen = rows[-1][0]
                n += len(latest)
            if len(rows) < batch:
                self.reread += n
                return n

    def _load(self, conn: sa.Connection, chunk: int = 20_000) -> int:
        # the newest history id first: a change committed while the rows are read is read again
        self.seen = int(conn.execute(_NEWEST).scalar() or 0)
        return self.load(conn.execution_options(yield_per=chunk).execute(_ALL).partitions())

    def load(self, chunks: Iterable[Sequence[Row]]) -> int:
        """Take every golden record (rows (golden id, status, name, core name), sorted by golden
        id, in chunks): each chunk is folded as it comes — only the folded strings outlive it —,
        then the inverted indexes are built at once."""
        gids: list[str] = []
        active: list[np.ndarray] = []
        parts: dict[str, tuple[list[np.ndarray], list[str]]] = {"name": ([], []), "core": ([], [])}
        for rows in chunks:
            gids += [r[0] for r in rows]
            active.append(np.fromiter((r[1] == "active" for r in rows), dtype=bool, count=len(rows)))
            names = self._fold_many([(r[2] or "") if r[1] == "active" else "" for r in rows])
            cores = self._fold_many([(r[3] or r[2] or "") if r[1] == "active" else "" for r in rows])
            for key, texts in (("name", names), ("core", cores)):
                parts[key][0].append(np.fromiter((len(t) for t in texts), dtype=np.int64, count=len(texts)))
                parts[key][1].append("".join(texts))
        self.gids = gids
        self.slot = dict(zip(gids, range(len(gids)), strict=True))
        on = np.concatenate(active) if active else np.zeros(0, dtype=bool)
        self.active = np.zeros(max(len(on), 1024), dtype=bool)
        self.active[: len(on)] = on
        self.name.build(*parts["name"])
        self.core.build(*parts["core"])
        self.loaded = True
        return len(gids)

    def _apply(self, rows: Sequence[Row]) -> None:
        """Take changed golden records (rows as :meth:`load` takes them, sorted by golden id): new
        ones get the next slots; an inactive or retired record is masked out, its strings kept
        until it is active again."""
        for r in rows:
            if r[0] not in self.slot:
                self.slot[r[0]] = len(self.gids)
                self.gids.append(r[0])
        n = len(self.gids)
        for f in (self.core, self.name):
            f.grow(n)
        self.active = _grown(self.active, n)
        slots = [self.slot[r[0]] for r in rows]
        self.active[slots] = np.fromiter((r[1] == "active" for r in rows), dtype=bool, count=len(rows))
        live = [(i, r) for i, r in zip(slots, rows, strict=True) if r[1] == "active"]
        folded = self._fold_many([r[2] or "" for _i, r in live] + [r[3] or r[2] or "" for _i, r in live])
        for (i, _r), name, core in zip(live, folded[: len(live)], folded[len(live) :], strict=True):
            self.name.set(i, name)
            self.core.set(i, core)

    # ------------------------------------------------------------------- searching
    def search(self, core_q: str, name_q: str, limit: int) -> list[Hit]:
        """The best ``limit`` active golden records by the WRatio of their folded core name
        against ``core_q`` or of their folded name against ``name_q`` — each record's better
        score (the core name's on a tie), ≥ :data:`CUTOFF` — best first, ties by golden id.

        The same as merging the best ``limit`` of each field: a record among the best ``limit``
        overall is among the best ``limit`` of the field it scores best in (every record ranked
        above it there is ranked above it overall). So one running top ``limit`` over both
        fields bounds what is worth scoring in either."""
        best: dict[int, tuple[float, str]] = {}
        for field, q, on in ((self.core, core_q, "core_name"), (self.name, name_q, "name")):
            self._score(field, q, on, limit, best)
        ranked = sorted(best.items(), key=lambda kv: (-kv[1][0], kv[0]))[:limit]
        return [Hit(self.gids[i], score, on) for i, (score, on) in ranked]

    def _score(self, field: _Field, q: str, on: str, k: int, best: dict[int, tuple[float, str]]) -> None:
        """Score the slots of ``field`` that may enter the best ``k`` of ``best`` (slot → (score,
        field)) into it, by decreasing bound; stop once none left can. Scores are rounded to 6
        decimals: equal scores reached along different paths (0.9 × a partial ratio, a ratio)
        may differ in their last bit, and are ties here, broken by slot."""
        from rapidfuzz import fuzz, process

        n = len(self.gids)
        if not q or not n or k <= 0:
            return
        shared, common = field.shared(q, n)
        cand = np.arange(n) if common else np.flatnonzero(shared)
        cand = cand[self.active[cand]]
        cb = np.round(max_wratio(len(q), field.length[cand], shared[cand] + common), 6)
        keep = cb >= CUTOFF
        cand, cb = cand[keep], cb[keep]
        text = field.text
        chunk = _CHUNK
        while len(cand):
            if len(best) >= k:
                kth_score, kth_slot = _kth(best, k)
                keep = (cb > kth_score) | ((cb == kth_score) & (cand < kth_slot))
                cand, cb = cand[keep], cb[keep]  # the others cannot enter the best k
                if not len(cand):
                    return
            if len(cand) > chunk:
                pick = np.argpartition(-cb, chunk - 1)
                slots = cand[pick[:chunk]].tolist()
                cand, cb = cand[pick[chunk:]], cb[pick[chunk:]]
            else:
                slots = cand.tolist()
                cand, cb = cand[:0], cb[:0]
            scores = process.cdist([q], [text(i) for i in slots], scorer=fuzz.WRatio, score_cutoff=CUTOFF,
                                   dtype=np.float64)[0].tolist()
            for i, sc in zip(slots, scores, strict=True):
                sc = round(sc, 6)
                if sc >= CUTOFF and (i not in best or best[i][0] < sc):
                    best[i] = (sc, on)
            chunk *= 4


def _kth(best: dict[int, tuple[float, str]], k: int) -> tuple[float, int]:
    """The k-th entry (score, slot) of ``best`` ranked by score (descending), then slot."""
    score, slot = heapq.nsmallest(k, ((-v[0], i) for i, v in best.items()))[-1]
    return -score, slot
