-- Concurrency leases of one tenant and kind: a ZSET of lease id -> expiry, so the lease of a
-- holder that died stops counting at its expiry, with nobody left to release it.
-- KEYS[1]: sy:{tenant}:l:<kind>     ZSET lease id -> expiry
-- KEYS[2]: sy:{tenant}:l:<kind>:c   SET of the live leases that were claimed
-- ARGV: now ('' = Redis TIME), op ('hold' | 'claim' | 'release' | 'count'), lease id, limit, ttl (s)
-- 'hold' takes or extends the lease: a lease already held is extended; one not held (new, or
-- expired, or lost with a restarted server) is added only while fewer than `limit` are live.
-- 'claim' extends a live lease not claimed before and marks it claimed: a lease is claimed once.
-- Returns 1 | 0 (hold, claim, release), or how many leases are live (count).
local now = read_now(ARGV[1])
local op = ARGV[2]
local key = KEYS[1]
local claimed = KEYS[2]
local id = ARGV[3]

if op == 'release' then
  redis.call('SREM', claimed, id)
  return redis.call('ZREM', key, id)
end
-- A lease lives while its expiry is after now; a dead one's claim goes with it.
local dead = redis.call('ZRANGEBYSCORE', key, '-inf', fmt(now))
if #dead > 0 then
  redis.call('ZREMRANGEBYSCORE', key, '-inf', fmt(now))
  redis.call('SREM', claimed, unpack(dead))
end
if op == 'count' then
  return redis.call('ZCARD', key)
end

local limit = tonumber(ARGV[4])
local ttl = tonumber(ARGV[5])
if op == 'claim' then
  if not redis.call('ZSCORE', key, id) or redis.call('SADD', claimed, id) == 0 then
    return 0
  end
elseif not redis.call('ZSCORE', key, id) and redis.call('ZCARD', key) >= limit then
  return 0
end
redis.call('ZADD', key, fmt(now + ttl), id)
-- The keys go when the last lease expires.
local last = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
local ms = math.ceil((tonumber(last[2]) - now) * 1000)
redis.call('PEXPIRE', key, ms)
if redis.call('EXISTS', claimed) == 1 then
  redis.call('PEXPIRE', claimed, ms)
end
return 1
