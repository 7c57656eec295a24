-- Count a finished item once and free its slot.
-- KEYS: run hash, counted set, done set, failures list.
-- ARGV: item id, outcome, seconds, target done or '', failure JSON or ''.
if redis.call('SADD', KEYS[2], ARGV[1]) == 0 then return 0 end
redis.call('HINCRBY', KEYS[1], ARGV[2], 1)
redis.call('HINCRBY', KEYS[1], 'items', 1)
redis.call('HINCRBYFLOAT', KEYS[1], 'item_seconds', ARGV[3])
local old = tonumber(redis.call('HGET', KEYS[1], 'item_seconds_max') or '0')
if tonumber(ARGV[3]) > old then redis.call('HSET', KEYS[1], 'item_seconds_max', ARGV[3]) end
if ARGV[4] ~= '' then redis.call('SADD', KEYS[3], ARGV[4]) end
if ARGV[5] ~= '' then redis.call('RPUSH', KEYS[4], ARGV[5]) end
redis.call('HINCRBY', KEYS[1], 'in_flight', -1)
return 1
