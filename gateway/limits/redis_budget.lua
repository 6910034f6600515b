-- The daily spend of one tenant on one UTC day: money spent by part, and money held by
-- reservations for call-outs in flight, checked against a cap in one atomic step (the keys and
-- the steps: redis_ledger.lua).
-- KEYS: spent, holds, amounts (redis_ledger.lua); KEYS[4]: sy:{tenant}:$once:<id> (op once only)
-- ARGV: now ('' = Redis TIME), op, expire_at (Unix s: RETENTION_DAYS after the day ends), then
--   charge   cap ('' = none), hold id ('' = none), hold µ$, hold ttl (s), part, µ$, part, µ$ ...
--                                                      -> {1 admitted, added and held | 0, total}
--            (no second hold when a live hold of that id is there: a retried webhook)
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
-- Admitted iff cap is none or spent + held + the amount <= cap.
local now = read_now(ARGV[1])
local op = ARGV[2]
local spent, holds, amounts = KEYS[1], KEYS[2], KEYS[3]
local expire_at = ARGV[3]

local function total()
  return ledger_spent(spent) + ledger_held(holds, amounts, now)
end

if op == 'charge' then
  local amount = ledger_sum(8)
  local hold = 0
  if ARGV[5] ~= '' and not ledger_live(holds, amounts, ARGV[5], now) then
    hold = tonumber(ARGV[6])
  end
  local before = total()
  if ARGV[4] ~= '' and before + hold + amount > tonumber(ARGV[4]) then
    return {0, before}
  end
  if hold > 0 then
    ledger_hold(holds, amounts, expire_at, ARGV[5], hold, now + tonumber(ARGV[7]))
  end
  ledger_add(spent, expire_at, 8)
  return {1, before + hold + amount}
elseif op == 'reserve' then
  local id = ARGV[5]
  if ARGV[8] ~= '' then
    -- A retried request names its hold: answer with the live one rather than hold twice.
    local live = ledger_live(holds, amounts, id, now)
    if live then
      return {live, total()}
    end
  end
  local before = total()
  local amount = tonumber(ARGV[6])
  if ARGV[4] ~= '' and before + amount > tonumber(ARGV[4]) then
    return {-1, before}
  end
  ledger_hold(holds, amounts, expire_at, id, amount, now + tonumber(ARGV[7]))
  return {amount, before + amount}
elseif op == 'extend' then
  ledger_prune(holds, amounts, now)
  if not ledger_live(holds, amounts, ARGV[4], now) then
    return 0  -- settled, or lapsed (pruned or not): it stays so
  end
  redis.call('ZADD', holds, 'XX', fmt(now + tonumber(ARGV[5])), ARGV[4])
  return 1
elseif op == 'commit' then
  -- The real cost is added whether or not the hold expired meanwhile: the money was spent.
  ledger_drop(holds, amounts, ARGV[4])
  ledger_add(spent, expire_at, 5)
  return {1, total()}
elseif op == 'release' then
  local dropped = ledger_drop(holds, amounts, ARGV[4])
  return {dropped, total()}
elseif op == 'once' then
  -- The id and the add in one step: two replays racing on two instances book once.
  if not redis.call('SET', KEYS[4], '1', 'NX', 'EX', ARGV[4]) then
    return 0
  end
  ledger_add(spent, expire_at, 5)
  return 1
elseif op == 'spend' then
  local reserved = ledger_held(holds, amounts, now)
  return {redis.call('HGETALL', spent), reserved}
end
return redis.error_reply('redis_budget.lua: unknown op ' .. tostring(op))
