-- One GCRA charge over several buckets of one tenant, all or nothing: bucket.take(), operation
-- for operation, so that Redis and the memory store admit exactly the same requests; and, for a
-- budgeted webhook, its cost (and a call's hold) on the day's budget in the same step: refused
-- by either, charged by neither (one round trip per webhook, coalesced with the others).
-- KEYS: the buckets (sy:{tenant}:b:<rule>), then the retry token's key (sy:{tenant}:d:<token>)
--       when ARGV[3] > 0 (its value is the binding of the request first admitted with it), then
--       with a budget the ledger's spent, holds and amounts keys (redis_ledger.lua).
-- ARGV: now ('' = Redis TIME), cost, dedup TTL in ms (0 = no token), the request's binding
--       ('' without a token), n (buckets), then per bucket: interval (seconds per token),
--       burst; then, with a budget: cap, expire_at, hold id ('' = no hold), hold µ$, hold ttl
--       (s), r (pairs to replay), then r pairs part, µ$ (what this instance booked for the
--       tenant-day while Redis failed: added first, whatever is decided), then part, µ$, part,
--       µ$ ... (the webhook's cost).
-- Returns {allowed 0|1, 1-based index of the rule the decision speaks for, remaining,
--          retry_after, reset, retry, budget, total}; retry_after and reset as strings, since
--          Redis truncates Lua numbers; retry: 0 new (or no token), 1 replay (same token and
--          binding admitted before: not charged), 2 mismatch (token admitted with another
--          binding: charged, and the key keeps the first binding); budget: 0 not asked (none,
--          a replay, or the buckets refused), 1 charged, 2 over the cap (the buckets not charged
--          either); total: the day's µ$ spent + held after the step (with a budget, always).
local EPSILON = 1e-6  -- bucket.EPSILON
local now = read_now(ARGV[1])
local cost = tonumber(ARGV[2])
local dedup_ms = tonumber(ARGV[3])
local binding = ARGV[4]
local n = tonumber(ARGV[5])
local budget_at = 6 + 2 * n  -- the budget's first ARGV, when there is one
local budgeted = #ARGV >= budget_at
local ledger_at = n + ((tonumber(ARGV[3]) > 0) and 1 or 0)  -- the ledger's keys follow the token's
local spent, holds, amounts = KEYS[ledger_at + 1], KEYS[ledger_at + 2], KEYS[ledger_at + 3]
local cost_at = budget_at + 6
if budgeted then
  local replays = tonumber(ARGV[budget_at + 5])
  cost_at = budget_at + 6 + 2 * replays
  if replays > 0 then
    -- Spend this instance booked for the tenant-day while Redis failed: on the books before
    -- anything is decided (the buckets may refuse), so this charge sees the day whole.
    for i = budget_at + 6, cost_at - 1, 2 do
      redis.call('HINCRBY', spent, ARGV[i], ARGV[i + 1])
    end
    redis.call('EXPIREAT', spent, ARGV[budget_at + 1])
  end
end
local dedup_key = nil
local retry = 0
if dedup_ms > 0 then
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
  local interval = tonumber(ARGV[4 + 2 * i])
  local burst = tonumber(ARGV[5 + 2 * i])
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

local function day_total()
  return ledger_spent(spent) + ledger_held(holds, amounts, now)
end

if refused then
  return {0, refused, 0, fmt(refused_retry), fmt(refused_reset), retry, 0, budgeted and day_total() or 0}
end

local budget, total = 0, 0
if budgeted and retry == 1 then
  total = day_total()
elseif budgeted then
  local cap = ARGV[budget_at]
  local expire_at = ARGV[budget_at + 1]
  local hold_id = ARGV[budget_at + 2]
  local hold = 0
  if hold_id ~= '' and not ledger_live(holds, amounts, hold_id, now) then
    hold = tonumber(ARGV[budget_at + 3])  -- a live hold of this call (a retry): not held twice
  end
  total = day_total()
  local amount = ledger_sum(cost_at)
  if cap ~= '' and total + hold + amount > tonumber(cap) then
    return {1, tightest, tightest_remaining, '0', fmt(tightest_reset), retry, 2, total}
  end
  if hold > 0 then
    ledger_hold(holds, amounts, expire_at, hold_id, hold, now + tonumber(ARGV[budget_at + 4]))
  end
  ledger_add(spent, expire_at, cost_at)
  budget, total = 1, total + hold + amount
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
return {1, tightest, tightest_remaining, '0', fmt(tightest_reset), retry, budget, total}
