-- Migration 2: the rest of the Linq channel (SPEC L2, L3, T6) and per-chat configuration.

-- Per-chat state and configuration.
ALTER TABLE chats ADD COLUMN opted_out INTEGER NOT NULL DEFAULT 0;     -- the handle sent STOP (1:1)
ALTER TABLE chats ADD COLUMN permission_mode TEXT;                    -- NULL = turns.permission_mode
ALTER TABLE chats ADD COLUMN daily_budget_usd REAL;                   -- NULL = turns.daily_budget_usd
ALTER TABLE chats ADD COLUMN archived_at INTEGER;                     -- set while the chat is archived
ALTER TABLE chats ADD COLUMN details_fetched INTEGER NOT NULL DEFAULT 0;  -- display name and participants read from Linq

-- What Linq tells us about messages after they were sent or received.
ALTER TABLE messages ADD COLUMN delivered_at INTEGER;
ALTER TABLE messages ADD COLUMN read_at INTEGER;
ALTER TABLE messages ADD COLUMN failed_code INTEGER;
ALTER TABLE messages ADD COLUMN edited_at INTEGER;
ALTER TABLE messages ADD COLUMN original_text TEXT;                   -- the text before the first edit

-- Tapbacks on messages, as they come and go.
CREATE TABLE reactions (
    message_linq_id  TEXT NOT NULL,
    chat_id          TEXT,
    handle           TEXT NOT NULL,
    kind             TEXT NOT NULL,       -- love, like, …, custom
    custom_emoji     TEXT,
    part_index       INTEGER NOT NULL DEFAULT 0,
    is_from_bot      INTEGER NOT NULL DEFAULT 0,
    added_at         INTEGER NOT NULL,
    removed_at       INTEGER,
    PRIMARY KEY (message_linq_id, handle, kind, part_index)
);

-- Usage the agent reports (T6), beyond what migration 1 recorded.
ALTER TABLE turns ADD COLUMN cache_read_tokens INTEGER;
ALTER TABLE turns ADD COLUMN cache_creation_tokens INTEGER;

CREATE INDEX turns_chat_finished ON turns(chat_id, finished_at);
