-- A replay is claimed (committed) before the payload is republished and marked
-- published after, so the audit record cannot be lost to a failure in between; a
-- claim left unpublished is published by the next replay. A letter is named by its
-- stream, sequence and the time it was dead-lettered: a dead-letter stream deleted
-- and made again reuses sequences.
ALTER TABLE dead_letter_replays
    ADD COLUMN dead_lettered_at timestamptz,
    ADD COLUMN status text NOT NULL DEFAULT 'claimed' CHECK (status IN ('claimed', 'published')),
    ADD COLUMN published_seq bigint;
-- rows from before were written in the transaction that republished: published; the
-- letter's time was not kept ('epoch'), so such a letter replayed again is replayed
-- a second time, which sends nothing twice (the notification keeps its id)
UPDATE dead_letter_replays SET status = 'published', dead_lettered_at = 'epoch';
ALTER TABLE dead_letter_replays
    ALTER COLUMN dead_lettered_at SET NOT NULL,
    DROP CONSTRAINT dead_letter_replays_pkey,
    ADD PRIMARY KEY (stream, seq, dead_lettered_at);
