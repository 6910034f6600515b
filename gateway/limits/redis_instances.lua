-- The registry of live gateway instances: a ZSET of instance id -> expiry. Each instance
-- heartbeats its own member; one that stops beating drops out at its expiry.
-- KEYS[1]: sy:instances
-- ARGV: now ('' = Redis TIME), instance id, ttl (s); ttl 0 means leave.
-- Returns how many instances are live.
local now = read_now(ARGV[1])
local key = KEYS[1]
local ttl = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', key, '-inf', fmt(now))
if ttl > 0 then
  redis.call('ZADD', key, fmt(now + ttl), ARGV[2])
  redis.call('PEXPIRE', key, math.ceil(ttl * 1000))
else
  redis.call('ZREM', key, ARGV[2])
end
return redis.call('ZCARD', key)
