-- Nothing to undo: a validated CHECK is reversed with 026_cancelled's down.
SELECT 1;
