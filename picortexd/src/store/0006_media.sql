-- Media parts of inbound messages (picortexd/src/media): recorded at ingest, fetched into the
-- chat's inbox/ through the helper when the message's turn starts.
CREATE TABLE media (
    id             INTEGER PRIMARY KEY,
    message_id     INTEGER NOT NULL REFERENCES messages(id),
    part_index     INTEGER NOT NULL,
    linq_id        TEXT,                 -- the part's id at Linq
    url            TEXT,
    filename       TEXT,
    mime_type      TEXT,
    size_bytes     INTEGER,              -- as Linq announced it
    status         TEXT NOT NULL DEFAULT 'pending'
                   CHECK (status IN ('pending', 'stored', 'refused', 'failed')),
    rel_path       TEXT,                 -- inbox/<date>-<name>, relative to the chat's home
    stored_size    INTEGER,
    sha256         TEXT,
    error          TEXT,                 -- why it was refused or failed
    created_at     INTEGER NOT NULL,
    UNIQUE (message_id, part_index)
);

-- Media out: an outbox row may carry a file the agent left in outbox/ (picortexd/src/media/out.rs),
-- spooled in the gateway's state directory; sent through Linq's attachment flow as a media part.
ALTER TABLE outbox ADD COLUMN file_path TEXT;      -- the spooled copy
ALTER TABLE outbox ADD COLUMN file_name TEXT;
ALTER TABLE outbox ADD COLUMN file_mime TEXT;
ALTER TABLE outbox ADD COLUMN file_sha256 TEXT;
ALTER TABLE outbox ADD COLUMN file_cleared INTEGER NOT NULL DEFAULT 1;  -- 0 until removed from outbox/
