-- Finalize at most once, when planning is done and nothing is left.
-- KEYS: run hash, to-do list.
if redis.call('HGET', KEYS[1], 'planned') ~= '1' then return 0 end
if tonumber(redis.call('HGET', KEYS[1], 'in_flight') or '0') > 0 then return 0 end
if redis.call('LLEN', KEYS[2]) > 0 then return 0 end
return redis.call('HSETNX', KEYS[1], 'finalizing', '1')
