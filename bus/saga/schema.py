"""The saga engine's tables, `sagas` and `saga_steps`, and their migrations (owner `saga`).

A migration is never changed once released: a change is a new one, appended. Files from before the
owners' own version rows numbered these among the order service's (`bus.migrations`): the first was
position 2, the three upgrades positions 4 to 6 (`NUMBERED`).
"""

from __future__ import annotations

from bus.migrations import Migrations

# The columns of a step record in `saga_steps`, as both of its tables below were made.
_STEP_COLUMNS = """
        saga_id TEXT NOT NULL,
        step TEXT NOT NULL,
        action TEXT NOT NULL,
        status TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        uncertain INTEGER NOT NULL DEFAULT 0,
        started_at REAL,
        finished_at REAL,
        duration_ms REAL,
        last_error TEXT,
        PRIMARY KEY (saga_id, step, action)
"""

# Step records in `saga_steps` moved into their saga's row, and the table emptied (the third upgrade, and
# the end of a rebuild by replay). SQLite writes a time in JSON to 15 digits (10 us): a rebuild's times
# come from events, in milliseconds, and lose nothing.
FOLD_STEPS = """
    UPDATE sagas SET steps = (
        SELECT json_group_array(json_object(
            'step', step, 'action', action, 'status', status, 'attempts', attempts,
            'uncertain', json(CASE WHEN uncertain THEN 'true' ELSE 'false' END),
            'started_at', started_at, 'finished_at', finished_at, 'duration_ms', duration_ms,
            'last_error', last_error))
        FROM saga_steps WHERE saga_steps.saga_id = sagas.saga_id)
    WHERE saga_id IN (SELECT saga_id FROM saga_steps);
    DELETE FROM saga_steps;
"""

MIGRATIONS = Migrations(
    "saga",
    (
        """
    CREATE TABLE sagas (
        saga_id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        ref TEXT NOT NULL,
        status TEXT NOT NULL,
        step_index INTEGER NOT NULL DEFAULT 0,
        data TEXT NOT NULL,
        deadline_at REAL NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        comp_failures INTEGER NOT NULL DEFAULT 0,
        next_retry_at REAL,
        last_error TEXT,
        failure_reason TEXT,
        stop_reason TEXT,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        finished_at REAL
    );
    CREATE INDEX sagas_status ON sagas (status);
    CREATE INDEX sagas_ref ON sagas (ref);
    CREATE TABLE saga_steps ("""
        + _STEP_COLUMNS
        + """    );
    """,
        # Step records keyed and stored by (saga_id, step, action) alone: one B-tree per write instead of two.
        # sagas_ref indexed a column no query looks up.
        """
    CREATE TABLE saga_steps_keyed ("""
        + _STEP_COLUMNS
        + """    ) WITHOUT ROWID;
    INSERT INTO saga_steps_keyed SELECT saga_id, step, action, status, attempts, uncertain, started_at,
        finished_at, duration_ms, last_error FROM saga_steps;
    DROP TABLE saga_steps;
    ALTER TABLE saga_steps_keyed RENAME TO saga_steps;
    DROP INDEX sagas_ref;
    """,
        # Listings, newest first, walk an index instead of sorting every saga ever run: saga ids begin with
        # their creation time (like order ids), and the status index carries them.
        """
    DROP INDEX sagas_status;
    CREATE INDEX sagas_status ON sagas (status, saga_id);
    """,
        # A saga's step records live in its own row (a JSON list, `steps`): each transition is one UPDATE of
        # that row instead of one more statement per record. `saga_steps` stays, empty: a rebuild by replay
        # assembles records there and folds them in at its end (FOLD_STEPS).
        """
    ALTER TABLE sagas ADD COLUMN steps TEXT NOT NULL DEFAULT '[]';
    """
        + FOLD_STEPS,
    ),
)
