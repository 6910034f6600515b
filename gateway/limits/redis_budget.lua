-- The daily spend of one tenant on one UTC day: money spent by part, and money held by
-- reservations for call-outs in flight, checked against a cap in one atomic step.
-- KEYS[1]: sy:{tenant}:$:<day>   HASH part -> µ$ spent
-- KEYS[2]: sy:{tenant}:$h:<day>  ZSET hold id -> expiry
-- KEYS[3]: sy:{tenant}:$ha:<day> HASH hold id -> µ$, and '' -> µ$ held by all live holds: the
--          total is kept as holds come and go, so no step reads every hold (a busy tenant can
--          hold hundreds of thousands of calls; Redis runs one script at a time for everyone)
-- KEYS[4]: sy:{tenant}:$once:<id> (op once only): the idempotency id of an add, while remembered
-- ARGV: now ('' = Redis TIME), op, expire_at (Unix s: RETENTION_DAYS after the day ends), then
--   charge   cap ('' = none), part, µ$, part, µ$ ...  -> {1 admitted and added | 0 refused, total}
--   reserve  cap ('' = none), id, µ$, ttl (s), named ('1': a live hold of this id answers)
--                                                      -> {µ$ held (a live hold of that id: its
--                                                         own, untouched) | -1 refused, total}
--   extend   id, ttl (s)                               -> 1 (a live hold kept ttl from now) | 0
--   commit   id, part, µ$ ...                          -> {1, total} (the hold dropped, cost added)
--   release  id                                        -> {1 | 0 (not held), total}
--   spend                                              -> {{part, µ$, ...}, µ$ held}
--   once     ttl (s), part, µ$, part, µ$ ...           -> 1 added | 0 (the id was booked already)
-- total: µ$ spent plus held after the step, which the caller keeps as the last figure it saw
-- (a local ledger starts from it if Redis fails: budget_failover.py).
-- Admitted iff cap is none or spent + held + the amount <= cap. Sums are Lua doubles: exact
-- to 2^53 µ$ (9e9 dollars a day).
local now = read_now(ARGV[1])
local op = ARGV[2]
local spent_key = KEYS[1]
local held_key = KEYS[2]
local amounts_key = KEYS[3]
local expire_at = ARGV[3]
-- Expired holds dropped per step at most: the work of one step stays bounded when a crowd of
-- holds lapses at once (the rest go in the next steps; until then they count, erring safe).
local PRUNE_MAX = 256

local function prune()
  -- A hold lives while its expiry is after now: one whose instance died stops counting. Only
  -- the expired ones are read, by score.
  local dead = redis.call('ZRANGEBYSCORE', held_key, '-inf', fmt(now), 'LIMIT', 0, PRUNE_MAX)
  if #dead == 0 then
    return
  end
  local freed = 0
  for _, id in ipairs(dead) do
    freed = freed + (tonumber(redis.call('HGET', amounts_key, id)) or 0)
  end
  redis.call('ZREM', held_key, unpack(dead))
  redis.call('HDEL', amounts_key, unpack(dead))
  redis.call('HINCRBY', amounts_key, '', -freed)
end

local function held()
  prune()
  return tonumber(redis.call('HGET', amounts_key, '')) or 0
end

local function spent()
  local total = 0
  for _, value in ipairs(redis.call('HVALS', spent_key)) do
    total = total + tonumber(value)
  end
  return total
end

local function add(first)
  if first > #ARGV then
    return 0
  end
  local total = 0
  for i = first, #ARGV, 2 do
    redis.call('HINCRBY', spent_key, ARGV[i], ARGV[i + 1])
    total = total + tonumber(ARGV[i + 1])
  end
  redis.call('EXPIREAT', spent_key, expire_at)
  return total
end

local function drop(id)
  -- 1 when the hold was live (or expired and not yet pruned): its amount leaves the total.
  if redis.call('ZREM', held_key, id) == 0 then
    return 0
  end
  local amount = tonumber(redis.call('HGET', amounts_key, id)) or 0
  redis.call('HDEL', amounts_key, id)
  redis.call('HINCRBY', amounts_key, '', -amount)
  return 1
end

if op == 'charge' then
  local amount = 0
  for i = 5, #ARGV, 2 do
    amount = amount + tonumber(ARGV[i + 1])
  end
  local total = spent() + held()
  if ARGV[4] ~= '' and total + amount > tonumber(ARGV[4]) then
    return {0, total}
  end
  add(5)
  return {1, total + amount}
elseif op == 'reserve' then
  local id = ARGV[5]
  local total = spent() + held()
  if ARGV[8] ~= '' then
    -- A retried request names its hold: answer with the live one rather than hold twice.
    -- Pruned first (held() above), so an expired hold's id may be held anew.
    if redis.call('ZSCORE', held_key, id) then
      return {tonumber(redis.call('HGET', amounts_key, id)), total}
    end
  end
  local amount = tonumber(ARGV[6])
  if ARGV[4] ~= '' and total + amount > tonumber(ARGV[4]) then
    return {-1, total}
  end
  redis.call('ZADD', held_key, fmt(now + tonumber(ARGV[7])), id)
  redis.call('HSET', amounts_key, id, amount)
  redis.call('HINCRBY', amounts_key, '', amount)
  redis.call('EXPIREAT', held_key, expire_at)
  redis.call('EXPIREAT', amounts_key, expire_at)
  return {amount, total + amount}
elseif op == 'extend' then
  prune()
  if not redis.call('ZSCORE', held_key, ARGV[4]) then
    return 0
  end
  redis.call('ZADD', held_key, 'XX', fmt(now + tonumber(ARGV[5])), ARGV[4])
  return 1
elseif op == 'commit' then
  -- The real cost is added whether or not the hold expired meanwhile: the money was spent.
  drop(ARGV[4])
  add(5)
  return {1, spent() + held()}
elseif op == 'release' then
  local dropped = drop(ARGV[4])
  return {dropped, spent() + held()}
elseif op == 'once' then
  -- The id and the add in one step: two replays racing on two instances book once.
  if not redis.call('SET', KEYS[4], '1', 'NX', 'EX', ARGV[4]) then
    return 0
  end
  add(5)
  return 1
elseif op == 'spend' then
  local reserved = held()
  return {redis.call('HGETALL', spent_key), reserved}
end
return redis.error_reply('redis_budget.lua: unknown op ' .. tostring(op))
