-- One GCRA charge over several buckets of one tenant, all or nothing: bucket.take(), operation
-- for operation, so that Redis and the memory store admit exactly the same requests.
-- KEYS: the buckets (sy:{tenant}:b:<rule>), then the retry token's key (sy:{tenant}:d:<token>)
--       when ARGV[3] > 0; its value is the binding of the request first admitted with it.
-- ARGV: now ('' = Redis TIME), cost, dedup TTL in ms (0 = no token), the request's binding
--       ('' without a token), then per bucket: interval (seconds per token), burst.
-- Returns {allowed 0|1, 1-based index of the rule the decision speaks for, remaining,
--          retry_after, reset, retry}; retry_after and reset as strings, since Redis truncates
--          Lua numbers; retry: 0 new (or no token), 1 replay (same token and binding admitted
--          before: not charged), 2 mismatch (token admitted with another binding: charged, and
--          the key keeps the first binding).
local EPSILON = 1e-6  -- bucket.EPSILON
local now = read_now(ARGV[1])
local cost = tonumber(ARGV[2])
local dedup_ms = tonumber(ARGV[3])
local binding = ARGV[4]
local n = #KEYS
local dedup_key = nil
local retry = 0
if dedup_ms > 0 then
  n = n - 1
  dedup_key = KEYS[n + 1]
  local first = redis.call('GET', dedup_key)
  if first == binding then
    -- A retry of a request already admitted: report the buckets, charge nothing.
    cost = 0
    dedup_key = nil
    retry = 1
  elseif first then
    -- Another request under an admitted token: charged, and the token stays the first's.
    dedup_key = nil
    retry = 2
  end
end

local refused, refused_retry, refused_reset
local tightest, tightest_remaining, tightest_reset
local new_tats = {}
for i = 1, n do
  local interval = tonumber(ARGV[3 + 2 * i])
  local burst = tonumber(ARGV[4 + 2 * i])
  local tat = now
  local stored = redis.call('GET', KEYS[i])
  if stored then
    stored = tonumber(stored)
    if stored >= now then
      tat = stored
    end
  end
  local new_tat = tat + cost * interval
  local allow_at = new_tat - burst * interval
  local free = (now - allow_at) / interval
  if free < -EPSILON then
    local retry_after = allow_at - now
    if refused == nil or retry_after > refused_retry then
      refused, refused_retry, refused_reset = i, retry_after, tat - now
    end
  else
    local remaining = math.floor(free + EPSILON)
    if tightest == nil or remaining < tightest_remaining then
      tightest, tightest_remaining, tightest_reset = i, remaining, new_tat - now
    end
  end
  new_tats[i] = new_tat
end

if refused then
  return {0, refused, 0, fmt(refused_retry), fmt(refused_reset), retry}
end
if cost > 0 then
  for i = 1, n do
    -- The key vanishes when the bucket is full again: a missing bucket is a full one.
    local ttl_ms = math.ceil((new_tats[i] - now) * 1000)
    redis.call('SET', KEYS[i], fmt(new_tats[i]), 'PX', ttl_ms)
  end
  if dedup_key then
    redis.call('SET', dedup_key, binding, 'PX', dedup_ms)
  end
end
return {1, tightest, tightest_remaining, '0', fmt(tightest_reset), retry}
