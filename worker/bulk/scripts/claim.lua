-- Claim the next item if the window has room.
-- KEYS: to-do list, run hash.  ARGV: window.
if tonumber(redis.call('HGET', KEYS[2], 'in_flight') or '0') >= tonumber(ARGV[1]) then return false end
local item = redis.call('LPOP', KEYS[1])
if item then redis.call('HINCRBY', KEYS[2], 'in_flight', 1) end
return item
