-- The spend ledger's steps over one tenant-day's keys, shared by redis_budget.lua (the ledger's
-- own operations) and redis_bucket.lua (a webhook's buckets and budget in one step). Prepended
-- after the prelude by redis_client.lua().
-- spent:   sy:{tenant}:$:<day>   HASH part -> µ$ spent
-- holds:   sy:{tenant}:$h:<day>  ZSET hold id -> expiry
-- amounts: sy:{tenant}:$ha:<day> HASH hold id -> µ$, and '' -> µ$ held by all live holds: the
--          total is kept as holds come and go, so no step reads every hold (a busy tenant can
--          hold hundreds of thousands of calls; Redis runs one script at a time for everyone)
-- Sums are Lua doubles: exact to 2^53 µ$ (9e9 dollars a day).

-- Expired holds dropped per step at most: the work of one step stays bounded when a crowd of
-- holds lapses at once (the rest go in the next steps; until then they count, erring safe).
local PRUNE_MAX = 256

local function ledger_prune(holds, amounts, now)
  -- A hold lives while its expiry is after now: one whose instance died stops counting. Only
  -- the expired ones are read, by score.
  local dead = redis.call('ZRANGEBYSCORE', holds, '-inf', fmt(now), 'LIMIT', 0, PRUNE_MAX)
  if #dead == 0 then
    return
  end
  local freed = 0
  for _, id in ipairs(dead) do
    freed = freed + (tonumber(redis.call('HGET', amounts, id)) or 0)
  end
  redis.call('ZREM', holds, unpack(dead))
  redis.call('HDEL', amounts, unpack(dead))
  redis.call('HINCRBY', amounts, '', -freed)
end

local function ledger_held(holds, amounts, now)
  ledger_prune(holds, amounts, now)
  return tonumber(redis.call('HGET', amounts, '')) or 0
end

local function ledger_spent(spent)
  local total = 0
  for _, value in ipairs(redis.call('HVALS', spent)) do
    total = total + tonumber(value)
  end
  return total
end

-- Adds ARGV[first], ARGV[first + 1] ... (part, µ$ pairs, to the end of ARGV) to the day.
local function ledger_add(spent, expire_at, first)
  if first > #ARGV then
    return 0
  end
  local total = 0
  for i = first, #ARGV, 2 do
    redis.call('HINCRBY', spent, ARGV[i], ARGV[i + 1])
    total = total + tonumber(ARGV[i + 1])
  end
  redis.call('EXPIREAT', spent, expire_at)
  return total
end

local function ledger_sum(first)
  local total = 0
  for i = first, #ARGV, 2 do
    total = total + tonumber(ARGV[i + 1])
  end
  return total
end

local function ledger_hold(holds, amounts, expire_at, id, amount, expiry)
  redis.call('ZADD', holds, fmt(expiry), id)
  redis.call('HSET', amounts, id, amount)
  redis.call('HINCRBY', amounts, '', amount)
  redis.call('EXPIREAT', holds, expire_at)
  redis.call('EXPIREAT', amounts, expire_at)
end

local function ledger_drop(holds, amounts, id)
  -- 1 when the hold was live (or expired and not yet pruned): its amount leaves the total.
  if redis.call('ZREM', holds, id) == 0 then
    return 0
  end
  local amount = tonumber(redis.call('HGET', amounts, id)) or 0
  redis.call('HDEL', amounts, id)
  redis.call('HINCRBY', amounts, '', -amount)
  return 1
end

-- The µ$ a live hold of this id holds, or nil. Live means its expiry is after now, as in the
-- in-process ledger: one that lapsed but is not pruned yet (more than PRUNE_MAX lapsed at once)
-- is dropped here, so a caller that holds the id anew counts it once. Call before reading the
-- day's total, which then no longer counts the dropped one.
local function ledger_live(holds, amounts, id, now)
  local expiry = redis.call('ZSCORE', holds, id)
  if not expiry then
    return nil
  end
  if tonumber(expiry) <= now then
    ledger_drop(holds, amounts, id)
    return nil
  end
  return tonumber(redis.call('HGET', amounts, id))
end
