-- Migration 3: the owner is the only authority (SPEC C1, W1) and attention modes (A1–A5).

-- Quarantine: who may get an agent. A new chat starts pending until the owner's handle, the
-- owner's presence in the group, or the owner's word allows it. Chats from before this migration
-- are pending too: at start picortexd allows those of the owner and asks about the rest.
ALTER TABLE chats ADD COLUMN access TEXT NOT NULL DEFAULT 'pending' CHECK (access IN ('allowed', 'pending', 'blocked'));
ALTER TABLE chats ADD COLUMN access_reason TEXT;       -- why: owner's handle, owner in the group, the owner's word
ALTER TABLE chats ADD COLUMN pending_no INTEGER;       -- the short number the owner answers with, while pending
ALTER TABLE chats ADD COLUMN notified_at INTEGER;      -- when the owner was told about this pending chat
CREATE UNIQUE INDEX chats_pending_no ON chats(pending_no) WHERE pending_no IS NOT NULL;

-- Turns: 'held' waits for the owner's allow; kind 'discriminate' asks the small model whether
-- to answer at all (attention discriminate / discriminate-quiet).
CREATE TABLE turns_new (
    id             TEXT PRIMARY KEY,
    chat_id        TEXT NOT NULL REFERENCES chats(id),
    message_id     INTEGER NOT NULL REFERENCES messages(id),
    kind           TEXT NOT NULL DEFAULT 'answer' CHECK (kind IN ('answer', 'discriminate')),
    status         TEXT NOT NULL CHECK (status IN ('held', 'queued', 'starting', 'running', 'done')),
    unit           TEXT,
    outcome        TEXT,
    unit_result    TEXT,
    error          TEXT,
    session_id     TEXT,
    new_session    INTEGER NOT NULL DEFAULT 0,
    cost_usd       REAL,
    input_tokens   INTEGER,
    output_tokens  INTEGER,
    duration_ms    INTEGER,
    created_at     INTEGER NOT NULL,
    started_at     INTEGER,
    finished_at    INTEGER,
    cache_read_tokens      INTEGER,
    cache_creation_tokens  INTEGER
);
INSERT INTO turns_new (id, chat_id, message_id, status, unit, outcome, unit_result, error, session_id,
    new_session, cost_usd, input_tokens, output_tokens, duration_ms, created_at, started_at, finished_at,
    cache_read_tokens, cache_creation_tokens)
  SELECT id, chat_id, message_id, status, unit, outcome, unit_result, error, session_id,
    new_session, cost_usd, input_tokens, output_tokens, duration_ms, created_at, started_at, finished_at,
    cache_read_tokens, cache_creation_tokens FROM turns;
DROP TABLE turns;
ALTER TABLE turns_new RENAME TO turns;
CREATE INDEX turns_status ON turns(status, chat_id, created_at);
CREATE INDEX turns_chat_finished ON turns(chat_id, finished_at);

-- The outbox can also write to a handle whose chat with the bot does not exist yet (the owner's
-- DM, for notices): the outbox opens it with POST /v3/chats and fills in chat_id.
CREATE TABLE outbox_new (
    id               INTEGER PRIMARY KEY,
    chat_id          TEXT REFERENCES chats(id),
    to_handle        TEXT,
    from_handle      TEXT,
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
    sent_at          INTEGER,
    CHECK (chat_id IS NOT NULL OR (to_handle IS NOT NULL AND from_handle IS NOT NULL))
);
INSERT INTO outbox_new (id, chat_id, turn_id, part, text, reply_to, idempotency_key, status, attempts,
    next_attempt_at, linq_message_id, last_error, created_at, sent_at)
  SELECT id, chat_id, turn_id, part, text, reply_to, idempotency_key, status, attempts,
    next_attempt_at, linq_message_id, last_error, created_at, sent_at FROM outbox;
DROP TABLE outbox;
ALTER TABLE outbox_new RENAME TO outbox;
CREATE INDEX outbox_pending ON outbox(status, next_attempt_at);

-- Webhooks that were being processed when the gateway died, and how often (see poison.rs).
CREATE TABLE poison (
    event_id  TEXT PRIMARY KEY,
    strikes   INTEGER NOT NULL,
    last_at   INTEGER NOT NULL
);

-- Every attention decision, with its reason (SPEC A4). A message may have two: the gate's, and
-- the discriminator's verdict that followed it.
CREATE TABLE gate_decisions (
    id          INTEGER PRIMARY KEY,
    message_id  INTEGER NOT NULL REFERENCES messages(id),
    chat_id     TEXT NOT NULL REFERENCES chats(id),
    mode        TEXT NOT NULL,          -- the chat's attention mode at the time
    verdict     TEXT NOT NULL CHECK (verdict IN ('answer', 'discriminate', 'skip', 'held', 'command')),
    rule        TEXT NOT NULL,          -- which rule decided (mention, name, reply_to_bot, score, …)
    score       REAL,                   -- the discriminator's score, when it decided
    reason      TEXT NOT NULL,
    created_at  INTEGER NOT NULL
);
CREATE INDEX gate_decisions_chat ON gate_decisions(chat_id, id);
-- The decisions' reasons lived in messages.gate; they are gate_decisions rows now.
INSERT INTO gate_decisions (message_id, chat_id, mode, verdict, rule, reason, created_at)
  SELECT id, chat_id, 'unknown', 'skip', 'before_migration_3', gate, created_at FROM messages
  WHERE direction = 'inbound' AND gate IS NOT NULL;
ALTER TABLE messages DROP COLUMN gate;
