-- The daily spend of one tenant on one UTC day: money spent by part, and money held by
-- reservations for call-outs in flight, checked against a cap in one atomic step.
-- KEYS[1]: sy:{tenant}:$:<day>   HASH part -> µ$ spent
-- KEYS[2]: sy:{tenant}:$r:<day>  ZSET '<id>:<amount>' -> expiry; the amount rides in the member
--          so that a charge sums the live holds from this one key
-- KEYS[3]: sy:{tenant}:$once:<id> (op once only): the idempotency id of an add, while remembered
-- ARGV: now ('' = Redis TIME), op, expire_at (Unix s: RETENTION_DAYS after the day ends), then
--   charge   cap ('' = none), part, µ$, part, µ$ ...  -> 1 admitted and added | 0 refused
--   reserve  cap ('' = none), member, µ$, ttl (s), id ('' = new)
--                                                      -> µ$ held (a live hold of that id: its
--                                                         own, untouched) | -1 refused
--   extend   member, ttl (s)                           -> 1 (a live hold kept ttl from now) | 0
--   commit   member, part, µ$ ...                      -> 1 (the hold dropped, the cost added)
--   release  member                                    -> 1 | 0 (not held: released or expired)
--   spend                                              -> {{part, µ$, ...}, µ$ held}
--   once     ttl (s), part, µ$, part, µ$ ...           -> 1 added | 0 (the id was booked already)
-- Admitted iff cap is none or spent + held + the amount <= cap. Sums are Lua doubles: exact
-- to 2^53 µ$ (9e9 dollars a day).
local now = read_now(ARGV[1])
local op = ARGV[2]
local spent_key = KEYS[1]
local held_key = KEYS[2]
local expire_at = ARGV[3]

local function prune()
  -- A hold lives while its expiry is after now: one whose instance died stops counting.
  redis.call('ZREMRANGEBYSCORE', held_key, '-inf', fmt(now))
end

local function held()
  prune()
  local total = 0
  for _, member in ipairs(redis.call('ZRANGE', held_key, 0, -1)) do
    total = total + tonumber(string.match(member, ':(%-?%d+)$'))
  end
  return total
end

local function fits(cap, amount)
  if cap == '' then
    return true
  end
  local spent = 0
  for _, value in ipairs(redis.call('HVALS', spent_key)) do
    spent = spent + tonumber(value)
  end
  return spent + held() + amount <= tonumber(cap)
end

local function add(first)
  if first > #ARGV then
    return
  end
  for i = first, #ARGV, 2 do
    redis.call('HINCRBY', spent_key, ARGV[i], ARGV[i + 1])
  end
  redis.call('EXPIREAT', spent_key, expire_at)
end

if op == 'charge' then
  local amount = 0
  for i = 5, #ARGV, 2 do
    amount = amount + tonumber(ARGV[i + 1])
  end
  if not fits(ARGV[4], amount) then
    return 0
  end
  add(5)
  return 1
elseif op == 'reserve' then
  local id = ARGV[8]
  if id ~= '' then
    -- A retried request names its hold: answer with the live one rather than hold twice.
    -- Pruned first, so an expired hold's id may be held anew.
    prune()
    for _, member in ipairs(redis.call('ZRANGE', held_key, 0, -1)) do
      local held_id, amount = string.match(member, '^(.*):(%-?%d+)$')
      if held_id == id then
        return tonumber(amount)
      end
    end
  end
  local amount = tonumber(ARGV[6])
  if not fits(ARGV[4], amount) then
    return -1
  end
  -- Without a cap fits() read nothing; the dead holds still go before a new one joins them.
  prune()
  redis.call('ZADD', held_key, fmt(now + tonumber(ARGV[7])), ARGV[5])
  redis.call('EXPIREAT', held_key, expire_at)
  return amount
elseif op == 'extend' then
  prune()
  if not redis.call('ZSCORE', held_key, ARGV[4]) then
    return 0
  end
  redis.call('ZADD', held_key, fmt(now + tonumber(ARGV[5])), ARGV[4])
  return 1
elseif op == 'commit' then
  -- The real cost is added whether or not the hold expired meanwhile: the money was spent.
  redis.call('ZREM', held_key, ARGV[4])
  add(5)
  return 1
elseif op == 'release' then
  return redis.call('ZREM', held_key, ARGV[4])
elseif op == 'once' then
  -- The id and the add in one step: two replays racing on two instances book once.
  if not redis.call('SET', KEYS[3], '1', 'NX', 'EX', ARGV[4]) then
    return 0
  end
  add(5)
  return 1
elseif op == 'spend' then
  local reserved = held()
  return {redis.call('HGETALL', spent_key), reserved}
end
return redis.error_reply('redis_budget.lua: unknown op ' .. tostring(op))
