DELETE FROM dead_letter_replays WHERE status <> 'published';
ALTER TABLE dead_letter_replays
    DROP CONSTRAINT dead_letter_replays_pkey,
    DROP COLUMN published_seq,
    DROP COLUMN status,
    DROP COLUMN dead_lettered_at;
DELETE FROM dead_letter_replays a USING dead_letter_replays b
    WHERE a.stream = b.stream AND a.seq = b.seq AND a.replayed_at > b.replayed_at;
ALTER TABLE dead_letter_replays ADD PRIMARY KEY (stream, seq);
