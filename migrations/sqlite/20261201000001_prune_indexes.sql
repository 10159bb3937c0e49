-- Pruning (`authd prune` and the server's pruning task) deletes by these columns.
CREATE INDEX throttles_updated_at ON throttles (updated_at);
CREATE INDEX otp_challenges_expires_at ON otp_challenges (expires_at);
