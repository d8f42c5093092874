-- Dead letters replayed (`tidings dlq replay`): one row per dead letter, written
-- in the transaction that republishes it, so a dead letter is replayed once and
-- who replayed it, when, is kept.
CREATE TABLE dead_letter_replays (
    stream       text NOT NULL,                  -- the dead-letter stream
    seq          bigint NOT NULL,                -- the dead letter's sequence in it
    reason       text NOT NULL,                  -- why it was dead-lettered
    subject      text NOT NULL,                  -- where it was republished
    origin_seq   bigint NOT NULL,                -- its sequence in the work stream (its derived id)
    replayed_by  text NOT NULL,
    replayed_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (stream, seq)
);
