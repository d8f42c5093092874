-- DELETE /v1/notifications/{id} cancels the channels still held (deferred,
-- digested and not yet sent): their tracking rows end 'cancelled' (reason
-- 'cancelled'). The CHECK from 007_tracking_status is replaced with it added.
-- NOT VALID: adding the CHECK does not scan delivery_tracking, so the ACCESS
-- EXCLUSIVE lock this transaction holds is brief; 027_cancelled_validate scans
-- it in a transaction of its own (each file is one), under VALIDATE's SHARE
-- UPDATE EXCLUSIVE lock, which blocks neither reads nor writes. Until then the
-- CHECK holds for every row written.
ALTER TABLE delivery_tracking DROP CONSTRAINT delivery_tracking_status_check;
ALTER TABLE delivery_tracking ADD CONSTRAINT delivery_tracking_status_check CHECK (status IN (
    'pending', 'processing', 'sent', 'delivered', 'failed', 'bounced', 'complained',
    'rejected', 'expired', 'suppressed', 'deferred', 'digested', 'cancelled')) NOT VALID;

-- A held row's claims, so a cancel can tell whether a release may be sending
-- it (stores/schedules.py): ``claims`` counts the Scheduler's claims,
-- ``settled`` the releases that held it again (a retry, a later window), at most
-- ``claims``. claims > settled: a claim is unsettled (say its lease ran out while
-- it was still sending and a later claim re-held the row, clearing
-- claimed_until), and the row is left to it. ``cancelled_at``: a row a cancel
-- marked done (a fallback check has no tracking row to say so). Constant
-- defaults: no table rewrite.
ALTER TABLE scheduled_notifications ADD COLUMN claims integer NOT NULL DEFAULT 0,
    ADD COLUMN settled integer NOT NULL DEFAULT 0, ADD COLUMN cancelled_at timestamptz;
