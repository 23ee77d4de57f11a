"""Retrieval: FTS5 BM25 candidates for the query and its synonyms, joined (while the notes are few enough to compare
them all) by the notes nearest the question in meaning (a static embedding model, `meaning.py`); then a rerank that
weighs how much of the question a passage answers (its rare words count most), its meaning, BM25, phrase proximity,
title matches, source reliability and recency. A superseded fact never outranks the note that replaced it, and an
owner's newer note close in meaning to a runbook passage and answering the same words is ranked ahead of it even when
it was not recorded as replacing it.

Declining is decided apart from ranking: nothing is returned when the question is mostly about names no note
contains, or when no passage holds enough of the question's rare words and none is close enough to it in meaning
("I have no note about that" beats a guess).

Everything here is offline and fast: no model call. Query rewriting from a conversation happens before (see
`context.py`), and hands this a standalone question."""

from __future__ import annotations

import datetime as dt
import itertools
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache, partial

from sqlalchemy import Connection

from aria.knowledge import vectors
from aria.knowledge.analysis import Concept, asks_for_recent, concepts, stems
from aria.knowledge.meaning import Embedder, blended_embedder, static_embedder
from aria.knowledge.vectors import NEIGHBOUR_NOTES, SEARCH_EMBEDS, NoteText, note_text
from aria.ledger import Ledger, as_utc

log = logging.getLogger(__name__)
CANDIDATES = 30  # BM25 candidates reranked (as many as 40 found no more answers, and cost more to embed)
NEIGHBOURS = 20  # and notes nearest in meaning, while there are at most NEIGHBOUR_NOTES notes (vectors.py)
COMMON_SHARE = 0.05  # a word in more than this share of the notes (and more than COMMON_MIN_NOTES) finds no
COMMON_MIN_NOTES = 500  # candidates on its own
MIN_COVERAGE = 0.5  # share of the question's weight the best passage must answer, else nothing is returned
KEEP_RATIO = 0.3  # passages shown beside the best one score at least this share of it
SUPERSEDED = 0.25  # a replaced note's score is cut to this share: below KEEP_RATIO, so beside an equally relevant
# replacement it is not shown at all (it is shown, after its replacement, only when it answers much better)
UNKNOWN_WORD = 0.5  # weight of an ordinary word no note contains, times the IDF of a word in one note
RECENCY = 0.03  # bonus for a fresh note; a question asking for the latest state gets RECENT_QUESTION instead
RECENT_QUESTION = 0.25
SAME_SUBJECT = 0.1  # word overlap (Jaccard) from which two passages answering alike count as one fact restated
SYNONYM_CREDIT = 0.85  # a concept matched only through a synonym counts a little less than the word itself
# Meaning (cosine similarity of question and passage) in a passage's score; and, when meaning is measured, a question
# is answered when some passage holds MEANING_COVERAGE of its weight in words OR is MEANING_CLOSE to it in meaning
# (either kind of evidence is enough; neither means no note answers it). Picked on the labelled set's tuning half
# (odd questions); the bench reports the held-out half beside it.
MEANING = 1.5
MEANING_COVERAGE = 0.48
MEANING_CLOSE = 0.42
UPDATE_CLOSE = 0.35  # an owner's note this close in meaning to an older runbook passage (and answering the same
# words of the question) is taken as an update of it (see `_implicit_updates`)
_WEIGHTS = {"coverage": 0.55, "bm25": 0.15, "title": 0.1, "proximity": 0.2}
_BM25_COLUMNS = (4.0, 1.0, 2.0)  # title, text, tags
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


@dataclass(frozen=True)
class Hit:
    """One returned note, with the score it was ranked by."""

    id: int
    text: str
    title: str
    source: str
    kind: str
    score: float
    dated: dt.datetime
    coverage: float = 0.0
    supersedes: int | None = None
    superseded_by: int | None = None
    matched: frozenset[str] = field(default_factory=frozenset, repr=False)

    def as_json(self) -> dict[str, object]:
        """The `aria knowledge search --json` shape."""
        return {"id": self.id, "source": self.source, "kind": self.kind, "title": self.title,
                "score": round(self.score, 4), "dated": self.dated.date().isoformat(), "text": self.text,
                "superseded_by": self.superseded_by}


def match_expression(items: Sequence[Concept]) -> str:
    """An FTS5 query matching any word of the question or its synonyms, each quoted (no operator can be injected)."""
    words = sorted({w for c in items for w in c.asks})
    return " OR ".join('"' + w.replace('"', '""') + '"' for w in words)


@dataclass(frozen=True)
class _Meaning:
    """The embedder a search ranks with, every note (when they are few enough to compare the question with each),
    and the embedder and notes whose vectors are to be stored once the search is done."""

    embedder: Embedder | None
    notes: list[NoteText] = field(default_factory=list)
    keeper: Embedder | None = None
    unembedded: list[NoteText] = field(default_factory=list)


@dataclass
class _Candidate:
    id: int
    bm25: float
    text: str = ""
    title: str = ""
    source: str = ""
    kind: str = ""
    reliability: int = 1
    supersedes: int | None = None
    superseded_by: int | None = None
    dated: dt.datetime = _EPOCH


class Searcher:
    """Ranks the notes of one ledger for a question."""

    def __init__(self, ledger: Ledger, *, meaning: bool = True, contextual: bool = True) -> None:
        self.ledger = ledger
        self.meaning = meaning  # False: words only (the bench measures each way)
        self.contextual = contextual  # False: the static model alone, whatever the number of notes

    def search(self, query: str, k: int = 5) -> list[Hit]:
        """The best notes for `query`, best first; empty when nothing is relevant enough."""
        items = concepts(query)
        if not items:
            return []
        with self.ledger.read_conn() as conn:
            total = int(conn.exec_driver_sql("SELECT count(*) FROM note").scalar_one())
            if total == 0:
                return []  # (and the embedding model is not loaded for nothing)
            weights, common = self._weights(conn, items, total)
            unknown = sum(1 for c, w in zip(items, weights, strict=True) if c.named and w < 0)
            if unknown and 2 * unknown >= sum(1 for c in items if c.named):
                return []  # the question is about things no note mentions by name: no note can answer it
            weights = [abs(w) for w in weights]
            # Words in a large share of the notes cost the index the most and tell BM25 the least: they still count
            # in the rerank, but candidates come from the rarer words (the rarest two at least).
            rare = [c for c, is_common in zip(items, common, strict=True) if not is_common]
            if len(rare) < min(2, len(items)):
                rare = [c for _, c in sorted(zip(weights, items, strict=True), key=lambda p: -p[0])[:2]]
            found = self._lexical(conn, rare)
            meaning = self._meaning(conn, total)
            embedder = meaning.embedder
            if embedder is not None and meaning.notes:
                for note_id in self._neighbours(embedder, query, meaning.notes):
                    found.setdefault(note_id, _Candidate(note_id, 0.0))
            candidates = self._candidates(conn, found)
            if not candidates:
                self._keep(meaning)
                return []
            texts = [note_text(c.title, c.text) for c in candidates]
            similarity, feedback = (embedder.similarities_with_feedback(query, texts) if embedder is not None
                                    else (None, None))
            updates = (partial(_implicit_updates, embedder=embedder, texts=dict(zip((c.id for c in candidates), texts,
                                                                                    strict=True)))
                       if embedder is not None else None)
            hits = self._rerank(items, weights, candidates, similarity, feedback, recent=asks_for_recent(query),
                                updates=updates)
            hits = self._with_replacements(conn, hits)
        self._keep(meaning)
        return hits[:k]

    def _keep(self, meaning: _Meaning) -> None:
        """Store the vectors this search made, once its answer is ready."""
        if meaning.unembedded and meaning.keeper is not None:
            vectors.keep(self.ledger, meaning.keeper, meaning.unembedded)

    def _meaning(self, conn: Connection, total: int) -> _Meaning:
        """How this search measures meaning: with the blended embedder while the notes are few and each has its
        vector (a few missing ones are embedded now), else with the static one; and which notes to store vectors of."""
        if not self.meaning:
            return _Meaning(None)
        if total > NEIGHBOUR_NOTES:
            return _Meaning(static_embedder())  # meaning reranks the BM25 candidates only
        embedder = blended_embedder() if self.contextual else static_embedder()
        if embedder is None:
            return _Meaning(None)
        notes, missing = vectors.read(conn, embedder)
        if not embedder.kept:  # the static model (alone, or for want of the encoder): nothing to store
            return _Meaning(embedder, notes)
        unembedded = [n for n in missing if not embedder.holds(n.text)]  # (the others only need storing)
        if len(unembedded) <= SEARCH_EMBEDS:
            return _Meaning(embedder, notes, embedder, missing)
        log.info("%d notes have no vector yet: this search ranks with the static model and embeds %d of them",
                 len(unembedded), SEARCH_EMBEDS)
        held = [n for n in missing if embedder.holds(n.text)]
        return _Meaning(static_embedder(), notes, embedder, held + unembedded[:SEARCH_EMBEDS])

    @staticmethod
    def _lexical(conn: Connection, items: Sequence[Concept]) -> dict[int, _Candidate]:
        """The best BM25 candidates for the question's words and their synonyms."""
        rows = conn.exec_driver_sql(
            f"SELECT rowid, bm25(note_fts, {', '.join(map(str, _BM25_COLUMNS))}) AS rank FROM note_fts "
            "WHERE note_fts MATCH ? ORDER BY rank LIMIT ?", (match_expression(items), CANDIDATES)).all()
        return {int(r[0]): _Candidate(int(r[0]), -float(r[1])) for r in rows}

    @staticmethod
    def _neighbours(embedder: Embedder, query: str, notes: Sequence[NoteText]) -> list[int]:
        """The notes nearest the question in meaning, found by comparing it with every note: only while there are
        few enough notes to keep them all embedded (beyond that, meaning reranks the BM25 candidates)."""
        similarity = embedder.similarities(query, [n.text for n in notes])
        nearest = sorted(range(len(notes)), key=lambda i: -similarity[i])[:NEIGHBOURS]
        return [notes[i].id for i in nearest]

    @staticmethod
    def _candidates(conn: Connection, found: dict[int, _Candidate]) -> list[_Candidate]:
        """The candidates' notes, read in one query."""
        if not found:
            return []
        marks = ",".join("?" * len(found))
        for row in conn.exec_driver_sql(
                "SELECT id, text, title, source, kind, reliability, supersedes, superseded_by, dated_at FROM note "
                f"WHERE id IN ({marks})", tuple(found)):
            c = found[int(row[0])]
            c.text, c.title, c.source, c.kind, c.reliability = row[1], row[2], row[3], row[4], int(row[5])
            c.supersedes, c.superseded_by = row[6], row[7]
            c.dated = _parse_time(row[8])
        return [c for c in found.values() if c.source]

    @staticmethod
    def _weights(conn: Connection, items: Sequence[Concept], total: int) -> tuple[list[float], list[bool]]:
        """Inverse document frequency per concept (over its synonyms too): rare words decide relevance. A name no
        note contains gets a negative weight, as a flag."""
        every = sorted({s for c in items for s in c.matches})
        marks = ",".join("?" * len(every))
        docs: dict[str, int] = {str(term): int(count) for term, count in conn.exec_driver_sql(
            f"SELECT term, doc FROM note_vocab WHERE term IN ({marks})", tuple(every))}
        weights: list[float] = []
        common: list[bool] = []
        for c in items:
            df = min(total, sum(docs.get(s, 0) for s in c.matches))
            weight = _idf(df, total)
            if df == 0:  # a word no note has: a name decides (negative: nothing answers it); a turn of phrase
                weight = -weight if c.named else _idf(1, total) * UNKNOWN_WORD  # barely counts
            weights.append(weight)
            common.append(df > max(COMMON_MIN_NOTES, COMMON_SHARE * total))
        return weights, common

    def _rerank(self, items: Sequence[Concept], weights: list[float], candidates: list[_Candidate],
                similarity: list[float] | None, feedback: list[float] | None, *, recent: bool,
                updates: Callable[[list[Hit]], list[Hit]] | None = None) -> list[Hit]:
        whole = sum(weights) or 1.0
        best_bm25 = max(c.bm25 for c in candidates) or 1.0
        now = self.ledger.now()
        scored: list[Hit] = []
        terms: dict[int, set[str]] = {}
        best_coverage = best_cosine = 0.0
        for index, c in enumerate(candidates):
            sequence = passage_stems(f"{c.title}\n{c.text}")
            present = terms[c.id] = set(sequence)
            in_title = set(passage_stems(c.title))
            coverage = title = 0.0
            matched: set[str] = set()
            for concept, weight in zip(items, weights, strict=True):
                if concept.stem in present:
                    coverage += weight
                    matched.add(concept.stem)
                elif concept.matches & present:
                    coverage += weight * SYNONYM_CREDIT
                    matched.add(concept.stem)
                if concept.matches & in_title:
                    title += weight
            coverage /= whole
            cosine = similarity[index] if similarity is not None else 0.0
            best_coverage, best_cosine = max(best_coverage, coverage), max(best_cosine, cosine)
            # Ranked by the meaning of the question moved towards its best matches; declined by its own meaning.
            ranked_cosine = feedback[index] if feedback is not None else cosine
            relevance = MEANING * ranked_cosine + (
                _WEIGHTS["coverage"] * coverage + _WEIGHTS["bm25"] * c.bm25 / best_bm25
                + _WEIGHTS["title"] * title / whole + _WEIGHTS["proximity"] * _proximity(items, sequence))
            age_days = max(0.0, (now - c.dated).total_seconds() / 86_400)
            freshness = RECENT_QUESTION * math.exp(-age_days / 180) if recent else RECENCY * math.exp(-age_days / 365)
            score = relevance + 0.03 * (c.reliability - 1) / 2 + freshness
            if c.superseded_by is not None:
                score *= SUPERSEDED
            scored.append(Hit(c.id, c.text, c.title, c.source, c.kind, score, c.dated, coverage, c.supersedes,
                              c.superseded_by, frozenset(matched)))
        if similarity is None:
            answered = best_coverage >= MIN_COVERAGE
        else:
            answered = best_coverage >= MEANING_COVERAGE or best_cosine >= MEANING_CLOSE
        if not scored or not answered:
            return []  # no passage answers enough of the question: better no note than a wrong one
        if updates is not None:
            scored = updates(scored)
        scored.sort(key=lambda h: -h.score)
        floor = scored[0].score * KEEP_RATIO
        return _newest_first_on_the_same_subject([h for h in scored if h.score >= floor], terms)

    def _with_replacements(self, conn: Connection, hits: list[Hit]) -> list[Hit]:
        """A superseded note never comes before its replacement: the current note of its chain is placed just
        ahead of it (fetched when the question's words did not find it)."""
        ordered: dict[int, Hit] = {}
        for hit in hits:
            if hit.superseded_by is not None:
                head = self._current(conn, hit)
                if head is not None and head.id not in ordered:
                    ordered[head.id] = head
            ordered.setdefault(hit.id, hit)
        return list(ordered.values())

    def _current(self, conn: Connection, hit: Hit) -> Hit | None:
        """The note at the head of `hit`'s supersession chain."""
        note_id, seen = hit.superseded_by, {hit.id}
        row = None
        while note_id is not None and note_id not in seen:
            seen.add(note_id)
            row = conn.exec_driver_sql("SELECT id, text, title, source, kind, supersedes, superseded_by, dated_at "
                                       "FROM note WHERE id = ?", (note_id,)).first()
            if row is None:
                return None
            note_id = row[6]
        if row is None:
            return None
        return Hit(int(row[0]), row[1], row[2], row[3], row[4], hit.score + 1e-6, _parse_time(row[7]),
                   hit.coverage, row[5], row[6], hit.matched)


def _implicit_updates(hits: list[Hit], embedder: Embedder, texts: dict[int, str]) -> list[Hit]:
    """A note the owner wrote after a runbook passage, close to it in meaning and answering the same words of the
    question, updates it even when it was not recorded as replacing it: it is ranked just ahead of that passage."""
    owned = [h for h in hits if h.kind == "owner" and h.matched and h.superseded_by is None]
    if not owned:
        return hits
    vectors = embedder.vectors([texts[h.id] for h in hits])
    row = {h.id: i for i, h in enumerate(hits)}
    lifted: dict[int, float] = {}
    for note in owned:
        for older in hits:
            if (older.kind != "owner" and older.dated < note.dated and older.score > note.score
                    and note.matched & older.matched
                    and float(vectors[row[note.id]] @ vectors[row[older.id]]) >= UPDATE_CLOSE):
                lifted[note.id] = max(lifted.get(note.id, 0.0), older.score + 1e-6)
    return [replace(h, score=lifted[h.id]) if h.id in lifted else h for h in hits]


def _idf(df: int, total: int) -> float:
    return math.log(1 + (total - df + 0.5) / (df + 0.5))


@lru_cache(maxsize=50_000)
def passage_stems(text: str) -> tuple[str, ...]:
    """A passage's stems, kept for the passages searched most (a long-running process asks about the same notes)."""
    return tuple(stems(text))


def _proximity(items: Sequence[Concept], sequence: Sequence[str]) -> float:
    """Share of the question's neighbouring word pairs that stand within two words of each other in the passage."""
    if len(items) < 2:
        return 1.0 if items and items[0].matches & set(sequence) else 0.0
    where: dict[str, list[int]] = {}
    for index, word in enumerate(sequence):
        where.setdefault(word, []).append(index)
    positions = [{i for m in c.matches for i in where.get(m, ())} for c in items]
    near = 0
    for left, right in itertools.pairwise(positions):
        if left and right and any(p + d in right for p in left for d in (-2, -1, 1, 2)):
            near += 1
    return near / (len(items) - 1)


def _newest_first_on_the_same_subject(hits: list[Hit], terms: dict[int, set[str]]) -> list[Hit]:
    """Two passages that answer the same words of the question state the same fact at different times: the newer
    one goes first (an older runbook never outranks the note that updated it)."""
    result = list(hits)
    for i in range(len(result)):
        for j in range(i + 1, len(result)):
            older, newer = result[i], result[j]
            if (newer.matched == older.matched and newer.dated - older.dated > dt.timedelta(days=1)
                    and newer.coverage >= older.coverage - 0.05
                    and _overlap(terms[older.id], terms[newer.id]) >= SAME_SUBJECT):
                result[i], result[j] = replace(newer, score=max(newer.score, older.score)), older
    return result


def _overlap(a: set[str], b: set[str]) -> float:
    return len(a & b) / (len(a | b) or 1)


def _parse_time(value: object) -> dt.datetime:
    if isinstance(value, dt.datetime):
        return as_utc(value)
    return as_utc(dt.datetime.fromisoformat(str(value)))
