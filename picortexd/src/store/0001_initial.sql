-- picortex canonical log (SPEC D1), migration 1: the initial schema. The current schema as a
-- whole is described in store/SCHEMA.md; store/mod.rs applies migrations in order.
-- Times are unix milliseconds. Linq ids are kept verbatim.

-- Every webhook we accepted, verbatim, keyed by Linq's event id: the replay guard and the record.
CREATE TABLE events (
    event_id     TEXT PRIMARY KEY,
    event_type   TEXT NOT NULL,
    received_at  INTEGER NOT NULL,
    request_id   TEXT NOT NULL,
    body         TEXT NOT NULL
);

-- One row per Linq chat. unix_user/uid/home are filled once the helper has provisioned it.
CREATE TABLE chats (
    id               TEXT PRIMARY KEY,
    kind             TEXT NOT NULL CHECK (kind IN ('direct', 'group')),
    display_name     TEXT,
    bot_handle       TEXT,
    unix_user        TEXT,
    uid              INTEGER,
    home             TEXT,
    session_id       TEXT NOT NULL,      -- the agent session (UUID) of this chat
    session_started  INTEGER NOT NULL DEFAULT 0,  -- 1 once a turn created the session
    attention        TEXT,               -- NULL = the default for its kind
    memory_max       INTEGER,            -- per-chat override of turns.memory_max, bytes
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL
);

CREATE TABLE participants (
    chat_id    TEXT NOT NULL REFERENCES chats(id),
    handle     TEXT NOT NULL,
    is_me      INTEGER NOT NULL DEFAULT 0,
    joined_at  INTEGER,
    left_at    INTEGER,
    PRIMARY KEY (chat_id, handle)
);

-- Messages in both directions. Outbound rows are written when Linq accepted them.
CREATE TABLE messages (
    id             INTEGER PRIMARY KEY,
    linq_id        TEXT UNIQUE,
    chat_id        TEXT NOT NULL REFERENCES chats(id),
    direction      TEXT NOT NULL CHECK (direction IN ('inbound', 'outbound')),
    sender         TEXT,
    text           TEXT NOT NULL,
    reply_to       TEXT,                 -- Linq id of the message this one replies to
    event_id       TEXT,
    gate           TEXT,                 -- why the bot did or did not answer (inbound)
    status         TEXT,                 -- delivery status (outbound)
    sent_at        INTEGER,
    created_at     INTEGER NOT NULL
);
CREATE INDEX messages_chat ON messages(chat_id, id);

-- One row per agent turn; the durable per-chat queue (status 'queued' until it starts).
CREATE TABLE turns (
    id             TEXT PRIMARY KEY,     -- 32 hex; the unit is picortex-turn-<id>.service
    chat_id        TEXT NOT NULL REFERENCES chats(id),
    message_id     INTEGER NOT NULL REFERENCES messages(id),
    status         TEXT NOT NULL CHECK (status IN ('queued', 'starting', 'running', 'done')),
    unit           TEXT,
    outcome        TEXT,                 -- ok, agent_error, timeout, out_of_memory, ...
    unit_result    TEXT,                 -- systemd's Result= of the unit
    error          TEXT,
    session_id     TEXT,
    new_session    INTEGER NOT NULL DEFAULT 0,
    cost_usd       REAL,
    input_tokens   INTEGER,
    output_tokens  INTEGER,
    duration_ms    INTEGER,
    created_at     INTEGER NOT NULL,
    started_at     INTEGER,
    finished_at    INTEGER
);
CREATE INDEX turns_status ON turns(status, chat_id, created_at);

-- Replies waiting to be sent, and their fate. Written in the same transaction that records the
-- turn's result, so a reply is never lost and, thanks to idempotency_key, never sent twice.
CREATE TABLE outbox (
    id               INTEGER PRIMARY KEY,
    chat_id          TEXT NOT NULL REFERENCES chats(id),
    turn_id          TEXT REFERENCES turns(id),
    part             INTEGER NOT NULL DEFAULT 0,
    text             TEXT NOT NULL,
    reply_to         TEXT,
    idempotency_key  TEXT NOT NULL UNIQUE,
    status           TEXT NOT NULL CHECK (status IN ('pending', 'sent', 'failed')),
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  INTEGER NOT NULL,
    linq_message_id  TEXT,
    last_error       TEXT,
    created_at       INTEGER NOT NULL,
    sent_at          INTEGER
);
CREATE INDEX outbox_pending ON outbox(status, next_attempt_at);
