"""Named schema migrations, recorded in the `migration` table.

Each migration is frozen once released: a new schema change is a new function appended to MIGRATIONS, so an
older database upgrades in place, in order, without losing rows. DDL lives here (and only here) because a
migration must describe the schema as it was at that point, not as the models say today.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

from sqlalchemy import Connection, text

Migration = Callable[[Connection], None]


def _run(conn: Connection, script: str) -> None:
    for statement in script.split(";"):
        if statement.strip():
            conn.execute(text(statement))


def m001_initial(conn: Connection) -> None:
    """The ledger of DESIGN.md: runs, steps, spend, failures, approvals, outbox, events."""
    _run(conn, """
    CREATE TABLE run (
        id INTEGER NOT NULL PRIMARY KEY,
        "trigger" VARCHAR NOT NULL,
        channel VARCHAR NOT NULL,
        chat_id INTEGER,
        user_id INTEGER,
        request VARCHAR NOT NULL,
        route VARCHAR,
        model VARCHAR,
        status VARCHAR NOT NULL,
        stop_reason VARCHAR,
        cap_tokens INTEGER NOT NULL,
        cap_micros INTEGER NOT NULL,
        cap_steps INTEGER NOT NULL,
        cap_seconds FLOAT NOT NULL,
        prompt_tokens INTEGER NOT NULL,
        completion_tokens INTEGER NOT NULL,
        cost_micros INTEGER NOT NULL,
        steps INTEGER NOT NULL,
        started_at DATETIME NOT NULL,
        ended_at DATETIME,
        final_text VARCHAR
    );
    CREATE INDEX ix_run_status ON run (status);
    CREATE INDEX ix_run_started_at ON run (started_at);

    CREATE TABLE step (
        id INTEGER NOT NULL PRIMARY KEY,
        run_id INTEGER NOT NULL REFERENCES run (id),
        seq INTEGER NOT NULL,
        kind VARCHAR NOT NULL,
        name VARCHAR NOT NULL,
        skill VARCHAR,
        status VARCHAR NOT NULL,
        attempt INTEGER NOT NULL,
        started_at DATETIME NOT NULL,
        latency_ms INTEGER NOT NULL,
        error_type VARCHAR,
        args VARCHAR,
        result VARCHAR
    );
    CREATE INDEX ix_step_run_id ON step (run_id);
    CREATE INDEX ix_step_started_at ON step (started_at);

    CREATE TABLE spend (
        id INTEGER NOT NULL PRIMARY KEY,
        run_id INTEGER REFERENCES run (id),
        step_id INTEGER,
        provider VARCHAR NOT NULL,
        model VARCHAR NOT NULL,
        status VARCHAR NOT NULL,
        prompt_tokens INTEGER NOT NULL,
        completion_tokens INTEGER NOT NULL,
        cached_tokens INTEGER NOT NULL,
        reasoning_tokens INTEGER NOT NULL,
        reserved_tokens INTEGER NOT NULL,
        reserved_micros INTEGER NOT NULL,
        cost_micros INTEGER NOT NULL,
        price_known BOOLEAN NOT NULL,
        price_source VARCHAR NOT NULL,
        usage_json VARCHAR,
        day VARCHAR NOT NULL,
        created_at DATETIME NOT NULL,
        settled_at DATETIME
    );
    CREATE INDEX ix_spend_run_id ON spend (run_id);
    CREATE INDEX ix_spend_day ON spend (day);
    CREATE INDEX ix_spend_created_at ON spend (created_at);

    CREATE TABLE failure (
        id INTEGER NOT NULL PRIMARY KEY,
        run_id INTEGER,
        step_id INTEGER,
        component VARCHAR NOT NULL,
        error_type VARCHAR NOT NULL,
        message VARCHAR NOT NULL,
        handling VARCHAR NOT NULL,
        created_at DATETIME NOT NULL
    );
    CREATE INDEX ix_failure_created_at ON failure (created_at);
    CREATE INDEX ix_failure_run_id ON failure (run_id);

    CREATE TABLE approval (
        id INTEGER NOT NULL PRIMARY KEY,
        run_id INTEGER,
        tool VARCHAR NOT NULL,
        args_json VARCHAR NOT NULL,
        args_hash VARCHAR NOT NULL,
        risk VARCHAR NOT NULL,
        summary VARCHAR NOT NULL,
        status VARCHAR NOT NULL,
        chat_id INTEGER,
        message_id INTEGER,
        resume_state VARCHAR,
        created_at DATETIME NOT NULL,
        expires_at DATETIME NOT NULL,
        decided_by INTEGER,
        decided_at DATETIME,
        executed_at DATETIME,
        result VARCHAR
    );
    CREATE INDEX ix_approval_status ON approval (status);
    CREATE INDEX ix_approval_run_id ON approval (run_id);
    CREATE INDEX ix_approval_expires_at ON approval (expires_at);

    CREATE TABLE outbox (
        id INTEGER NOT NULL PRIMARY KEY,
        chat_id INTEGER NOT NULL,
        kind VARCHAR NOT NULL,
        text VARCHAR NOT NULL,
        payload BLOB,
        reply_markup VARCHAR,
        dedupe_key VARCHAR UNIQUE,
        created_at DATETIME NOT NULL,
        attempts INTEGER NOT NULL,
        next_attempt_at DATETIME,
        last_error VARCHAR,
        delivered_at DATETIME
    );
    CREATE INDEX ix_outbox_delivered_at ON outbox (delivered_at);
    CREATE INDEX ix_outbox_created_at ON outbox (created_at);

    CREATE TABLE event (
        id INTEGER NOT NULL PRIMARY KEY,
        source VARCHAR NOT NULL,
        delivery_id VARCHAR,
        verified BOOLEAN NOT NULL,
        status VARCHAR NOT NULL,
        reason VARCHAR,
        user_id INTEGER,
        body_sha256 VARCHAR,
        run_id INTEGER,
        received_at DATETIME NOT NULL
    );
    CREATE INDEX ix_event_received_at ON event (received_at)
    """)


def m002_breakers_and_flags(conn: Connection) -> None:
    """Circuit-breaker state and durable flags survive restarts."""
    _run(conn, """
    CREATE TABLE breaker (
        "key" VARCHAR NOT NULL PRIMARY KEY,
        state VARCHAR NOT NULL,
        failures INTEGER NOT NULL,
        open_until DATETIME,
        last_error VARCHAR,
        updated_at DATETIME NOT NULL
    );
    CREATE TABLE keyvalue (
        "key" VARCHAR NOT NULL PRIMARY KEY,
        value VARCHAR NOT NULL,
        updated_at DATETIME NOT NULL
    );
    -- A redelivered event or update is recognised by (source, delivery id).
    CREATE UNIQUE INDEX ux_event_source_delivery ON event (source, delivery_id) WHERE delivery_id IS NOT NULL
    """)


def m003_reminders(conn: Connection) -> None:
    """Persisted reminders, plus a composite index the digest's per-day spend queries use."""
    _run(conn, """
    CREATE TABLE reminder (
        id INTEGER NOT NULL PRIMARY KEY,
        chat_id INTEGER NOT NULL,
        text VARCHAR NOT NULL,
        due_at DATETIME NOT NULL,
        created_at DATETIME NOT NULL,
        run_id INTEGER,
        fired_at DATETIME
    );
    CREATE INDEX ix_reminder_due_at ON reminder (due_at);
    CREATE INDEX ix_spend_day_model ON spend (day, model, cost_micros)
    """)


def m004_delivery_and_events(conn: Connection) -> None:
    """Outbox messages know their purpose, markup mode and delivered message; events keep their payload and time."""
    _run(conn, """
    ALTER TABLE outbox ADD COLUMN purpose VARCHAR NOT NULL DEFAULT 'message';
    ALTER TABLE outbox ADD COLUMN parse_mode VARCHAR;
    ALTER TABLE outbox ADD COLUMN run_id INTEGER;
    ALTER TABLE outbox ADD COLUMN message_id INTEGER;
    ALTER TABLE event ADD COLUMN payload VARCHAR;
    ALTER TABLE event ADD COLUMN event_at DATETIME;
    ALTER TABLE event ADD COLUMN processed_at DATETIME;
    ALTER TABLE approval ADD COLUMN skill VARCHAR;
    CREATE INDEX ix_outbox_pending ON outbox (delivered_at, next_attempt_at);
    CREATE INDEX ix_failure_component ON failure (created_at, component)
    """)


def m005_hot_path_indexes(conn: Connection) -> None:
    """Indexes for the two reads every turn makes: a chat's latest runs (its history), read without touching any
    other chat's, and the day's counted spend, summed from the index alone. The single-column day index is
    dropped: both composite indexes on (day, ...) serve what it did, and every spend write maintained it."""
    _run(conn, """
    CREATE INDEX ix_run_chat ON run (chat_id, id);
    CREATE INDEX ix_spend_day_counted ON spend (day, status, reserved_micros, cost_micros);
    DROP INDEX ix_spend_day
    """)


def m006_durable_runs(conn: Connection) -> None:
    """Runs know the process working on them and their last checkpoint, so recovery can resume or report them;
    outbox rows carry every owner-facing message (answers and approval edits too) with an explicit status, the
    channel that delivers them and the approval whose buttons they show."""
    _run(conn, """
    ALTER TABLE run ADD COLUMN worker VARCHAR;
    ALTER TABLE run ADD COLUMN checkpoint VARCHAR;
    ALTER TABLE outbox ADD COLUMN status VARCHAR NOT NULL DEFAULT 'pending';
    ALTER TABLE outbox ADD COLUMN channel VARCHAR NOT NULL DEFAULT 'telegram';
    ALTER TABLE outbox ADD COLUMN approval_id INTEGER;
    ALTER TABLE outbox ADD COLUMN edit_message_id INTEGER;
    UPDATE outbox SET status = CASE WHEN delivered_at IS NOT NULL THEN 'delivered'
                                    WHEN next_attempt_at IS NULL AND attempts > 0 THEN 'refused'
                                    ELSE 'pending' END;
    DROP INDEX ix_outbox_pending;
    CREATE INDEX ix_outbox_status ON outbox (status, channel, chat_id, id);
    CREATE INDEX ix_outbox_run ON outbox (run_id)
    """)


def m007_event_replay_key(conn: Connection) -> None:
    """Accepted events keep the hash of what their sender authenticated (signature material or body), so a replay is
    recognised by what an attacker cannot change, not by an unsigned delivery id."""
    _run(conn, """
    ALTER TABLE event ADD COLUMN replay_key VARCHAR;
    -- Until now a body without a timestamp was recognised by its hash: keep recognising the ones already accepted.
    UPDATE event SET replay_key = body_sha256 WHERE status = 'accepted';
    CREATE INDEX ix_event_replay ON event (source, replay_key, received_at)
    """)


def m008_run_answer(conn: Connection) -> None:
    """Runs keep the model's own answer apart from the text the owner was sent, so history never feeds Aria's footers,
    notes and policy lines back to the model. Earlier runs keep recalling what they sent (nothing else is known)."""
    _run(conn, """
    ALTER TABLE run ADD COLUMN answer VARCHAR;
    UPDATE run SET answer = final_text
    """)


def m009_owner_control(conn: Connection) -> None:
    """Changes the owner makes from the chat (budgets, models) are audited, one row per proposal with its outcome;
    outbox rows can carry a document (an export) under its file name."""
    _run(conn, """
    CREATE TABLE settingchange (
        id INTEGER NOT NULL PRIMARY KEY,
        "key" VARCHAR NOT NULL,
        old_value VARCHAR,
        new_value VARCHAR NOT NULL,
        status VARCHAR NOT NULL,
        user_id INTEGER,
        chat_id INTEGER,
        run_id INTEGER,
        created_at DATETIME NOT NULL,
        decided_at DATETIME
    );
    CREATE INDEX ix_settingchange_created_at ON settingchange (created_at);
    ALTER TABLE outbox ADD COLUMN file_name VARCHAR
    """)


def m010_mcp(conn: Connection) -> None:
    """MCP tool definitions pinned when first seen: a changed description or schema waits for the owner."""
    _run(conn, """
    CREATE TABLE mcp_pin (
        id INTEGER NOT NULL PRIMARY KEY,
        server VARCHAR NOT NULL,
        tool VARCHAR NOT NULL,
        digest VARCHAR NOT NULL,
        definition VARCHAR NOT NULL,
        status VARCHAR NOT NULL,
        pending_digest VARCHAR,
        pending_definition VARCHAR,
        first_seen DATETIME NOT NULL,
        updated_at DATETIME NOT NULL
    );
    CREATE UNIQUE INDEX ix_mcp_pin_server_tool ON mcp_pin (server, tool)
    """)


def m011_knowledge(conn: Connection) -> None:
    """Knowledge: notes (the owner's facts, passages of runbooks and documents, web and tool findings) with their
    source, reliability, dates and supersession; the files they came from; an FTS5 index (Porter stemming) kept in
    step by triggers, and its vocabulary for term statistics. Trigger bodies hold semicolons, so each statement is
    run on its own."""
    for statement in (
        """CREATE TABLE note_document (
            id INTEGER NOT NULL PRIMARY KEY,
            path VARCHAR NOT NULL UNIQUE,
            sha256 VARCHAR NOT NULL,
            kind VARCHAR NOT NULL,
            passages INTEGER NOT NULL,
            added_at DATETIME NOT NULL,
            updated_at DATETIME NOT NULL
        )""",
        """CREATE TABLE note (
            id INTEGER NOT NULL PRIMARY KEY,
            text VARCHAR NOT NULL,
            title VARCHAR NOT NULL,
            tags VARCHAR NOT NULL,
            source VARCHAR NOT NULL,
            kind VARCHAR NOT NULL,
            reliability INTEGER NOT NULL,
            document_id INTEGER REFERENCES note_document (id),
            position INTEGER NOT NULL,
            supersedes INTEGER,
            superseded_by INTEGER,
            dated_at DATETIME NOT NULL,
            created_at DATETIME NOT NULL,
            updated_at DATETIME NOT NULL
        )""",
        "CREATE INDEX ix_note_document ON note (document_id, position)",
        "CREATE INDEX ix_note_superseded_by ON note (superseded_by)",
        "CREATE VIRTUAL TABLE note_fts USING fts5(title, text, tags, content='note', content_rowid='id', "
        "tokenize='porter unicode61 remove_diacritics 2')",
        "CREATE VIRTUAL TABLE note_vocab USING fts5vocab(note_fts, 'row')",
        """CREATE TRIGGER note_ai AFTER INSERT ON note BEGIN
            INSERT INTO note_fts (rowid, title, text, tags) VALUES (new.id, new.title, new.text, new.tags);
        END""",
        """CREATE TRIGGER note_ad AFTER DELETE ON note BEGIN
            INSERT INTO note_fts (note_fts, rowid, title, text, tags) VALUES ('delete', old.id, old.title, old.text,
                                                                              old.tags);
        END""",
        """CREATE TRIGGER note_au AFTER UPDATE OF title, text, tags ON note BEGIN
            INSERT INTO note_fts (note_fts, rowid, title, text, tags) VALUES ('delete', old.id, old.title, old.text,
                                                                              old.tags);
            INSERT INTO note_fts (rowid, title, text, tags) VALUES (new.id, new.title, new.text, new.tags);
        END""",
    ):
        conn.execute(text(statement))


def m012_evals(conn: Connection) -> None:
    """`aria eval` keeps each eval run and the verdict of each of its scenarios."""
    _run(conn, """
    CREATE TABLE evalrun (
        id INTEGER NOT NULL PRIMARY KEY,
        started_at DATETIME NOT NULL,
        ended_at DATETIME,
        mode VARCHAR NOT NULL,
        paths VARCHAR NOT NULL,
        scenarios INTEGER NOT NULL,
        passed INTEGER NOT NULL,
        failed INTEGER NOT NULL,
        cost_micros INTEGER NOT NULL
    );
    CREATE INDEX ix_evalrun_started_at ON evalrun (started_at);
    CREATE TABLE evalresult (
        id INTEGER NOT NULL PRIMARY KEY,
        eval_run_id INTEGER NOT NULL REFERENCES evalrun (id),
        name VARCHAR NOT NULL,
        source VARCHAR NOT NULL,
        passed BOOLEAN NOT NULL,
        failures VARCHAR NOT NULL,
        cost_micros INTEGER NOT NULL,
        steps INTEGER NOT NULL,
        model_calls INTEGER NOT NULL,
        seconds FLOAT NOT NULL
    );
    CREATE INDEX ix_evalresult_eval_run_id ON evalresult (eval_run_id)
    """)


def m013_shadow_rollout(conn: Connection) -> None:
    """Shadow proposals with the owner's 👍/👎 and note, and the rollout steps of each skill (suggested promotions,
    promotions, demotions), so agreement and the promotion gate are computed from recorded judgements."""
    _run(conn, """
    CREATE TABLE proposal (
        id INTEGER NOT NULL PRIMARY KEY,
        run_id INTEGER,
        skill VARCHAR NOT NULL,
        tool VARCHAR NOT NULL,
        risk VARCHAR NOT NULL,
        args_json VARCHAR NOT NULL,
        summary VARCHAR NOT NULL,
        sources VARCHAR,
        chat_id INTEGER,
        outbox_id INTEGER,
        verdict VARCHAR,
        note VARCHAR,
        judged_by INTEGER,
        judged_at DATETIME,
        created_at DATETIME NOT NULL
    );
    CREATE INDEX ix_proposal_run_id ON proposal (run_id);
    CREATE INDEX ix_proposal_skill ON proposal (skill, created_at);
    CREATE INDEX ix_proposal_outbox ON proposal (outbox_id);
    CREATE TABLE rollout (
        id INTEGER NOT NULL PRIMARY KEY,
        skill VARCHAR NOT NULL,
        kind VARCHAR NOT NULL,
        from_level VARCHAR NOT NULL,
        to_level VARCHAR NOT NULL,
        reason VARCHAR NOT NULL,
        status VARCHAR NOT NULL,
        judged INTEGER NOT NULL,
        agreed INTEGER NOT NULL,
        lower_bound FLOAT NOT NULL,
        created_at DATETIME NOT NULL,
        decided_by INTEGER,
        decided_at DATETIME
    );
    CREATE INDEX ix_rollout_skill ON rollout (skill, id)
    """)


def m014_intake(conn: Connection) -> None:
    """Spend rows can name the recorded message they were made for (a voice note's transcription, before any run),
    so the run that answers it adopts them. The partial index keeps that look-up, made as every run opens, tiny."""
    _run(conn, """
    ALTER TABLE spend ADD COLUMN event_id INTEGER;
    CREATE INDEX ix_spend_event ON spend (event_id) WHERE event_id IS NOT NULL
    """)


def m015_note_vectors(conn: Connection) -> None:
    """Notes' vectors from the sentence encoder, kept so a note is embedded once (about 11 ms a passage), not by
    every process that searches: keyed by note, named by model, with a digest of the text they were made from. A
    deleted note's vector goes with it."""
    for statement in (
        """CREATE TABLE note_vector (
            note_id INTEGER NOT NULL PRIMARY KEY,
            model VARCHAR NOT NULL,
            digest VARCHAR NOT NULL,
            vector BLOB NOT NULL
        )""",
        """CREATE TRIGGER note_vector_gone AFTER DELETE ON note BEGIN
            DELETE FROM note_vector WHERE note_id = old.id;
        END""",
    ):
        conn.exec_driver_sql(statement)


MIGRATIONS: list[Migration] = [m001_initial, m002_breakers_and_flags, m003_reminders, m004_delivery_and_events,
                               m005_hot_path_indexes, m006_durable_runs, m007_event_replay_key, m008_run_answer,
                               m009_owner_control, m010_mcp, m011_knowledge, m012_evals, m013_shadow_rollout,
                               m014_intake, m015_note_vectors]


def applied(conn: Connection) -> set[str]:
    """Names of migrations already recorded in this database."""
    conn.execute(text("CREATE TABLE IF NOT EXISTS migration (name VARCHAR PRIMARY KEY, applied_at DATETIME)"))
    return {row[0] for row in conn.execute(text("SELECT name FROM migration"))}


def migrate(conn: Connection, upto: str | None = None) -> list[str]:
    """Apply pending migrations in order (optionally stopping after `upto`); return the names applied."""
    done = applied(conn)
    ran: list[str] = []
    for migration in MIGRATIONS:
        name = migration.__name__
        if name not in done:
            migration(conn)
            conn.execute(
                text("INSERT INTO migration (name, applied_at) VALUES (:n, :t)"),
                {"n": name, "t": dt.datetime.now(dt.UTC).replace(tzinfo=None)},
            )
            ran.append(name)
        if name == upto:
            break
    return ran
