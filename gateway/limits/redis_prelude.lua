-- Prepended to every script of gateway.limits by redis_client.lua().
-- ARGV[1] is `now`: a number when the caller injects a clock (tests), else '' and the script
-- reads Redis TIME, so every gateway instance charges against one clock.

-- Scripts count seconds from 2024-01-01, not 1970: near 1.7e9 a double resolves only 2.4e-7 s,
-- coarse beside bucket.EPSILON; near 1e8 (for years yet) it is 16 times finer.
-- Changing this shifts every stored tat and lease expiry.
local TIME_BASE = 1704067200

local function read_now(arg)
  if arg ~= '' then
    return tonumber(arg)
  end
  -- Redis 6.2 may replicate a script verbatim, and a script that read TIME may then not write;
  -- replicating its effects instead lifts that rule (Redis 7 always does).
  if redis.replicate_commands then
    redis.replicate_commands()
  end
  local t = redis.call('TIME')
  return (tonumber(t[1]) - TIME_BASE) + tonumber(t[2]) / 1000000
end

local function fmt(x)
  -- tostring() keeps 14 digits; 17 round-trip a double exactly.
  return string.format('%.17g', x)
end
