-- Migration 5: the consent loop and the sharing bridge (SPEC C2, C3).

-- What an agent asked the owner for. `number` is the short number the owner answers with
-- (`yes 4`); unique among pending disclosures, kept afterwards so a late answer finds its row.
CREATE TABLE disclosures (
    id               INTEGER PRIMARY KEY,
    number           INTEGER NOT NULL,
    chat_id          TEXT NOT NULL REFERENCES chats(id),     -- the asking chat
    turn_id          TEXT NOT NULL REFERENCES turns(id),     -- the turn whose agent asked
    message_id       INTEGER NOT NULL REFERENCES messages(id), -- the question being answered
    sender           TEXT NOT NULL,                          -- who asked it
    kind             TEXT NOT NULL CHECK (kind IN ('read', 'import')),
    source_chat      TEXT REFERENCES chats(id),              -- whose workspace (the owner's DM for reads)
    path             TEXT NOT NULL,                          -- relative to the source chat's home
    why              TEXT NOT NULL,
    status           TEXT NOT NULL CHECK (status IN ('pending', 'approved', 'denied', 'expired', 'consumed', 'copied', 'failed')),
    standing         INTEGER NOT NULL DEFAULT 0,             -- the owner answered `always`
    created_at       INTEGER NOT NULL,
    expires_at       INTEGER NOT NULL,
    decided_at       INTEGER,
    approver         TEXT,                                   -- the owner's handle that answered
    approval_message TEXT,                                   -- Linq id of the owner's answer
    challenge_key    TEXT NOT NULL,                          -- outbox idempotency key of the owner's challenge
    grant_turn_id    TEXT REFERENCES turns(id),              -- the one turn that used a read grant
    imported_path    TEXT,                                   -- where an import landed (dest home relative)
    reason           TEXT                                    -- why it failed, or what the owner said
);
CREATE UNIQUE INDEX disclosures_pending_number ON disclosures(number) WHERE status = 'pending';
CREATE INDEX disclosures_status ON disclosures(status, expires_at);

-- A re-run of the asking message, carrying its disclosure's grant (or the import's note).
ALTER TABLE turns ADD COLUMN disclosure_id INTEGER REFERENCES disclosures(id);
CREATE UNIQUE INDEX turns_disclosure ON turns(disclosure_id) WHERE disclosure_id IS NOT NULL;

-- Every step of every disclosure (SPEC C2 audit).
CREATE TABLE consent_events (
    id             INTEGER PRIMARY KEY,
    disclosure_id  INTEGER NOT NULL REFERENCES disclosures(id),
    step           TEXT NOT NULL CHECK (step IN ('requested', 'acknowledged', 'asked', 'approved', 'denied', 'expired', 'consumed', 'copied', 'failed', 'ignored', 'revoked')),
    turn_id        TEXT,
    detail         TEXT NOT NULL DEFAULT '',
    created_at     INTEGER NOT NULL
);
CREATE INDEX consent_events_disclosure ON consent_events(disclosure_id, id);

-- Each chat's manifest: standing read grants (`always`), applied to every turn of the chat
-- until the owner revokes them (`/picortex revoke <id>`).
CREATE TABLE standing_grants (
    id             INTEGER PRIMARY KEY,
    chat_id        TEXT NOT NULL REFERENCES chats(id),
    source_chat    TEXT NOT NULL REFERENCES chats(id),
    path           TEXT NOT NULL,
    disclosure_id  INTEGER NOT NULL REFERENCES disclosures(id),
    created_at     INTEGER NOT NULL,
    revoked_at     INTEGER
);
CREATE INDEX standing_grants_chat ON standing_grants(chat_id) WHERE revoked_at IS NULL;

-- Every file the helper copied between chats (SPEC C3).
CREATE TABLE bridge_events (
    id                INTEGER PRIMARY KEY,
    disclosure_id     INTEGER NOT NULL REFERENCES disclosures(id),
    source_chat       TEXT NOT NULL,
    dest_chat         TEXT NOT NULL,
    path              TEXT NOT NULL,          -- relative to the source home
    dest_path         TEXT NOT NULL,          -- relative to the destination home
    sha256            TEXT NOT NULL,
    size              INTEGER NOT NULL,
    approver          TEXT NOT NULL,
    challenge_message TEXT,                   -- Linq id of the owner's challenge, once sent
    approval_message  TEXT NOT NULL,          -- Linq id of the owner's answer
    created_at        INTEGER NOT NULL
);
