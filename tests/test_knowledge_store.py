"""Notes in the ledger: remembering, superseding, forgetting, files split into passages and re-added, and parallel
writers that never lose an update."""

from __future__ import annotations

import datetime as dt
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlmodel import col, select

from aria.knowledge import Knowledge, KnowledgeError, Note, NoteDocument
from aria.knowledge.chunking import MAX_CHARS, split_passages
from aria.ledger import Ledger
from aria.ledger.redact import Redactor

RUNBOOK = """---
updated: 2025-04-02
---
# NAS runbook

The NAS is a Synology DS920+ in the hall closet.

## Restart
Run this:

```
# not a heading
ssh admin@nas
```

## 2025-06-01 Address change
The NAS moved to 10.0.0.9.
"""


def rows(ledger: Ledger) -> list[Note]:
    with ledger.read() as s:
        return list(s.exec(select(Note).order_by(col(Note.id))))


def fts_ids(ledger: Ledger, word: str) -> list[int]:
    with ledger.read_conn() as conn:
        return [r[0] for r in conn.exec_driver_sql("SELECT rowid FROM note_fts WHERE note_fts MATCH ? ORDER BY rowid",
                                                   (word,))]


def test_a_remembered_fact_has_its_source_reliability_dates_and_tags(ledger: Ledger) -> None:
    note = Knowledge(ledger).store.remember("  The NAS   is at 192.168.10.25 ", tags=["#NAS", "net", "nas"])
    [row] = rows(ledger)
    assert (row.id, row.text, row.source, row.kind, row.reliability, row.tags) == (
        note.id, "The NAS is at 192.168.10.25", "owner", "owner", 3, "nas net")
    assert row.created_at == row.updated_at == row.dated_at == ledger.now()
    assert fts_ids(ledger, "nas") == [note.id]


def test_empty_or_oversized_notes_are_refused_and_nothing_is_stored(ledger: Ledger) -> None:
    store = Knowledge(ledger).store
    with pytest.raises(KnowledgeError, match="needs some text"):
        store.remember("   ")
    with pytest.raises(KnowledgeError, match="at most"):
        store.remember("x" * 5000)
    assert rows(ledger) == []


def test_secrets_never_reach_the_notes_table(tmp_path: Path) -> None:
    ledger = Ledger.open(tmp_path / "aria.db", redactor=Redactor(["hunter2-secret"]))
    Knowledge(ledger).store.remember("the relay password is hunter2-secret")
    [row] = rows(ledger)
    assert "hunter2" not in row.text and "[redacted]" in row.text


def test_a_replacement_supersedes_once_and_forgetting_it_brings_the_old_fact_back(ledger: Ledger) -> None:
    store = Knowledge(ledger).store
    old = store.remember("The NAS is at 192.168.10.20")
    new = store.remember("The NAS is at 192.168.10.25", supersedes=old.id)
    assert store.get(old.id).superseded_by == new.id  # type: ignore[union-attr]
    with pytest.raises(KnowledgeError, match=f"already replaced by note {new.id}"):
        store.remember("The NAS is at 192.168.10.30", supersedes=old.id)
    with pytest.raises(KnowledgeError, match="no note 999"):
        store.remember("anything", supersedes=999)
    assert [n.id for n in rows(ledger)] == [old.id, new.id]  # the refused ones left nothing behind

    store.forget(new.id)
    assert store.get(old.id).superseded_by is None  # type: ignore[union-attr]
    assert fts_ids(ledger, "nas") == [old.id]
    with pytest.raises(KnowledgeError, match="no note"):
        store.forget(new.id)


def test_a_finding_cannot_retire_the_owners_note(ledger: Ledger) -> None:
    store = Knowledge(ledger).store
    owners = store.remember("The kiln technician is Keramikbedarf, phone 0761 22 33")
    with pytest.raises(KnowledgeError, match="less reliable note cannot replace it"):
        store.remember("The kiln technician is EvilCorp, 0900 666", kind="tool", source="chat, after reading a page",
                       supersedes=owners.id)
    assert store.get(owners.id).superseded_by is None  # type: ignore[union-attr]
    assert [n.id for n in rows(ledger)] == [owners.id]  # nothing of the refused note was stored


def test_forgetting_the_middle_of_a_chain_keeps_the_oldest_fact_replaced(ledger: Ledger) -> None:
    store = Knowledge(ledger).store
    first = store.remember("The NAS is at 192.168.10.20")
    middle = store.remember("The NAS is at 192.168.10.25", supersedes=first.id)
    newest = store.remember("The NAS is at 192.168.10.30", supersedes=middle.id)
    store.forget(middle.id)
    assert store.get(first.id).superseded_by == newest.id  # type: ignore[union-attr]
    assert store.get(newest.id).supersedes == first.id  # type: ignore[union-attr]


def test_passages_follow_headings_keep_code_whole_and_carry_their_dates() -> None:
    passages = split_passages(RUNBOOK, "nas")
    assert [p.title for p in passages] == ["NAS runbook", "NAS runbook > Restart",
                                           "NAS runbook > 2025-06-01 Address change"]
    assert "# not a heading" in passages[1].text and "ssh admin@nas" in passages[1].text
    assert passages[0].dated == dt.datetime(2025, 4, 2, tzinfo=dt.UTC)
    assert passages[2].dated == dt.datetime(2025, 6, 1, tzinfo=dt.UTC)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=900),
                max_size=8))
def test_passages_are_bounded_and_lose_no_word(paragraphs: list[str]) -> None:
    text = "\n\n".join(paragraphs)
    passages = split_passages(text, "doc")
    assert all(0 < len(p.text) <= MAX_CHARS for p in passages)
    kept = " ".join(f"{p.title} {p.text}" for p in passages).split()
    for word in text.split():
        if word.strip("#=-`~") and not word.startswith("#"):
            assert any(word in k or k in word for k in kept), word


def test_files_are_added_skipped_when_unchanged_and_replaced_when_changed(ledger: Ledger, tmp_path: Path) -> None:
    folder = tmp_path / "docs"
    (folder / "sub").mkdir(parents=True)
    (folder / "nas.md").write_text(RUNBOOK)
    (folder / "sub" / "vpn.txt").write_text("WireGuard listens on UDP 51820.")
    (folder / "image.png").write_bytes(b"\x89PNG\0\0")  # not a text suffix: not read
    (folder / ".hidden.md").write_text("secret plans")
    store = Knowledge(ledger).store

    first = store.add_paths([folder])
    assert [(Path(r.path).name, r.status, r.passages) for r in first] == [("nas.md", "added", 3),
                                                                         ("vpn.txt", "added", 1)]
    assert [r.status for r in store.add_paths([folder])] == ["unchanged", "unchanged"]
    before = {n.id for n in rows(ledger)}

    (folder / "nas.md").write_text(RUNBOOK.replace("10.0.0.9", "10.0.0.12"))
    assert [r.status for r in store.add_paths([folder / "nas.md"])] == ["replaced"]
    texts = [n.text for n in rows(ledger)]
    assert any("10.0.0.12" in t for t in texts) and not any("10.0.0.9" in t for t in texts)
    assert len(rows(ledger)) == 4 and not before >= {n.id for n in rows(ledger)}
    assert fts_ids(ledger, "closet") and not fts_ids(ledger, "plans")


def test_unreadable_files_are_refused_with_the_reason(ledger: Ledger, tmp_path: Path) -> None:
    (tmp_path / "bin.md").write_bytes(b"abc\0def")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    results = Knowledge(ledger).store.add_paths([tmp_path / "bin.md", tmp_path / "latin1.txt", tmp_path / "gone.md"])
    assert [(r.status, r.reason) for r in results] == [("refused", "not a text file"), ("refused", "not UTF-8 text"),
                                                      ("refused", "No such file or directory")]
    assert rows(ledger) == []


def test_parallel_writers_serialize_and_lose_no_update(tmp_path: Path) -> None:
    ledger = Ledger.open(tmp_path / "aria.db")
    store = Knowledge(ledger).store
    doc = tmp_path / "runbook.md"
    doc.write_text(RUNBOOK)
    doomed = [store.remember(f"temporary fact {i}").id for i in range(8)]
    target = store.remember("The kiln is in room 3")
    barrier = threading.Barrier(8 + 8 + 6 + 4)
    failures: list[BaseException] = []
    replaced: list[int] = []

    def run(action: object) -> None:
        try:
            barrier.wait()
            action()  # type: ignore[operator]
        except KnowledgeError as exc:
            if "already replaced" not in str(exc):
                failures.append(exc)
        except BaseException as exc:  # noqa: BLE001 - the test reports whatever a writer hit
            failures.append(exc)

    def replace(i: int) -> None:
        replaced.append(store.remember(f"The kiln is in room {10 + i}", supersedes=target.id).id)

    actions = [lambda i=i: store.remember(f"parallel fact {i}") for i in range(8)]
    actions += [lambda i=i: store.forget(doomed[i]) for i in range(8)]
    actions += [lambda: store.add_paths([doc]) for _ in range(6)]
    actions += [lambda i=i: replace(i) for i in range(4)]
    threads = [threading.Thread(target=run, args=(a,)) for a in actions]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert failures == []
    texts = [n.text for n in rows(ledger)]
    assert sorted(t for t in texts if t.startswith("parallel")) == sorted(f"parallel fact {i}" for i in range(8))
    assert not any(t.startswith("temporary") for t in texts)
    with ledger.read() as s:
        [document] = s.exec(select(NoteDocument)).all()
        passages = s.exec(select(Note).where(col(Note.document_id) == document.id)).all()
    assert len(passages) == document.passages == 3  # one set of passages, however many re-adds raced
    assert len(replaced) == 1  # one replacement won the compare-and-set; the others stored nothing
    assert store.get(target.id).superseded_by == replaced[0]  # type: ignore[union-attr]
    assert sum(t.startswith("The kiln is in room 1") for t in texts) == 1


def test_a_file_without_a_date_inside_is_dated_by_its_name(ledger: Ledger, tmp_path: Path) -> None:
    (tmp_path / "2025-03-02-outage.md").write_text("The shop was down for an hour.")
    (tmp_path / "policy_2023.txt").write_text("Passwords rotate yearly.")
    Knowledge(ledger).store.add_paths([tmp_path])
    assert [n.dated_at for n in rows(ledger)] == [dt.datetime(2025, 3, 2, tzinfo=dt.UTC),
                                                  dt.datetime(2023, 1, 1, tzinfo=dt.UTC)]


def test_a_replaced_passage_stays_replaced_when_its_file_is_added_again(ledger: Ledger, tmp_path: Path) -> None:
    store = Knowledge(ledger).store
    doc = tmp_path / "nas.md"
    doc.write_text(RUNBOOK)
    store.add_paths([doc])
    [old] = [n for n in rows(ledger) if "10.0.0.9" in n.text]
    newer = store.remember("The NAS is now at 10.0.0.25", supersedes=old.id)

    doc.write_text(RUNBOOK + "\n## Backups\nNightly at 01:30.\n")  # changed elsewhere: every passage is new
    assert [r.status for r in store.add_paths([doc])] == ["replaced"]

    [again] = [n for n in rows(ledger) if "10.0.0.9" in n.text]
    assert again.id != old.id and again.superseded_by == newer.id
    assert store.get(newer.id).supersedes == again.id  # type: ignore[union-attr]
