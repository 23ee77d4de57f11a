"""Knowledge retrieval against plain FTS5 BM25, on the labelled set in tests/data/knowledge, and search latency at
1,000 / 10,000 / 100,000 notes.

The corpus (15 runbooks and logs, ~226 passages, plus 8 owner notes, three of which replace a runbook fact) is added
the way `aria knowledge add` and `/remember` add it. 151 questions are labelled with the passages that answer them
(by file and a snippet the passage contains), and for superseded facts with the stale passage too. Odd-numbered
questions were used to pick the thresholds and the weight of meaning (`tune`); even-numbered ones were not used to
pick any value (`held_out`): figures are given for both. The real check runs on documents and questions that are not
in this repository, so the held-out half is the better guide.

Aria is measured three times: as shipped (BM25 candidates plus the notes nearest in meaning, from the static embedding
model in the `wordllama` wheel blended with the all-MiniLM-L6-v2 sentence encoder), with the static model alone
(`Searcher(contextual=False)`, as beyond 2,000 notes) and with words only (`Searcher(meaning=False)`), to show what
each model adds.

Baseline, measured in the same run on the same passages: plain FTS5 BM25 (unicode61, no stemming, no synonyms), the
question's words OR-ed, best 10 by bm25(), nothing declined.

Figures: recall@5 (an answering passage in the top 5), failures (answerable questions without one), nDCG@10,
stale-fact rate (superseded questions where the stale passage ranks above every current one in the top 5),
unanswerable questions declined (nothing returned), tokens of notes sent per answered question (the context Aria
builds within ARIA_KNOWLEDGE_TOKENS) against sending every note, and p50/p95 search latency on synthetic notes.

    python -m bench.knowledge [--sizes 1000,10000,100000]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import random
import sqlite3
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from aria.clock import ManualClock
from aria.knowledge import Knowledge
from aria.knowledge.analysis import words
from aria.knowledge.context import fit, notes_block
from aria.knowledge.meaning import Embedder, blended_embedder, static_embedder
from aria.knowledge.search import Hit, Searcher, passage_stems
from aria.knowledge.vectors import embed_pending
from aria.ledger import Ledger
from aria.llm.tokens import estimate_tokens
from bench.common import grid, ms, percentile, table

DATA = Path(__file__).resolve().parents[1] / "tests" / "data" / "knowledge"
NOW = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)
CONTEXT_TOKENS = 800  # ARIA_KNOWLEDGE_TOKENS' default
TARGETS = {"recall": 0.95, "stale": 0.02, "declined": 0.90, "p95_10k": 0.020, "p95_100k": 0.080}
Ranked = list[int]  # note ids, best first


@dataclass(frozen=True)
class Question:
    """One labelled question."""

    id: int
    category: str
    text: str
    relevant: frozenset[int]
    stale: frozenset[int]
    split: str


def load_corpus(ledger: Ledger) -> Knowledge:
    """The runbooks added as `aria knowledge add` adds them, and the owner's notes as `/remember` stores them."""
    knowledge = Knowledge(ledger)
    for result in knowledge.store.add_paths([DATA / "corpus"]):
        assert result.status == "added", result
    for line in (DATA / "owner_notes.jsonl").read_text(encoding="utf-8").splitlines():
        item = json.loads(line)
        replaces = None
        if "supersedes" in item:
            (replaces,) = passages_with(ledger, item["supersedes"]["file"], item["supersedes"]["contains"])
        knowledge.store.remember(item["text"], tags=item.get("tags", ()), supersedes=replaces,
                                 dated=dt.datetime.fromisoformat(item["dated"]).replace(tzinfo=dt.UTC))
    return knowledge


def _flat(text: str) -> str:
    return " ".join(text.split())


def passages_with(ledger: Ledger, file: str, snippet: str) -> list[int]:
    """Ids of the notes of `file` ("owner" for owner notes) whose heading or text holds `snippet` (spacing
    ignored)."""
    with ledger.read_conn() as conn:
        rows = conn.exec_driver_sql("SELECT id, source, kind, title || ' ' || text FROM note").all()
    wanted = _flat(snippet)
    return [int(r[0]) for r in rows
            if (r[2] == "owner" if file == "owner" else Path(r[1]).name == file) and wanted in _flat(r[3])]


def load_questions(ledger: Ledger) -> list[Question]:
    """The labelled questions, their labels resolved to note ids (a label that matches nothing is a broken set)."""
    found: list[Question] = []
    for line in (DATA / "questions.jsonl").read_text(encoding="utf-8").splitlines():
        item = json.loads(line)
        ids: dict[str, set[int]] = {"relevant": set(), "stale": set()}
        for key in ids:
            for label in item[key]:
                matches = passages_with(ledger, label["file"], label["contains"])
                assert matches, f"question {item['id']}: no passage of {label['file']} holds {label['contains']!r}"
                ids[key] |= set(matches)
        found.append(Question(item["id"], item["category"], item["question"], frozenset(ids["relevant"]),
                              frozenset(ids["stale"]), item["split"]))
    return found


def plain_bm25(ledger: Ledger) -> Callable[[str, int], Ranked]:
    """The baseline: the same passages in a plain FTS5 index (unicode61), the question's words OR-ed, by bm25()."""
    db = sqlite3.connect(":memory:")
    db.execute("CREATE VIRTUAL TABLE plain USING fts5(title, text)")
    with ledger.read_conn() as conn:
        rows = conn.exec_driver_sql("SELECT id, title, text FROM note").all()
    db.executemany("INSERT INTO plain (rowid, title, text) VALUES (?, ?, ?)", [tuple(r) for r in rows])

    def search(query: str, k: int) -> Ranked:
        terms = " OR ".join(f'"{w}"' for w in dict.fromkeys(words(query)))
        if not terms:
            return []
        return [int(r[0]) for r in db.execute("SELECT rowid FROM plain WHERE plain MATCH ? ORDER BY bm25(plain) "
                                               "LIMIT ?", (terms, k))]

    return search


@dataclass
class Scores:
    """Retrieval figures of one system over a set of questions."""

    recall: float
    failures: int
    answerable: int
    ndcg: float
    stale: float
    stale_n: int
    declined: float
    unanswerable: int


def score(questions: Sequence[Question], ranked: dict[int, Ranked]) -> Scores:
    """recall@5, failures, nDCG@10, stale-fact rate and declined share for one system's rankings."""
    answerable = [q for q in questions if q.relevant]
    hits = [q for q in answerable if set(ranked[q.id][:5]) & q.relevant]
    ndcg = [_ndcg(ranked[q.id][:10], q.relevant) for q in answerable]
    superseded = [q for q in questions if q.stale]
    stale = [q for q in superseded if _stale_first(ranked[q.id][:5], q)]
    unanswerable = [q for q in questions if not q.relevant]
    declined = [q for q in unanswerable if not ranked[q.id]]
    return Scores(len(hits) / max(1, len(answerable)), len(answerable) - len(hits), len(answerable),
                  sum(ndcg) / max(1, len(ndcg)), len(stale) / max(1, len(superseded)), len(superseded),
                  len(declined) / max(1, len(unanswerable)), len(unanswerable))


def _ndcg(ranked: Ranked, relevant: frozenset[int]) -> float:
    gain = sum(1 / math.log2(i + 2) for i, note in enumerate(ranked) if note in relevant)
    ideal = sum(1 / math.log2(i + 2) for i in range(min(len(relevant), 10)))
    return gain / ideal if ideal else 0.0


def _stale_first(top: Ranked, q: Question) -> bool:
    """The stale passage is shown and no current one comes before it."""
    for note in top:
        if note in q.relevant:
            return False
        if note in q.stale:
            return True
    return False


def context_tokens(knowledge: Knowledge, questions: Sequence[Question]) -> tuple[float, int]:
    """Tokens of notes sent per answered question (Aria's budgeted context, for the questions it answers), and the
    dump-everything baseline."""
    with knowledge.ledger.read_conn() as conn:
        everything = [Hit(int(r[0]), r[1], r[2], r[3], r[4], 0.0, NOW) for r in
                      conn.exec_driver_sql("SELECT id, text, title, source, kind FROM note").all()]
    dump = estimate_tokens(notes_block(everything))
    found = [knowledge.search(q.text, 10) for q in questions if q.relevant]
    sent = [estimate_tokens(notes_block(fit(hits, CONTEXT_TOKENS))) for hits in found if hits]
    return sum(sent) / max(1, len(sent)), dump


def quality(questions: list[Question], systems: dict[str, dict[int, Ranked]]) -> str:
    """The retrieval table: each split, each system (Aria's last, the baseline) side by side."""
    rows = []
    for name, chosen in (("all", questions), ("tune", [q for q in questions if q.split == "tune"]),
                         ("held out", [q for q in questions if q.split == "held_out"])):
        s = [score(chosen, ranked) for ranked in systems.values()]
        a, b = s[0], s[-1]
        rows += [
            [f"recall@5 ({name}, {a.answerable} answerable)", *(f"{x.recall:.3f}" for x in s), "≥ 0.95"],
            [f"failures ({name})", *(str(x.failures) for x in s), f"≤ {b.failures // 2} (half of BM25's)"],
            [f"nDCG@10 ({name})", *(f"{x.ndcg:.3f}" for x in s), ""],
            [f"stale-fact rate ({name}, {a.stale_n} superseded)", *(f"{x.stale:.1%}" for x in s), "≤ 2%"],
            [f"unanswerable declined ({name}, {a.unanswerable})", *(f"{x.declined:.1%}" for x in s), "≥ 90%"],
        ]
    return grid(("figure", *systems, "target"), rows)


def by_category(questions: list[Question], systems: dict[str, dict[int, Ranked]]) -> str:
    """recall@5 per question category (declined share for unanswerable ones)."""
    rows = []
    for category in dict.fromkeys(q.category for q in questions):
        chosen = [q for q in questions if q.category == category]
        s = [score(chosen, ranked) for ranked in systems.values()]
        if category == "unanswerable":
            rows.append([category, str(len(chosen)), *(f"declined {x.declined:.1%}" for x in s)])
        else:
            rows.append([category, str(len(chosen)), *(f"{x.recall:.3f}" for x in s)])
    return grid(("category", "questions", *(f"{name} recall@5" for name in systems)), rows)


def synthetic(ledger: Ledger, size: int, vocabulary: dict[str, int], seed: int = 7) -> None:
    """`size` ops-like notes written straight into the notes table (the index triggers fill FTS5 as usual): words
    drawn with the labelled corpus's own frequencies, so common words stay common and names stay rare."""
    rng = random.Random(seed)
    population, frequency = list(vocabulary), list(vocabulary.values())
    hosts = [f"{rng.choice(['web', 'db', 'cache', 'queue', 'nas', 'k3s', 'vpn'])}{i}" for i in range(500)]
    stamp = NOW.strftime("%Y-%m-%d %H:%M:%S.000000")
    rows = []
    for i in range(size):
        text = " ".join(rng.choices(population, frequency, k=rng.randint(25, 70)))
        title = f"{rng.choice(hosts)} > {rng.choice(population)}"
        rows.append((text, title, "", f"/srv/notes/{i // 20}.md", "runbook", 2, i % 20, stamp, stamp, stamp))
    with ledger.write_conn() as conn:
        conn.exec_driver_sql("INSERT INTO note (text, title, tags, source, kind, reliability, position, dated_at, "
                             "created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)


def latency(sizes: Sequence[int], questions: list[Question], vocabulary: dict[str, int], folder: Path) -> str:
    """p50/p95 of a search at each size: Aria's (candidates + rerank) and a plain bm25() query on the same index."""
    rows = []
    for size in sizes:
        ledger = Ledger.open(folder / f"latency-{size}.db", clock=ManualClock(NOW))
        started = time.monotonic()
        synthetic(ledger, size - 240, vocabulary)
        load_corpus(ledger)
        embed_pending(ledger)  # the synthetic notes too, as `aria knowledge add` ends (none beyond 2,000 notes)
        built = time.monotonic() - started
        searchers = {"meaning": Searcher(ledger), "words": Searcher(ledger, meaning=False)}
        passage_stems.cache_clear()  # cold: every passage read for the first time, as `aria knowledge search` does
        for embedder in (static_embedder(), blended_embedder()):
            if embedder is not None:
                embedder.forget()  # vectors stored in the ledger are read again, as a new process does
        db = sqlite3.connect(folder / f"latency-{size}.db")
        ours: dict[str, list[float]] = {name: [] for name in searchers}
        base: list[float] = []
        for q in questions:
            for name, searcher in searchers.items():
                t = time.perf_counter()
                searcher.search(q.text, 5)
                ours[name].append(time.perf_counter() - t)
            terms = " OR ".join(f'"{w}"' for w in dict.fromkeys(words(q.text)))
            t = time.perf_counter()
            db.execute("SELECT rowid FROM note_fts WHERE note_fts MATCH ? ORDER BY bm25(note_fts) LIMIT 10",
                       (terms,)).fetchall()
            base.append(time.perf_counter() - t)
        db.close()
        target = {10_000: " (target ≤ 20 ms)", 100_000: " (target ≤ 80 ms)"}.get(size, "")
        rows.append([f"{size:,}",
                     *(f"{ms(percentile(ours[n], 0.5))} / {ms(percentile(ours[n], 0.95))}{target}" for n in searchers),
                     f"{ms(percentile(base, 0.5))} / {ms(percentile(base, 0.95))}", f"{built:.1f} s"])
        ledger.engine.dispose()
    return ("Up to 2,000 notes Aria compares the question with every note, blending the sentence encoder (which "
            "embeds the question: about 6 ms) with the static model, from vectors kept in the ledger (embedded while "
            "the notes were added: \"built in\"); beyond that, the static model reranks the BM25 candidates.\n\n"
            + grid(("notes", "Aria p50 / p95", "Aria, words only, p50 / p95", "plain BM25 p50 / p95", "built in"),
                   rows))


def main(argv: list[str] | None = None) -> str:
    """Run the benchmark and return its report (markdown)."""
    parser = argparse.ArgumentParser(prog="python -m bench.knowledge", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,10000,100000", help="note counts for the latency table")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    with tempfile.TemporaryDirectory(prefix="aria-bench-knowledge-") as tmp:
        folder = Path(tmp)
        ledger = Ledger.open(folder / "labelled.db", clock=ManualClock(NOW))
        started = time.perf_counter()
        embedder = blended_embedder()  # loaded once, as on a process's first search
        loaded = time.perf_counter() - started
        started = time.perf_counter()
        knowledge = load_corpus(ledger)  # each passage embedded as it is added
        added = time.perf_counter() - started
        questions = load_questions(ledger)
        baseline = plain_bm25(ledger)
        systems = {name: {q.id: [h.id for h in searcher.search(q.text, 10)] for q in questions}
                   for name, searcher in (("Aria", knowledge.searcher),
                                          ("Aria, static model only", Searcher(ledger, contextual=False)),
                                          ("Aria, words only", Searcher(ledger, meaning=False)))}
        systems["plain BM25"] = {q.id: baseline(q.text, 10) for q in questions}
        sent, dump = context_tokens(knowledge, questions)
        with ledger.read_conn() as conn:
            notes = int(conn.exec_driver_sql("SELECT count(*) FROM note").scalar_one())
            vocabulary = Counter(w for (t,) in conn.exec_driver_sql("SELECT text FROM note") for w in words(t))
        ledger.engine.dispose()
        report = [
            f"{notes} notes ({notes - 8} passages of 15 files, 8 owner notes), {len(questions)} questions.",
            "",
            f"Aria: BM25 candidates and the notes nearest in meaning, reranked; meaning from {_models(embedder)} "
            f"(loaded in {loaded:.2f} s; the corpus added and embedded in {added:.1f} s). Static model only: the "
            "same without the sentence encoder (as beyond 2,000 notes); words only: with no embedding model.",
            "",
            quality(questions, systems),
            "",
            by_category(questions, systems),
            "",
            table([("notes sent per answered question (ARIA_KNOWLEDGE_TOKENS=800)", f"{sent:.0f} tokens"),
                   ("dump-everything baseline", f"{dump:,} tokens"),
                   ("share", f"{sent / dump:.1%} of the dump")]),
            "",
            latency(sizes, questions, vocabulary, folder),
        ]
    return "\n".join(report)


def _models(embedder: Embedder | None) -> str:
    if embedder is None:
        return "NOTHING (no model loaded: figures are words only)"
    if embedder.kept:
        return "wordllama l2_supercat (256 dimensions) blended with all-MiniLM-L6-v2 (384 dimensions)"
    return "wordllama l2_supercat (256 dimensions) ALONE (the sentence encoder did not load)"


if __name__ == "__main__":
    print(main())
