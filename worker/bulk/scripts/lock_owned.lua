-- Release or renew a lock only if it is still ours.
-- KEYS: lock.  ARGV: owner, ttl in seconds (0 to release).
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if tonumber(ARGV[2]) > 0 then return redis.call('EXPIRE', KEYS[1], ARGV[2]) end
return redis.call('DEL', KEYS[1])
