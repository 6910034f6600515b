-- Concurrency leases of one tenant and kind: a ZSET of lease id -> expiry, so the lease of a
-- holder that died stops counting at its expiry, with nobody left to release it.
-- KEYS[1]: sy:{tenant}:l:<kind>
-- ARGV: now ('' = Redis TIME), op ('hold' | 'release' | 'count'), lease id, limit, ttl (s)
-- 'hold' takes or extends the lease: a lease already held is extended; one not held (new, or
-- expired, or lost with a restarted server) is added only while fewer than `limit` are live.
-- Returns 1 | 0 (hold, release), or how many leases are live (count).
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
if not redis.call('ZSCORE', key, id) and redis.call('ZCARD', key) >= limit then
  return 0
end
redis.call('ZADD', key, fmt(now + ttl), id)
-- The key goes when its last lease expires.
local last = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
redis.call('PEXPIRE', key, math.ceil((tonumber(last[2]) - now) * 1000))
return 1
