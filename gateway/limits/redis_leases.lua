-- Concurrency leases of one tenant and kind: a ZSET of lease id -> expiry, so the lease of a
-- holder that died stops counting at its expiry, with nobody left to release it.
-- KEYS[1]: sy:{tenant}:l:<kind>     ZSET lease id -> expiry
-- KEYS[2]: sy:{tenant}:l:<kind>:c   ZSET claimed id -> until when it is remembered
-- ARGV: now ('' = Redis TIME), op, lease id, then
--   hold     limit, ttl (s)                        -> 2 taken | 1 a live lease extended | 0 full
--   claim    limit, ttl (s), pending id, window (s) -> 1 | 0 (claimed within window, or full)
--   release                                         -> 1 | 0
--   count                                           -> how many leases are live
-- 'hold' takes or extends the lease: a lease already held is extended; one not held (new, or
-- expired, or lost with a restarted server) is added only while fewer than `limit` are live.
-- 'claim' moves the slot of the pending lease to the lease id (a slot of its own if the pending
-- one lapsed and one is free), once per id within the window.
local now = read_now(ARGV[1])
local op = ARGV[2]
local key = KEYS[1]
local id = ARGV[3]

if op == 'release' then
  return redis.call('ZREM', key, id)
end
-- A lease lives while its expiry is after now.
redis.call('ZREMRANGEBYSCORE', key, '-inf', fmt(now))
if op == 'count' then
  return redis.call('ZCARD', key)
end

local limit = tonumber(ARGV[4])
local ttl = tonumber(ARGV[5])
local taken = 2
if op == 'claim' then
  local claimed = KEYS[2]
  local window = tonumber(ARGV[7])
  redis.call('ZREMRANGEBYSCORE', claimed, '-inf', fmt(now))
  if redis.call('ZSCORE', claimed, id) then
    return 0
  end
  redis.call('ZADD', claimed, fmt(now + window), id)
  local last = redis.call('ZRANGE', claimed, -1, -1, 'WITHSCORES')
  redis.call('PEXPIRE', claimed, math.ceil((tonumber(last[2]) - now) * 1000))
  if redis.call('ZREM', key, ARGV[6]) == 0 and redis.call('ZCARD', key) >= limit then
    return 0
  end
elseif redis.call('ZSCORE', key, id) then
  taken = 1
elseif redis.call('ZCARD', key) >= limit then
  return 0
end
redis.call('ZADD', key, fmt(now + ttl), id)
-- The key goes when its last lease expires.
local last = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
redis.call('PEXPIRE', key, math.ceil((tonumber(last[2]) - now) * 1000))
if op == 'claim' then
  return 1
end
return taken
